//! Opaque page cursors: what a page ended at, encoded so clients pass it back unread.

use async_graphql::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

use crate::access::{api_error, codes};

fn encode(kind: char, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

fn decode(cursor: &str, kind: char) -> Result<String> {
    let bad = || {
        api_error(
            codes::INVALID_ARGUMENT,
            format!("`after`: not a cursor of this list: {cursor:?}"),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    match text.split_once(':') {
        Some((k, value)) if k.len() == 1 && k.starts_with(kind) => Ok(value.to_owned()),
        _ => Err(bad()),
    }
}

/// A cursor after a log position.
pub fn encode_position(position: u64) -> String {
    encode('p', &position.to_string())
}

/// The log position a cursor names.
pub fn decode_position(cursor: &str) -> Result<u64> {
    decode(cursor, 'p')?
        .parse()
        .map_err(|_| api_error(codes::INVALID_ARGUMENT, "`after`: a malformed cursor"))
}

/// A cursor after a number of items.
pub fn encode_offset(offset: usize) -> String {
    encode('o', &offset.to_string())
}

/// The number of items a cursor skips.
pub fn decode_offset(cursor: &str) -> Result<usize> {
    decode(cursor, 'o')?
        .parse()
        .map_err(|_| api_error(codes::INVALID_ARGUMENT, "`after`: a malformed cursor"))
}

/// A cursor after a customer.
pub fn encode_customer(id: Uuid) -> String {
    encode('c', &id.to_string())
}

/// The customer a cursor names.
pub fn decode_customer(cursor: &str) -> Result<Uuid> {
    decode(cursor, 'c')?
        .parse()
        .map_err(|_| api_error(codes::INVALID_ARGUMENT, "`after`: a malformed cursor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_other_kinds() {
        assert_eq!(decode_position(&encode_position(42)).ok(), Some(42));
        assert_eq!(decode_offset(&encode_offset(7)).ok(), Some(7));
        let id = Uuid::now_v7();
        assert_eq!(decode_customer(&encode_customer(id)).ok(), Some(id));
        assert!(decode_offset(&encode_position(42)).is_err());
        assert!(decode_position("not a cursor").is_err());
    }
}
