//! The HTTP edge under hostile clients: subscription sockets (message size, the
//! `connection_init` deadline, caps on open sockets), bodies of millions of tiny records,
//! Segment requests without a write key, callers that stop sending half-way, and the warning
//! about privacy keys kept in the store.

use std::io::{Read, Write};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use patron::ingest::Ingestor;
use patron::server::{ServerOptions, SocketLimits, MAX_RECORDS, MAX_SOCKET_MESSAGE_BYTES};
use patron_domain::identity::IdentityRules;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::TestStore;
use crate::http::{api_key, spawn_app, spawn_app_with, test_ingestor, TestApp};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A graphql-transport-ws upgrade request for `/graphql/ws`.
fn upgrade_request(app: &TestApp) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = app.address.replace("http://", "ws://") + "/graphql/ws";
    let mut request = url.into_client_request().expect("a websocket request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    request
}

/// Opens a graphql-transport-ws socket on `/graphql/ws`.
async fn connect(app: &TestApp) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    tokio_tungstenite::connect_async(upgrade_request(app))
        .await
        .map(|(socket, _)| socket)
}

/// Sends `connection_init` with `secret`.
async fn init(socket: &mut Socket, secret: &str) {
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {secret}")}});
    socket
        .send(Message::Text(init.to_string().into()))
        .await
        .expect("send connection_init");
}

/// The next message that is not a ping or a pong, within `within`; `None` when the socket
/// ends without one.
async fn next(socket: &mut Socket, within: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("an answer in time");
        match message {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

/// Opens a socket with `secret` and asserts it is acknowledged.
async fn acknowledged(app: &TestApp, secret: &str) -> Socket {
    let mut socket = connect(app).await.expect("websocket connects");
    init(&mut socket, secret).await;
    let ack = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert!(ack.to_string().contains("connection_ack"), "{ack}");
    socket
}

/// A server with `limits` on its sockets.
async fn app_with_sockets(t: &TestStore, limits: SocketLimits) -> TestApp {
    let options = ServerOptions {
        sockets: limits,
        ..ServerOptions::default()
    };
    spawn_app_with(t, test_ingestor(t), options).await
}

/// The status and body of an upgrade the server refused.
fn refused_upgrade<T>(upgrade: Result<T, tokio_tungstenite::tungstenite::Error>) -> (u16, String) {
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got a socket"),
    }
}

/// The close frame's code and reason.
fn closed(message: Option<Message>) -> (u16, String) {
    match message {
        Some(Message::Close(Some(frame))) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn a_message_over_the_limit_closes_the_socket_and_the_server_answers_on(t: &TestStore) {
    let app = spawn_app(t).await;
    let operator = api_key(t, "operator").await;

    // One frame over the limit.
    let mut socket = acknowledged(&app, &operator).await;
    let big = format!(
        "{{\"type\": \"ping\", \"payload\": \"{}\"}}",
        "x".repeat(MAX_SOCKET_MESSAGE_BYTES)
    );
    socket
        .send(Message::Text(big.into()))
        .await
        .expect("send a large frame");
    let (code, reason) = closed(next(&mut socket, Duration::from_secs(10)).await);
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("MESSAGE_TOO_LARGE"), "{reason}");

    // Small frames continuing one message past the limit, before connection_init.
    let mut socket = connect(&app).await.expect("websocket connects");
    let piece = vec![b' '; 4096];
    let frames = MAX_SOCKET_MESSAGE_BYTES / piece.len() + 2;
    for i in 0..frames {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        if socket
            .send(Message::Frame(Frame::message(piece.clone(), opcode, false)))
            .await
            .is_err()
        {
            // The server closed the socket; its close frame is still there to read.
            break;
        }
    }
    let (code, reason) = closed(next(&mut socket, Duration::from_secs(10)).await);
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("MESSAGE_TOO_LARGE"), "{reason}");

    // The server answers on, and takes new sockets.
    let r = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    acknowledged(&app, &operator).await;
}

async fn a_socket_without_connection_init_is_closed_after_the_deadline(t: &TestStore) {
    let app = app_with_sockets(
        t,
        SocketLimits {
            init_timeout: Duration::from_secs(1),
            ..SocketLimits::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let mut socket = connect(&app).await.expect("websocket connects");
    let (code, reason) = closed(next(&mut socket, Duration::from_secs(10)).await);
    assert_eq!(code, 4408, "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A socket that did send a valid connection_init in time stays open past the deadline.
    let operator = api_key(t, "operator").await;
    let mut socket = acknowledged(&app, &operator).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    socket
        .send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .expect("still open");
    let pong = next(&mut socket, Duration::from_secs(5))
        .await
        .expect("a pong");
    assert!(pong.to_string().contains("pong"), "{pong}");
}

async fn open_sockets_are_capped_per_key_and_before_authentication(t: &TestStore) {
    let app = app_with_sockets(
        t,
        SocketLimits {
            per_key: 2,
            unauthenticated: 2,
            ..SocketLimits::default()
        },
    )
    .await;
    let first = api_key(t, "operator").await;
    let second = api_key(t, "viewer").await;

    let mut one = acknowledged(&app, &first).await;
    let _two = acknowledged(&app, &first).await;
    let mut three = connect(&app).await.expect("websocket connects");
    init(&mut three, &first).await;
    let (code, reason) = closed(next(&mut three, Duration::from_secs(10)).await);
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("TOO_MANY_CONNECTIONS"), "{reason}");
    // The cap is per key.
    let _other = acknowledged(&app, &second).await;
    // A closed socket gives its place back.
    one.close(None).await.expect("close");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect(&app).await.expect("websocket connects");
        init(&mut again, &first).await;
        let answer = next(&mut again, Duration::from_secs(10)).await;
        if answer
            .as_ref()
            .is_some_and(|a| a.to_string().contains("connection_ack"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed socket's place came back: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sockets that have not said who they are: two wait, the third is refused before the
    // upgrade.
    let _waiting = [
        connect(&app).await.expect("connects"),
        connect(&app).await.expect("connects"),
    ];
    let (status, body) = refused_upgrade(connect(&app).await);
    assert_eq!(status, 429);
    assert!(body.contains("TOO_MANY_CONNECTIONS"), "{body}");
}

async fn a_body_of_more_records_than_the_limit_is_refused_naming_it(t: &TestStore) {
    let app = spawn_app(t).await;
    let lines = "0\n".repeat(MAX_RECORDS + 1);
    let r = app.post_events(lines, "application/x-ndjson").await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "TOO_MANY_RECORDS");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("at most {MAX_RECORDS}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("{} records", MAX_RECORDS + 1)),
        "{message}"
    );

    let mut array = vec!["0"; 5_000_000].join(",");
    array.insert(0, '[');
    array.push(']');
    let r = app.post_events(array, "application/json").await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "TOO_MANY_RECORDS");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("5000000 records"));
    assert_eq!(t.store.stats().await.expect("stats").events, 0);
}

/// 5.2 million NDJSON lines of `0` (10 MiB) against the real binary: the server's peak memory
/// grows by less than 100 MiB while it refuses them (it grew by 2.6 GB when each line was
/// copied before the count was checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_tiny_records_cost_the_server_little_memory() {
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_patron"));
    let case = patron::bench::measure_events(
        server,
        "ndjson zeros",
        "0\n".repeat(5_200_000),
        "application/x-ndjson",
        1,
    )
    .await
    .expect("measured");
    assert_eq!(case.statuses, vec![413]);
    assert!(
        case.peak_growth_mib < 100.0,
        "the server grew by {:.1} MiB",
        case.peak_growth_mib
    );
}

/// Sends a request head declaring a 10 MiB body and a little of it over a raw connection;
/// returns the status line answered within `within` (empty when none came).
async fn half_request(
    app: &TestApp,
    path: &str,
    authorization: Option<&str>,
    within: Duration,
) -> String {
    let address = app.address.trim_start_matches("http://").to_owned();
    let path = path.to_owned();
    let authorization = authorization.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream.set_read_timeout(Some(within)).expect("timeout");
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            patron::server::MAX_BODY_BYTES
        );
        if let Some(authorization) = authorization {
            head.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        head.push_str("\r\n{\"batch\": [");
        stream.write_all(head.as_bytes()).expect("send the head");
        let mut answer = [0u8; 12];
        match stream.read(&mut answer) {
            Ok(n) => String::from_utf8_lossy(&answer[..n]).into_owned(),
            Err(_) => String::new(),
        }
    })
    .await
    .expect("the client ran")
}

async fn segment_requests_without_a_valid_write_key_are_refused_before_their_body(t: &TestStore) {
    let options = ServerOptions {
        write_keys: vec!["wk_edge".into()],
        body_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let app = spawn_app_with(t, test_ingestor(t), options).await;
    let basic = |key: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
        )
    };
    let quick = Duration::from_secs(3);
    let answer = half_request(&app, "/v1/batch", None, quick).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    let answer = half_request(&app, "/v1/track", Some(&basic("wk_wrong")), quick).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    // A caller whose key is good but who stops sending half-way is answered 408 once the body
    // timeout has passed, and its buffer is let go.
    let answer = half_request(&app, "/v1/batch", Some(&basic("wk_edge")), quick).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let ingest = api_key(t, "ingest").await;
    let answer = half_request(&app, "/v1/events", Some(&format!("Bearer {ingest}")), quick).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(t.store.stats().await.expect("stats").events, 0);
}

async fn readiness_warns_when_the_privacy_keys_are_kept_in_the_store(t: &TestStore) {
    let kept = Ingestor::with_keys(t.store.clone(), IdentityRules::default(), None, None)
        .await
        .expect("keys kept in the store");
    let app = spawn_app_with(t, kept, ServerOptions::default()).await;
    let r = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["warnings"][0]["code"], "KEYS_KEPT_IN_STORE", "{body}");
    let message = body["warnings"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("secret store"), "{message}");
    assert!(message.contains("PATRON_MASTER_KEY"), "{message}");

    let configured = Ingestor::with_keys(
        t.store.clone(),
        IdentityRules::default(),
        Some(b"configured identity key".as_slice()),
        Some(crate::helpers::master_key()),
    )
    .await
    .expect("configured keys");
    let app = spawn_app_with(t, configured, ServerOptions::default()).await;
    let body: Value = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["warnings"], json!([]), "{body}");
}

/// Sends a graphql-transport-ws message.
async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .expect("send");
}

fn subscribe(id: &str) -> Value {
    json!({"id": id, "type": "subscribe",
           "payload": {"query": "subscription { customerUpdated { customer } }"}})
}

async fn operations_on_one_socket_are_capped(t: &TestStore) {
    let app = app_with_sockets(
        t,
        SocketLimits {
            subscriptions: 2,
            ..SocketLimits::default()
        },
    )
    .await;
    let viewer = api_key(t, "viewer").await;
    let mut socket = acknowledged(&app, &viewer).await;
    send(&mut socket, subscribe("1")).await;
    send(&mut socket, subscribe("2")).await;
    // The third is answered with an error for its id and not started.
    send(&mut socket, subscribe("3")).await;
    let answer = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("an answer");
    let answer: Value = serde_json::from_str(&answer.to_string()).expect("json");
    assert_eq!(
        (&answer["type"], &answer["id"]),
        (&json!("error"), &json!("3"))
    );
    assert_eq!(
        answer["payload"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{answer}"
    );
    // Once one is completed, another may start: both running ones hear of a new customer.
    send(&mut socket, json!({"id": "1", "type": "complete"})).await;
    send(&mut socket, subscribe("4")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .post_events(
            json!([{"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
                   "channel": "store", "source": "edge", "occurred_at": "2026-03-08T09:30:15+08:00",
                   "identifiers": {"phone": "13912340077"}, "store_id": "SH-1"}])
            .to_string(),
            "application/json",
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut heard = std::collections::BTreeSet::new();
    while heard.len() < 2 {
        let message = next(&mut socket, Duration::from_secs(10))
            .await
            .expect("a message");
        let message: Value = serde_json::from_str(&message.to_string()).expect("json");
        if message["type"] == "complete" && message["id"] == "1" {
            // The server's own end of the completed one.
            continue;
        }
        assert_eq!(message["type"], "next", "{message}");
        heard.insert(message["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(heard, ["2".to_owned(), "4".to_owned()].into());
    // A message as a JSON array (which the protocol would read too, uncounted) closes the
    // socket.
    let array =
        json!(["subscribe", "9", {"query": "subscription { customerUpdated { customer } }"}]);
    send(&mut socket, array).await;
    let (code, reason) = closed(next(&mut socket, Duration::from_secs(10)).await);
    assert_eq!(code, 4400, "{reason}");
    assert!(reason.contains("INVALID_MESSAGE"), "{reason}");
}

async fn a_key_in_the_header_does_not_wait_among_the_unauthenticated(t: &TestStore) {
    let app = app_with_sockets(
        t,
        SocketLimits {
            unauthenticated: 3,
            unauthenticated_per_address: 1,
            init_timeout: Duration::from_secs(2),
            ..SocketLimits::default()
        },
    )
    .await;
    let viewer = api_key(t, "viewer").await;
    // One keyless socket from this address waits; a second one is refused.
    let _waiting = connect(&app).await.expect("connects");
    let (status, body) = refused_upgrade(connect(&app).await);
    assert_eq!(status, 429);
    assert!(body.contains("from one address"), "{body}");
    // A socket with its key in the header is counted against the key and served.
    let mut request = upgrade_request(&app);
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {viewer}").parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request.clone())
        .await
        .expect("served with a key in the header");
    send(&mut socket, json!({"type": "connection_init"})).await;
    let ack = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert!(ack.to_string().contains("connection_ack"), "{ack}");
    // With its key in the header, a socket still owes a connection_init within the deadline.
    let (mut silent, _) = tokio_tungstenite::connect_async(request.clone())
        .await
        .expect("served with a key in the header");
    let (code, reason) = closed(next(&mut silent, Duration::from_secs(10)).await);
    assert_eq!(code, 4408, "{reason}");
    // A wrong key in the header is refused before the upgrade.
    request.headers_mut().insert(
        "Authorization",
        "Bearer patron_wrong".parse().expect("header"),
    );
    let (status, _) = refused_upgrade(tokio_tungstenite::connect_async(request).await);
    assert_eq!(status, 401);
}

/// `POST /v1/events` of an NDJSON `body` sent with `Content-Encoding: encoding`.
async fn encoded_events(
    app: &TestApp,
    encoding: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/events", app.address))
        .bearer_auth(&app.ingest_key)
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .expect("events")
}

/// `data` compressed with gzip.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("compress")
}

async fn compressed_bodies_are_read_and_bounded_once_decompressed(t: &TestStore) {
    let options = ServerOptions {
        write_keys: vec!["wk_gzip".into()],
        ..ServerOptions::default()
    };
    let app = spawn_app_with(t, test_ingestor(t), options).await;
    let message = json!({"batch": [{"type": "track", "messageId": "gz-1", "userId": "u-gz-1",
        "event": "Product Viewed", "timestamp": "2026-03-08T09:30:15+08:00"}]});
    let r = app
        .client
        .post(format!("{}/v1/batch", app.address))
        .basic_auth("wk_gzip", Some(""))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(message.to_string().as_bytes()))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["accepted"], 1, "{body}");
    let record = json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
        "channel": "store", "source": "edge", "occurred_at": "2026-03-08T09:30:15+08:00",
        "identifiers": {"phone": "13912340078"}, "store_id": "SH-1"});
    let r = encoded_events(&app, "gzip", gzip(format!("{record}\n").as_bytes())).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["accepted"], 1, "{body}");
    // 20 MiB of spaces compress to about 20 KiB: refused once 10 MiB are decompressed.
    let bomb = gzip(&vec![b' '; 20 * 1024 * 1024]);
    assert!(bomb.len() < 100_000);
    let r = encoded_events(&app, "gzip", bomb).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "BODY_TOO_LARGE");
    // An encoding the server does not read is refused, naming it.
    let r = encoded_events(&app, "br", "x").await;
    assert_eq!(r.status(), 415);
    // A single Segment message that is not JSON is refused whole, as before.
    let r = app
        .client
        .post(format!("{}/v1/track", app.address))
        .basic_auth("wk_gzip", Some(""))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .expect("track");
    assert_eq!(r.status(), 400);
}

async fn a_graphql_body_of_many_tiny_values_is_refused_before_it_is_parsed(t: &TestStore) {
    let app = spawn_app(t).await;
    let viewer = api_key(t, "viewer").await;
    let zeros = vec!["0"; 1_000_000].join(",");
    let body = format!(r#"{{"query": "{{ me {{ name }} }}", "variables": {{"x": [{zeros}]}}}}"#);
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&viewer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("graphql");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "TOO_MANY_VALUES");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&patron::server::MAX_REQUEST_VALUES.to_string()),
        "{message}"
    );
    // Millions of tokens in the document itself: refused before it is parsed.
    let fields = "a ".repeat(500_000);
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&viewer)
        .json(&json!({"query": format!("{{ me {{ name }} }} query q {{ {fields} }}")}))
        .send()
        .await
        .expect("graphql");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["extensions"]["code"], "QUERY_TOO_LARGE");
    // An argument only its field can read is the caller's error, not the server's.
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&viewer)
        .json(&json!({"query": format!(
            "{{ customerAsOf(id: \"{}\", at: \"yesterday\") {{ id }} }}",
            uuid::Uuid::new_v4()
        )}))
        .send()
        .await
        .expect("graphql");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INVALID_ARGUMENT",
        "{body}"
    );
}

async fn an_oversized_record_is_refused_alone_and_kept(t: &TestStore) {
    let app = spawn_app(t).await;
    let base = || {
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "store_visited",
            "channel": "store", "source": "edge", "occurred_at": "2026-03-08T09:30:15+08:00",
            "identifiers": {"phone": "13912340079"}, "store_id": "SH-1"})
    };
    let mut long = base();
    long["note"] = json!("n".repeat(patron::ingest::MAX_RECORD_BYTES));
    let mut many = base();
    many["numbers"] = json!(vec![0; patron::ingest::MAX_RECORD_VALUES]);
    let good = base();
    let body = format!("{long}\n{many}\n{good}\n");
    let r = app.post_events(body, "application/x-ndjson").await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(2))
    );
    let reason = |i: usize| {
        answer["records"][i]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(answer["records"][0]["field"], "record");
    assert!(reason(0).contains("at most 262144"), "{}", reason(0));
    assert!(
        reason(1).contains("more than 10000 JSON values"),
        "{}",
        reason(1)
    );
    // Both are kept in the quarantine as sent.
    let kept = t.store.quarantined(0, 10).await.expect("quarantine");
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].record, long.to_string());
}

crate::on_both_stores!(
    operations_on_one_socket_are_capped,
    a_key_in_the_header_does_not_wait_among_the_unauthenticated,
    compressed_bodies_are_read_and_bounded_once_decompressed,
    a_graphql_body_of_many_tiny_values_is_refused_before_it_is_parsed,
    an_oversized_record_is_refused_alone_and_kept,
    a_message_over_the_limit_closes_the_socket_and_the_server_answers_on,
    a_socket_without_connection_init_is_closed_after_the_deadline,
    open_sockets_are_capped_per_key_and_before_authentication,
    a_body_of_more_records_than_the_limit_is_refused_naming_it,
    segment_requests_without_a_valid_write_key_are_refused_before_their_body,
    readiness_warns_when_the_privacy_keys_are_kept_in_the_store,
);
