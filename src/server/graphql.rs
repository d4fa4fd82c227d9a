//! `/graphql`: the API (POST, with an API key), GraphiQL (GET) and subscriptions over
//! websockets (`/graphql/ws`, the key in the connection's `Authorization` header or in the
//! `connection_init` payload; see [`SocketLimits`] for what a socket may hold).

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::AUTHORIZATION;
use actix_web::http::StatusCode;
use actix_web::web::{Bytes, BytesMut, Data, Payload};
use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Item, Message, ProtocolError};
use async_graphql::http::{GraphiQLSource, WebSocketProtocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql_actix_web::GraphQLResponse;
use futures::future::BoxFuture;
use futures::StreamExt;
use patron_graphql::{codes, prepare, ApiKey, Backend, Loaders};
use serde_json::json;
use uuid::Uuid;

use super::edge::{authenticate, bearer, ApiError, Caller, Graphql};
use super::AppState;

/// The code of a request that is not a GraphQL document the schema can run (it does not
/// parse, or nests past the parser's recursion limit).
pub const INVALID_QUERY: &str = "INVALID_QUERY";

/// The longest a GraphQL request may run before it is answered with `TIMEOUT`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn spawn(future: BoxFuture<'static, ()>) {
    tokio::spawn(future);
}

/// The most JSON values a `POST /graphql` body may hold, variables included (5,000 records of
/// 40 values for the `ingest` mutation).
pub const MAX_REQUEST_VALUES: usize = 200_000;

/// The longest GraphQL document accepted, in bytes: parsing builds a node per token, so the
/// document is bounded before it is parsed (the same as a socket message).
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// `POST /graphql`: a JSON body of at most [`super::MAX_BODY_BYTES`] (413 beyond).
#[tracing::instrument(name = "http.graphql", skip_all, fields(key, operation, bytes))]
pub(crate) async fn post(
    Caller(key, _): Caller<Graphql>,
    state: Data<AppState>,
    http: HttpRequest,
    payload: Payload,
) -> HttpResponse {
    let span = tracing::Span::current();
    span.record("key", key.name.as_str());
    let body = match super::read_body(payload, &http, state.body_timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    span.record("bytes", body.len());
    // Variables become a tree of values; a body of many tiny ones is refused before that.
    if let Err(crate::json_bound::JsonBoundError::TooManyValues(max)) =
        crate::json_bound::count_json_values(&body, MAX_REQUEST_VALUES)
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_MANY_VALUES",
            format!("the request holds more than {max} JSON values"),
        )
        .graphql();
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_REQUEST",
                format!("the body is not a GraphQL request in JSON: {e}"),
            )
            .graphql()
        }
    };
    if request.query.len() > MAX_QUERY_BYTES {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "QUERY_TOO_LARGE",
            format!(
                "the query is {} bytes; a query may have at most {MAX_QUERY_BYTES}",
                request.query.len()
            ),
        )
        .graphql();
    }
    if let Some(operation) = &request.operation_name {
        span.record("operation", operation.as_str());
    }
    let request = prepare(request, state.backend.clone(), key, spawn);
    match tokio::time::timeout(REQUEST_TIMEOUT, state.schema.execute(request)).await {
        Ok(mut response) => {
            // Errors raised before any field runs (a query that does not parse, nests past the
            // parser's recursion limit, or whose variables do not fit) have no path and no code
            // of their own; a field's error without a code is the server's.
            for error in &mut response.errors {
                let before_any_field = error.path.is_empty();
                let extensions = error.extensions.get_or_insert_with(Default::default);
                if extensions.get("code").is_none() {
                    extensions.set(
                        "code",
                        if before_any_field {
                            INVALID_QUERY
                        } else if error.message.starts_with("Failed to parse") {
                            // An argument's value that only its resolver could check.
                            codes::INVALID_ARGUMENT
                        } else {
                            "INTERNAL"
                        },
                    );
                }
            }
            let response: GraphQLResponse = response.into();
            actix_web::Responder::respond_to(response, &http).map_into_boxed_body()
        }
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "TIMEOUT",
            format!(
                "the request ran longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .graphql(),
    }
}

/// `GET /graphql`: GraphiQL.
pub(crate) async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql/ws")
                .title("Patron GraphQL")
                .finish(),
        )
}

/// The largest message a client may send on `/graphql/ws`, in bytes, whether in one frame or
/// in continuation frames: a longer one closes the socket with code 1009.
pub const MAX_SOCKET_MESSAGE_BYTES: usize = 64 * 1024;
/// How often the server pings a socket.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A socket that sends nothing (not even a pong) for this long is closed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Close code: no `connection_init` with a valid key in time (graphql-transport-ws's own).
const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// Close code: a message that is not a JSON object (graphql-transport-ws's own).
const CLOSE_INVALID_MESSAGE: u16 = 4400;
/// Close code: the key has as many open sockets as it may.
const CLOSE_TOO_MANY: u16 = 4429;

/// Limits on the subscription sockets of `/graphql/ws`.
#[derive(Clone, Copy, Debug)]
pub struct SocketLimits {
    /// How long a socket may stay open before a `connection_init` names a valid key; it is
    /// closed with code 4408 after that.
    pub init_timeout: Duration,
    /// Open sockets per API key; one more is closed at its `connection_init` with code 4429
    /// and reason `TOO_MANY_CONNECTIONS`.
    pub per_key: usize,
    /// Open sockets whose key is not known yet, over all clients; one more is refused with
    /// HTTP 429 and code `TOO_MANY_CONNECTIONS` before the upgrade. A socket whose key comes
    /// in the `Authorization` header is counted against its key instead.
    pub unauthenticated: usize,
    /// Open sockets whose key is not known yet from one client address (refused the same way).
    pub unauthenticated_per_address: usize,
    /// Operations (subscriptions) running at once on one socket; one more is answered with an
    /// `error` message, code `TOO_MANY_SUBSCRIPTIONS`, and not started.
    pub subscriptions: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(10),
            per_key: 64,
            unauthenticated: 256,
            unauthenticated_per_address: 16,
            subscriptions: 32,
        }
    }
}

/// The open subscription sockets: those not authenticated yet, and those of each key.
pub(crate) struct Sockets {
    limits: SocketLimits,
    open: Mutex<OpenSockets>,
}

#[derive(Default)]
struct OpenSockets {
    unauthenticated: usize,
    by_address: HashMap<IpAddr, usize>,
    by_key: HashMap<Uuid, usize>,
}

/// Whose place a slot holds.
enum Holder {
    /// A socket from this address whose key is not known yet.
    Address(IpAddr),
    /// A socket of this key.
    Key(Uuid),
}

/// A place taken among the open sockets, given back when dropped.
pub(crate) struct SocketSlot {
    sockets: Arc<Sockets>,
    holder: Holder,
}

/// Takes one off `count` in `map`, removing the entry at zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl Sockets {
    pub(crate) fn new(limits: SocketLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenSockets> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a socket from `address` whose key is not known yet, unless all are taken,
    /// or all of that address's.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<SocketSlot> {
        let mut open = self.open();
        if open.unauthenticated >= self.limits.unauthenticated {
            return None;
        }
        let from_address = open.by_address.entry(address).or_default();
        if *from_address >= self.limits.unauthenticated_per_address {
            return None;
        }
        *from_address += 1;
        open.unauthenticated += 1;
        Some(SocketSlot {
            sockets: self.clone(),
            holder: Holder::Address(address),
        })
    }

    /// A place for a socket of `key`, unless the key has all its places taken.
    fn admit_key(self: &Arc<Self>, key: Uuid) -> Option<SocketSlot> {
        let mut open = self.open();
        let count = open.by_key.entry(key).or_default();
        (*count < self.limits.per_key).then(|| {
            *count += 1;
            SocketSlot {
                sockets: self.clone(),
                holder: Holder::Key(key),
            }
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = self.sockets.open();
        match &self.holder {
            Holder::Address(address) => {
                open.unauthenticated = open.unauthenticated.saturating_sub(1);
                release(&mut open.by_address, address);
            }
            Holder::Key(key) => release(&mut open.by_key, key),
        }
    }
}

/// What the `connection_init` handler tells the socket's loop.
#[derive(Default)]
struct Handshake {
    /// The key's place, once a `connection_init` named a valid key.
    slot: Option<SocketSlot>,
    /// Why the socket is closed, when the reason is this server's rather than the protocol's.
    refusal: Option<CloseReason>,
    /// Whether a `connection_init` was accepted.
    initialized: bool,
}

fn lock(handshake: &Mutex<Handshake>) -> std::sync::MutexGuard<'_, Handshake> {
    handshake.lock().unwrap_or_else(PoisonError::into_inner)
}

fn close_reason(code: u16, description: String) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: Some(description),
    }
}

/// `GET /graphql/ws`: subscriptions (graphql-ws and graphql-transport-ws protocols). The key
/// comes in the `Authorization` header or in the `connection_init` payload, within
/// [`SocketLimits::init_timeout`]; messages are at most [`MAX_SOCKET_MESSAGE_BYTES`].
pub(crate) async fn websocket(
    state: Data<AppState>,
    http: HttpRequest,
    payload: Payload,
) -> actix_web::Result<HttpResponse> {
    let protocol = http
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|value| value.to_str().ok())
        .and_then(|protocols| {
            protocols
                .split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        });
    let Some(protocol) = protocol else {
        return Ok(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED_PROTOCOL",
            "ask for the graphql-transport-ws or graphql-ws subprotocol (Sec-WebSocket-Protocol)",
        )
        .rest());
    };
    let header_secret = http
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .map(str::to_owned);
    let too_many = |message: String| {
        Ok(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_CONNECTIONS",
            message,
        )
        .rest())
    };
    // A key in the header is checked before the upgrade and the socket counted against it;
    // other sockets wait for their connection_init in the places of the unauthenticated.
    let mut handshake = Handshake::default();
    let pending = if header_secret.is_some() {
        let key = match authenticate(&state.store, header_secret.as_deref()).await {
            Ok(key) => key,
            Err(refusal) => return Ok(refusal.rest()),
        };
        let Some(slot) = state.sockets.admit_key(key.id) else {
            return too_many(format!(
                "the key has {} subscription sockets open already",
                state.sockets.limits.per_key
            ));
        };
        handshake.slot = Some(slot);
        None
    } else {
        let address = http
            .peer_addr()
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let Some(slot) = state.sockets.admit(address) else {
            return too_many(format!(
                "too many subscription sockets are waiting for their connection_init (at most \
                 {} in all, {} from one address); try again later",
                state.sockets.limits.unauthenticated,
                state.sockets.limits.unauthenticated_per_address
            ));
        };
        Some(slot)
    };
    let (response, session, messages) =
        actix_ws::handle_with_protocols(&http, payload, &ALL_WEBSOCKET_PROTOCOLS)?;
    let messages = messages.max_frame_size(MAX_SOCKET_MESSAGE_BYTES);
    let handshake = Arc::new(Mutex::new(handshake));
    let heard = Arc::new(Mutex::new(Instant::now()));
    let init = {
        let backend = state.backend.clone();
        let store = state.store.clone();
        let sockets = state.sockets.clone();
        let handshake = handshake.clone();
        move |init: serde_json::Value| async move {
            let from_init = init
                .get("Authorization")
                .or_else(|| init.get("authorization"))
                .and_then(|v| v.as_str())
                .and_then(bearer)
                .map(str::to_owned);
            let secret = header_secret.or(from_init);
            let key = authenticate(&store, secret.as_deref())
                .await
                .map_err(|refusal| {
                    patron_graphql::access::api_error(&refusal.code, refusal.message)
                })?;
            if lock(&handshake).slot.is_some() {
                // Counted against the header's key at the upgrade.
                lock(&handshake).initialized = true;
                return Ok(socket_data(key, backend));
            }
            let Some(slot) = sockets.admit_key(key.id) else {
                let message = format!(
                    "TOO_MANY_CONNECTIONS: the key has {} subscription sockets open already",
                    sockets.limits.per_key
                );
                lock(&handshake).refusal = Some(close_reason(CLOSE_TOO_MANY, message.clone()));
                return Err(patron_graphql::access::api_error(
                    "TOO_MANY_CONNECTIONS",
                    message,
                ));
            };
            let mut handshake = lock(&handshake);
            handshake.slot = Some(slot);
            handshake.initialized = true;
            drop(handshake);
            Ok(socket_data(key, backend))
        }
    };
    let operations = Operations::new(protocol, state.sockets.limits.subscriptions);
    let incoming = incoming(
        messages,
        session.clone(),
        handshake.clone(),
        heard.clone(),
        operations.clone(),
    );
    let graphql = async_graphql::http::WebSocket::new(state.schema.clone(), incoming, protocol)
        .on_connection_init(init);
    let limits = state.sockets.limits;
    actix_web::rt::spawn(serve_socket(
        graphql, session, pending, handshake, heard, limits, operations,
    ));
    Ok(response)
}

/// What a socket's operations may read: the key, and loaders over the backend.
fn socket_data(key: ApiKey, backend: Arc<dyn Backend>) -> async_graphql::Data {
    let mut data = async_graphql::Data::default();
    data.insert(key);
    // Queries and mutations go to POST /graphql, where each is authenticated anew.
    data.insert(patron_graphql::access::Socket);
    data.insert(Loaders::new(backend, spawn));
    data
}

/// The operations running on one socket, by id, at most [`SocketLimits::subscriptions`].
#[derive(Clone)]
struct Operations {
    protocol: WebSocketProtocols,
    limit: usize,
    running: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// The part of a protocol message the operation count reads.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

impl Operations {
    fn new(protocol: WebSocketProtocols, limit: usize) -> Self {
        Self {
            protocol,
            limit,
            running: Arc::default(),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads a client's message: an operation started or stopped is counted. Returns the
    /// error message to answer instead of passing the message on, when it would start one
    /// operation more than the socket may run.
    fn on_client_message(&self, message: &[u8]) -> Option<String> {
        // Only an object is read as a message here; the protocol refuses anything else (an
        // array would read as one to it too, uncounted: it is closed before it gets there).
        let envelope: Envelope = serde_json::from_slice(message).ok()?;
        let id = envelope.id?;
        match envelope.kind.as_str() {
            "subscribe" | "start" => {
                let mut running = self.running();
                if running.contains(&id) {
                    // The protocol itself answers a duplicate id.
                    return None;
                }
                if running.len() >= self.limit {
                    let error = json!({
                        "message": format!(
                            "TOO_MANY_SUBSCRIPTIONS: a socket runs at most {} operations at once",
                            self.limit
                        ),
                        "extensions": {"code": "TOO_MANY_SUBSCRIPTIONS"},
                    });
                    let payload = match self.protocol {
                        WebSocketProtocols::GraphQLWS => json!([error]),
                        _ => error,
                    };
                    return Some(
                        json!({"type": "error", "id": id, "payload": payload}).to_string(),
                    );
                }
                running.insert(id);
                None
            }
            "complete" | "stop" => {
                self.running().remove(&id);
                None
            }
            _ => None,
        }
    }

    /// Reads a server's message: an operation that ended (complete, or error) is uncounted.
    fn on_server_message(&self, message: &str) -> Option<()> {
        if !(message.contains("\"complete\"") || message.contains("\"error\"")) {
            return None;
        }
        let envelope: Envelope = serde_json::from_str(message).ok()?;
        if matches!(envelope.kind.as_str(), "complete" | "error") {
            self.running().remove(&envelope.id?);
        }
        Some(())
    }
}

/// The client's messages as the GraphQL protocol reads them: continuation frames joined up to
/// [`MAX_SOCKET_MESSAGE_BYTES`], pings answered; the stream ends when the client closes, or
/// sends a longer message (the reason is left in `handshake`).
fn incoming(
    messages: actix_ws::MessageStream,
    session: actix_ws::Session,
    handshake: Arc<Mutex<Handshake>>,
    heard: Arc<Mutex<Instant>>,
    operations: Operations,
) -> impl futures::Stream<Item = Bytes> {
    let state = (messages, session, BytesMut::new());
    futures::stream::unfold(state, move |(mut messages, mut session, mut partial)| {
        let handshake = handshake.clone();
        let heard = heard.clone();
        let operations = operations.clone();
        async move {
            loop {
                let message = messages.recv().await?;
                *heard.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
                let last = match message {
                    Ok(Message::Text(text)) => text.into_bytes(),
                    Ok(Message::Binary(bytes)) => bytes,
                    Ok(Message::Continuation(item)) => {
                        let (first, last, bytes) = match item {
                            Item::FirstText(b) | Item::FirstBinary(b) => (true, false, b),
                            Item::Continue(b) => (false, false, b),
                            Item::Last(b) => (false, true, b),
                        };
                        if first {
                            partial.clear();
                        }
                        if partial.len().saturating_add(bytes.len()) > MAX_SOCKET_MESSAGE_BYTES {
                            return too_large(&handshake);
                        }
                        partial.extend_from_slice(&bytes);
                        if !last {
                            continue;
                        }
                        partial.split().freeze()
                    }
                    Ok(Message::Ping(bytes)) => {
                        if session.pong(&bytes).await.is_err() {
                            return None;
                        }
                        continue;
                    }
                    Ok(Message::Pong(_) | Message::Nop) => continue,
                    Ok(Message::Close(_)) => return None,
                    Err(ProtocolError::Overflow) => return too_large(&handshake),
                    Err(e) => {
                        lock(&handshake).refusal = Some(close_reason(1002, e.to_string()));
                        return None;
                    }
                };
                if last.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                    lock(&handshake).refusal = Some(close_reason(
                        CLOSE_INVALID_MESSAGE,
                        "INVALID_MESSAGE: a message is a JSON object".into(),
                    ));
                    return None;
                }
                if let Some(refusal) = operations.on_client_message(&last) {
                    if session.text(refusal).await.is_err() {
                        return None;
                    }
                    continue;
                }
                return Some((last, (messages, session, partial)));
            }
        }
    })
}

/// Leaves the reason for closing on a message over [`MAX_SOCKET_MESSAGE_BYTES`]; ends the
/// client's messages.
fn too_large<T>(handshake: &Mutex<Handshake>) -> Option<T> {
    lock(handshake).refusal = Some(close_reason(
        1009,
        format!("MESSAGE_TOO_LARGE: a message is at most {MAX_SOCKET_MESSAGE_BYTES} bytes"),
    ));
    None
}

/// Sends the GraphQL protocol's answers to the socket, pings it, and closes it when the
/// protocol ends, the client goes quiet, or no valid `connection_init` came in time.
async fn serve_socket<S: futures::Stream<Item = WsMessage>>(
    graphql: S,
    mut session: actix_ws::Session,
    mut pending: Option<SocketSlot>,
    handshake: Arc<Mutex<Handshake>>,
    heard: Arc<Mutex<Instant>>,
    limits: SocketLimits,
    operations: Operations,
) {
    let mut graphql = std::pin::pin!(graphql);
    // Until a connection_init is accepted (whether the key came in the header or in it).
    let mut waiting = true;
    let init_deadline = tokio::time::sleep(limits.init_timeout);
    let mut init_deadline = std::pin::pin!(init_deadline);
    // The first ping goes out after one interval, not at once: a client reads its ack first.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_INTERVAL,
        HEARTBEAT_INTERVAL,
    );
    let reason = loop {
        tokio::select! {
            () = &mut init_deadline, if waiting => {
                break Some(close_reason(
                    CLOSE_INIT_TIMEOUT,
                    format!(
                        "no connection_init with a valid API key within {} s",
                        limits.init_timeout.as_secs_f64()
                    ),
                ));
            }
            _ = heartbeat.tick() => {
                let quiet = heard.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
                if quiet > CLIENT_TIMEOUT {
                    break None;
                }
                if session.ping(b"").await.is_err() {
                    return;
                }
            }
            answer = graphql.next() => match answer {
                Some(WsMessage::Text(text)) => {
                    operations.on_server_message(&text);
                    if session.text(text).await.is_err() {
                        return;
                    }
                    if waiting && lock(&handshake).initialized {
                        waiting = false;
                        drop(pending.take());
                    }
                }
                Some(WsMessage::Close(code, message)) => {
                    break Some(
                        lock(&handshake)
                            .refusal
                            .take()
                            .unwrap_or_else(|| close_reason(code, message)),
                    );
                }
                None => break lock(&handshake).refusal.take(),
            }
        }
    };
    let _ = session.close(reason).await;
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_secrets_are_read_from_the_header_value() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
