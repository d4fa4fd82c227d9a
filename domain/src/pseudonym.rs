//! Pseudonymous identifiers: the identity index looks identifiers up by a keyed hash, so the
//! index alone reveals no phone number or email.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identifier::Identifier;
use crate::identity::IdentityRules;

/// Turns identifiers into keyed hashes: `kind` stays readable, the value becomes 32 hex digits
/// of HMAC-SHA256(key, kind, value). Equal identifiers give equal hashes under one key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer { key: *** }")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer with a secret key (32 bytes or more recommended).
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self { mac }
    }

    /// The pseudonym of an identifier.
    pub fn pseudonym(&self, identifier: &Identifier) -> Identifier {
        let mut mac = self.mac.clone();
        mac.update(identifier.kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(identifier.value.as_bytes());
        let digest = mac.finalize().into_bytes();
        Identifier {
            kind: identifier.kind.clone(),
            value: hex::encode(&digest[..16]),
        }
    }

    /// The rules with their blocked values replaced by pseudonyms, to resolve pseudonyms with.
    pub fn rules(&self, rules: &IdentityRules) -> IdentityRules {
        rules.map_blocked(|id| self.pseudonym(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_value() {
        let rules = IdentityRules::default();
        let phone = rules.normalize("phone", "13912340001").unwrap();
        let a = Pseudonymizer::new(b"key one");
        let b = Pseudonymizer::new(b"key two");
        assert_eq!(a.pseudonym(&phone), a.pseudonym(&phone));
        assert_ne!(a.pseudonym(&phone), b.pseudonym(&phone));
        let p = a.pseudonym(&phone);
        assert_eq!(p.kind.as_str(), "phone");
        assert_eq!(p.value.len(), 32);
        assert!(!p.value.contains("13912340001"));
        // The same value under another kind is another pseudonym.
        let login = rules.normalize("login_id", "+8613912340001").unwrap();
        assert_ne!(a.pseudonym(&login).value, p.value);
    }

    #[test]
    fn blocked_values_stay_blocked_as_pseudonyms() {
        let rules = IdentityRules::default();
        let key = Pseudonymizer::new(b"k");
        let hashed = key.rules(&rules);
        let placeholder = rules.normalize("phone", "13800138000").unwrap();
        assert!(hashed.is_blocked(&key.pseudonym(&placeholder)));
        let real = rules.normalize("phone", "13912340001").unwrap();
        assert!(!hashed.is_blocked(&key.pseudonym(&real)));
    }
}
