//! Personal data at rest: per-customer keys wrapped by a master key, and sealed payload parts.
//!
//! Every customer has a random 256-bit key, stored only wrapped (encrypted) by the master key
//! given in configuration. The personal part of each stored event (identifiers, traits, free
//! properties, the identifiers its resolution names) is encrypted with AES-256-GCM under a fresh
//! key of its own, and that event key is wrapped by the key of the customer whose stream holds
//! the event. Destroying a customer's key (erasure) therefore makes the personal part of every
//! one of their events unreadable for good, while the events stay in the log: replay still works
//! and the rest of each event (channel, source, what happened, amounts) still reads.
//!
//! A sealed part is the JSON object `{"key": .., "data": .., "more": ..}` (base64): `key` the
//! wrapped event key, `data` and `more` two JSON objects encrypted under it (with nonces 0 and 1:
//! the event key is used for nothing else). `data` is sealed before the customer is known,
//! `more` (the resolution) once it is; opening merges both into the event's payload.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::rngs::ThreadRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The member of a payload that holds its sealed personal part.
pub const SEALED_FIELD: &str = "sealed";
/// The member set on a payload whose personal part can no longer be read.
pub const ERASED_FIELD: &str = "erased";

/// Bytes of a nonce.
const NONCE_LEN: usize = 12;

/// What went wrong with keys or sealed data.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrivacyError {
    /// A master key that is not 32 bytes in base64 or hex.
    #[error("the master key must be 32 bytes, given as base64 or as 64 hex digits")]
    InvalidMasterKey,
    /// Decryption failed: the data was changed, or the key is not the one it was sealed with.
    #[error("sealed data does not open with this key (changed data or a different key)")]
    Unreadable,
    /// A sealed part that is not in the expected shape.
    #[error("sealed data is malformed: {0}")]
    Malformed(String),
}

/// The key that wraps every customer's key. Given in configuration; never stored beside the data
/// in production.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key from 32 bytes given as base64 or as 64 hex digits.
    pub fn parse(text: &str) -> Result<Self, PrivacyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| PrivacyError::InvalidMasterKey)?
        } else {
            BASE64
                .decode(text)
                .map_err(|_| PrivacyError::InvalidMasterKey)?
        };
        if bytes.len() != 32 {
            return Err(PrivacyError::InvalidMasterKey);
        }
        Ok(Self(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes))))
    }

    /// A new random master key, as base64 text.
    pub fn generate() -> String {
        BASE64.encode(Aes256Gcm::generate_key(OsRng))
    }

    /// A new random customer key, and its wrapped form to store.
    pub fn new_customer_key(&self) -> (CustomerKey, Vec<u8>) {
        let key = Aes256Gcm::generate_key(rng());
        let wrapped = seal_random_nonce(&self.0, key.as_slice());
        (CustomerKey(Aes256Gcm::new(&key)), wrapped)
    }

    /// The customer key behind a stored wrapped key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<CustomerKey, PrivacyError> {
        let key = open_random_nonce(&self.0, wrapped)?;
        if key.len() != 32 {
            return Err(PrivacyError::Malformed(
                "a wrapped key of the wrong size".into(),
            ));
        }
        Ok(CustomerKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(
            &key,
        ))))
    }
}

/// One customer's key: it wraps the keys of the events on their stream.
#[derive(Clone)]
pub struct CustomerKey(Aes256Gcm);

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CustomerKey(..)")
    }
}

/// Random bytes for event keys and nonces: a thread-local ChaCha generator seeded from the
/// operating system (a system call per event would cost more than the encryption).
fn rng() -> ThreadRng {
    rand::thread_rng()
}

fn seal_random_nonce(cipher: &Aes256Gcm, plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut rng());
    let mut out = nonce.to_vec();
    // Encrypting into a Vec fails only on a plaintext beyond GCM's 64 GiB limit.
    out.extend(cipher.encrypt(&nonce, plaintext).unwrap_or_default());
    out
}

fn open_random_nonce(cipher: &Aes256Gcm, sealed: &[u8]) -> Result<Vec<u8>, PrivacyError> {
    if sealed.len() < NONCE_LEN {
        return Err(PrivacyError::Malformed("shorter than a nonce".into()));
    }
    let (nonce, data) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), data)
        .map_err(|_| PrivacyError::Unreadable)
}

fn counter_nonce(n: u8) -> Nonce<<Aes256Gcm as AeadCore>::NonceSize> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[NONCE_LEN - 1] = n;
    *Nonce::from_slice(&nonce)
}

/// A personal part sealed under a fresh event key, waiting for its customer's key. Not `Clone`:
/// [`SealedPart::finish`] seals `more` under nonce 1, which must happen once per event key.
pub struct SealedPart {
    key: Key<Aes256Gcm>,
    cipher: Aes256Gcm,
    /// The ciphertext, already in base64.
    data: String,
}

impl std::fmt::Debug for SealedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedPart")
            .field("data_chars", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl SealedPart {
    /// Seals the members of a JSON object under a fresh event key.
    pub fn seal(personal: &Map<String, Value>) -> Result<Self, PrivacyError> {
        let plaintext =
            serde_json::to_vec(personal).map_err(|e| PrivacyError::Malformed(e.to_string()))?;
        Self::seal_json(&plaintext)
    }

    /// Seals a JSON object given as its text (the caller vouches that it is one).
    pub fn seal_json(object: &[u8]) -> Result<Self, PrivacyError> {
        let key = Aes256Gcm::generate_key(rng());
        let cipher = Aes256Gcm::new(&key);
        let data = cipher
            .encrypt(&counter_nonce(0), object)
            .map_err(|_| PrivacyError::Malformed("too large to seal".into()))?;
        Ok(Self {
            key,
            cipher,
            data: BASE64.encode(data),
        })
    }

    /// Adds a second JSON object (`more`, given as its text, sealed under the same event key)
    /// and wraps the event key with the customer's key: the sealed part as stored.
    pub fn finish(
        self,
        more: Option<&[u8]>,
        customer: &CustomerKey,
    ) -> Result<Sealed, PrivacyError> {
        let more = match more {
            Some(more) => {
                let sealed = self
                    .cipher
                    .encrypt(&counter_nonce(1), more)
                    .map_err(|_| PrivacyError::Malformed("too large to seal".into()))?;
                Some(BASE64.encode(sealed))
            }
            None => None,
        };
        Ok(Sealed {
            key: BASE64.encode(seal_random_nonce(&customer.0, self.key.as_slice())),
            data: self.data,
            more,
        })
    }
}

/// A sealed part as stored in a payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The event key, wrapped by the customer's key (base64 of nonce and ciphertext).
    pub key: String,
    /// The personal members sealed before resolution (base64).
    pub data: String,
    /// The personal members sealed at resolution (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more: Option<String>,
}

impl Sealed {
    /// The sealed part as a JSON object's text (base64 needs no escaping).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(
            self.key.len() + self.data.len() + self.more.as_ref().map_or(0, String::len) + 40,
        );
        out.push_str("{\"key\":\"");
        out.push_str(&self.key);
        out.push_str("\",\"data\":\"");
        out.push_str(&self.data);
        if let Some(more) = &self.more {
            out.push_str("\",\"more\":\"");
            out.push_str(more);
        }
        out.push_str("\"}");
        out
    }

    /// Seals `personal` for the customer in one step (for events made under the write lock).
    pub fn new(
        personal: &Map<String, Value>,
        customer: &CustomerKey,
    ) -> Result<Self, PrivacyError> {
        SealedPart::seal(personal)?.finish(None, customer)
    }

    /// The personal members, merged from `data` and `more`.
    pub fn open(&self, customer: &CustomerKey) -> Result<Map<String, Value>, PrivacyError> {
        let decode = |text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| PrivacyError::Malformed(e.to_string()))
        };
        let key = open_random_nonce(&customer.0, &decode(&self.key)?)?;
        if key.len() != 32 {
            return Err(PrivacyError::Malformed(
                "an event key of the wrong size".into(),
            ));
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
        let mut members = Map::new();
        for (n, part) in [(0, Some(&self.data)), (1, self.more.as_ref())] {
            let Some(part) = part else { continue };
            let plaintext = cipher
                .decrypt(&counter_nonce(n), decode(part)?.as_slice())
                .map_err(|_| PrivacyError::Unreadable)?;
            let object: Map<String, Value> = serde_json::from_slice(&plaintext)
                .map_err(|e| PrivacyError::Malformed(e.to_string()))?;
            members.extend(object);
        }
        Ok(members)
    }
}

/// Seals the named members of a JSON object payload for `customer`, in place of them.
pub fn seal_members(
    payload: Value,
    fields: &[&str],
    customer: &CustomerKey,
) -> Result<Value, PrivacyError> {
    let Value::Object(mut members) = payload else {
        return Err(PrivacyError::Malformed(
            "the payload is not an object".into(),
        ));
    };
    let personal: Map<String, Value> = fields
        .iter()
        .filter_map(|f| members.remove(*f).map(|v| ((*f).to_owned(), v)))
        .collect();
    let sealed = Sealed::new(&personal, customer)?;
    members.insert(
        SEALED_FIELD.into(),
        serde_json::to_value(sealed).map_err(|e| PrivacyError::Malformed(e.to_string()))?,
    );
    Ok(Value::Object(members))
}

/// A stored payload with its personal part opened: with `key`, the sealed members are put
/// back; without it (the customer was erased), they are left out and `"erased": true` is set.
/// A payload with nothing sealed comes back as it is.
pub fn open_payload(payload: Value, key: Option<&CustomerKey>) -> Result<Value, PrivacyError> {
    let Value::Object(mut members) = payload else {
        return Ok(payload);
    };
    let Some(sealed) = members.remove(SEALED_FIELD) else {
        return Ok(Value::Object(members));
    };
    match key {
        Some(key) => {
            let sealed: Sealed = serde_json::from_value(sealed)
                .map_err(|e| PrivacyError::Malformed(e.to_string()))?;
            for (name, value) in sealed.open(key)? {
                // An object sealed in part (a traits update's action) reads whole again.
                match (members.get_mut(&name), value) {
                    (Some(Value::Object(clear)), Value::Object(sealed)) => clear.extend(sealed),
                    (_, value) => {
                        members.insert(name, value);
                    }
                }
            }
        }
        None => {
            members.insert(ERASED_FIELD.into(), Value::Bool(true));
        }
    }
    Ok(Value::Object(members))
}

/// A stored payload with its sealed part destroyed, as erasure leaves an event whose customer
/// no longer holds the key it was sealed under: `sealed` (the wrapped event key and the
/// ciphertext) removed and `"erased": true` set, the rest as it was; exactly what
/// [`open_payload`] reads from it without a key. `None` when nothing is sealed in it.
pub fn shred_payload(payload: &str) -> Result<Option<String>, PrivacyError> {
    let mut value: Value =
        serde_json::from_str(payload).map_err(|e| PrivacyError::Malformed(e.to_string()))?;
    let Some(members) = value.as_object_mut() else {
        return Ok(None);
    };
    if members.remove(SEALED_FIELD).is_none() {
        return Ok(None);
    }
    members.insert(ERASED_FIELD.into(), Value::Bool(true));
    Ok(Some(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_master_key_reads_from_base64_or_hex_and_nothing_else() {
        let text = MasterKey::generate();
        assert!(MasterKey::parse(&text).is_ok());
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert_eq!(
            MasterKey::parse("too short").unwrap_err(),
            PrivacyError::InvalidMasterKey
        );
        assert_eq!(
            MasterKey::parse(&BASE64.encode([1u8; 16])).unwrap_err(),
            PrivacyError::InvalidMasterKey
        );
    }

    #[test]
    fn a_sealed_part_opens_only_with_its_customers_key() {
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, wrapped) = master.new_customer_key();
        let personal =
            object(json!({"identifiers": [{"kind": "phone", "value": "+8613912340001"}]}));
        let more = object(json!({"resolution": {"linked": ["+8613912340001"]}}));
        let sealed = SealedPart::seal(&personal)
            .unwrap()
            .finish(Some(&serde_json::to_vec(&more).unwrap()), &key)
            .unwrap();
        let text = sealed.to_json();
        assert_eq!(serde_json::from_str::<Sealed>(&text).unwrap(), sealed);
        assert!(!text.contains("13912340001"), "no value in clear: {text}");

        let again = master.unwrap(&wrapped).unwrap();
        let opened = sealed.open(&again).unwrap();
        assert_eq!(opened["identifiers"], personal["identifiers"]);
        assert_eq!(opened["resolution"], more["resolution"]);

        let (other, _) = master.new_customer_key();
        assert_eq!(sealed.open(&other).unwrap_err(), PrivacyError::Unreadable);
        let other_master = MasterKey::parse(&MasterKey::generate()).unwrap();
        assert!(other_master.unwrap(&wrapped).is_err());
    }

    #[test]
    fn a_changed_ciphertext_does_not_open() {
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, _) = master.new_customer_key();
        let mut sealed = Sealed::new(&object(json!({"name": "Li Lei"})), &key).unwrap();
        let mut bytes = BASE64.decode(&sealed.data).unwrap();
        bytes[0] ^= 1;
        sealed.data = BASE64.encode(bytes);
        assert_eq!(sealed.open(&key).unwrap_err(), PrivacyError::Unreadable);
    }

    #[test]
    fn a_payload_opens_to_its_members_or_reads_as_erased() {
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, _) = master.new_customer_key();
        let sealed = Sealed::new(&object(json!({"identifiers": ["x"]})), &key).unwrap();
        let payload = json!({"channel": "app", "sealed": sealed});
        assert_eq!(
            open_payload(payload.clone(), Some(&key)).unwrap(),
            json!({"channel": "app", "identifiers": ["x"]})
        );
        assert_eq!(
            open_payload(payload, None).unwrap(),
            json!({"channel": "app", "erased": true})
        );
        let merged = seal_members(
            json!({"absorbed": "c1", "evidence": ["x"]}),
            &["evidence"],
            &key,
        )
        .unwrap();
        assert!(merged.get("evidence").is_none());
        assert_eq!(
            open_payload(merged, Some(&key)).unwrap(),
            json!({"absorbed": "c1", "evidence": ["x"]})
        );
        let plain = json!({"channel": "app"});
        assert_eq!(open_payload(plain.clone(), None).unwrap(), plain);
    }

    #[test]
    fn a_shredded_payload_reads_as_erased_under_any_key() {
        let master = MasterKey::parse(&MasterKey::generate()).unwrap();
        let (key, _) = master.new_customer_key();
        let sealed =
            Sealed::new(&object(json!({"identifiers": ["+8613912340001"]})), &key).unwrap();
        let payload = json!({"channel": "app", "sealed": sealed}).to_string();
        let shredded = shred_payload(&payload).unwrap().unwrap();
        assert!(!shredded.contains(&sealed.key) && !shredded.contains(&sealed.data));
        let shredded: Value = serde_json::from_str(&shredded).unwrap();
        assert_eq!(
            open_payload(shredded, Some(&key)).unwrap(),
            json!({"channel": "app", "erased": true})
        );
        assert_eq!(shred_payload(r#"{"channel":"app"}"#).unwrap(), None);
    }
}
