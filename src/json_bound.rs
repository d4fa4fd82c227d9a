//! Counting the values of a JSON text before it is parsed into a tree: a tree costs tens of
//! bytes per value, so a small body of many tiny values (`[0,0,0,...]`) would cost many times
//! its size. The count walks the text without keeping anything, and stops at the bound.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a JSON text was not counted to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonBoundError {
    /// It holds more than this many values.
    TooManyValues(usize),
    /// It is not JSON (the parser's message), or nests deeper than the parser allows.
    Malformed(String),
}

impl fmt::Display for JsonBoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyValues(max) => write!(f, "it holds more than {max} JSON values"),
            Self::Malformed(e) => write!(f, "it is not JSON: {e}"),
        }
    }
}

/// Marks the error raised when the bound is passed, to tell it from a syntax error.
const PAST_BOUND: &str = "patron: past the bound on JSON values";

/// How many values (objects, arrays, strings, numbers, booleans, nulls; keys not counted) the
/// JSON `text` holds, if it holds at most `max`.
pub fn count_json_values(text: &[u8], max: usize) -> Result<usize, JsonBoundError> {
    let left = Cell::new(max);
    let mut de = serde_json::Deserializer::from_slice(text);
    let counted = Counter { left: &left }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match counted {
        Ok(()) => Ok(max - left.get()),
        Err(e) if e.to_string().starts_with(PAST_BOUND) => Err(JsonBoundError::TooManyValues(max)),
        Err(e) => Err(JsonBoundError::Malformed(e.to_string())),
    }
}

/// Takes one value off `left` for every value it visits.
#[derive(Clone, Copy)]
struct Counter<'c> {
    left: &'c Cell<usize>,
}

impl Counter<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(PAST_BOUND)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.take()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.take()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.take()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.take()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.take()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.take()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_value_but_keys() {
        assert_eq!(count_json_values(b"0", 10), Ok(1));
        assert_eq!(count_json_values(b"[]", 10), Ok(1));
        assert_eq!(
            count_json_values(br#"{"a": [1, "x", null, true], "b": {}}"#, 10),
            Ok(7)
        );
    }

    #[test]
    fn stops_at_the_bound() {
        assert_eq!(count_json_values(b"[0,0,0]", 4), Ok(4));
        assert_eq!(
            count_json_values(b"[0,0,0,0]", 4),
            Err(JsonBoundError::TooManyValues(4))
        );
        let zeros = format!("[{}0]", "0,".repeat(1_000_000));
        assert_eq!(
            count_json_values(zeros.as_bytes(), 1_000),
            Err(JsonBoundError::TooManyValues(1_000))
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in [&b"[0,"[..], b"{\"a\" 1}", b"0 0", b"", &[0xff, 0xfe]] {
            assert!(
                matches!(
                    count_json_values(text, 100),
                    Err(JsonBoundError::Malformed(_))
                ),
                "{text:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            count_json_values(deep.as_bytes(), usize::MAX),
            Err(JsonBoundError::Malformed(_))
        ));
    }
}
