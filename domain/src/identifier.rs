//! Identifiers: the typed, normalized keys (phone, email, device id, ...) by which a touchpoint
//! names the person behind it.
//!
//! A raw value becomes an [`Identifier`] only through its kind's [`Normalizer`], so that the same
//! person written two ways (`138 0013 8000`, `+86 138-0013-8000`) has one identifier.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest identifier value accepted, in bytes, after normalization.
pub const MAX_IDENTIFIER_LEN: usize = 256;

/// The kind of an identifier: `phone`, `email`, `device_id`, or a custom kind named in the rules.
/// Kind names are 1 to 40 characters of `a-z`, `0-9` and `_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentifierKind(String);

impl IdentifierKind {
    /// A mobile or landline phone number, kept in E.164.
    pub const PHONE: &'static str = "phone";
    /// An email address, kept trimmed and lower-cased.
    pub const EMAIL: &'static str = "email";
    /// The user name or account id of an online shop or app.
    pub const LOGIN_ID: &'static str = "login_id";
    /// The membership number of a loyalty programme.
    pub const MEMBER_ID: &'static str = "member_id";
    /// A physical or virtual membership card number.
    pub const MEMBER_CARD: &'static str = "member_card";
    /// A device id (IDFA, Android id, app instance id).
    pub const DEVICE_ID: &'static str = "device_id";
    /// A browser cookie id.
    pub const COOKIE: &'static str = "cookie";
    /// A WeChat open id (one per official account or mini-program).
    pub const WECHAT_OPENID: &'static str = "wechat_openid";
    /// A WeChat union id (one per person across an organisation's accounts).
    pub const WECHAT_UNIONID: &'static str = "wechat_unionid";
    /// An anonymous id set by an analytics SDK before the person is known.
    pub const ANONYMOUS_ID: &'static str = "anonymous_id";

    /// Validates a kind name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdentifierError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(name))
        } else {
            Err(IdentifierError::InvalidKind { kind: name })
        }
    }

    /// The kind's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentifierKind {
    type Error = IdentifierError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<IdentifierKind> for String {
    fn from(value: IdentifierKind) -> Self {
        value.0
    }
}

impl FromStr for IdentifierKind {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for IdentifierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalized identifier: its kind and canonical value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    /// What kind of key it is.
    pub kind: IdentifierKind,
    /// The canonical value (E.164 for phones, lower case for emails, ...).
    pub value: String,
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Why a raw identifier value was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum IdentifierError {
    /// The kind name is malformed.
    #[error("invalid identifier kind {kind:?}: expected 1 to 40 characters of a-z 0-9 _")]
    InvalidKind {
        /// The refused name.
        kind: String,
    },
    /// The kind is not declared in the identity rules.
    #[error("unknown identifier kind {kind:?}")]
    UnknownKind {
        /// The undeclared kind.
        kind: String,
    },
    /// The value is empty once trimmed.
    #[error("{kind} is empty")]
    Empty {
        /// The identifier's kind.
        kind: IdentifierKind,
    },
    /// The value is longer than [`MAX_IDENTIFIER_LEN`].
    #[error("{kind} is longer than 256 bytes")]
    TooLong {
        /// The identifier's kind.
        kind: IdentifierKind,
    },
    /// The value is not a valid phone number.
    #[error("{kind} {value:?} is not a valid phone number for region {region}")]
    InvalidPhone {
        /// The identifier's kind.
        kind: IdentifierKind,
        /// The raw value.
        value: String,
        /// The region assumed for numbers without a country code.
        region: String,
    },
    /// The value is not a valid email address.
    #[error("{kind} {value:?} is not a valid email address")]
    InvalidEmail {
        /// The identifier's kind.
        kind: IdentifierKind,
        /// The raw value.
        value: String,
    },
    /// The value contains control characters.
    #[error("{kind} contains a control character")]
    ControlCharacter {
        /// The identifier's kind.
        kind: IdentifierKind,
    },
}

/// How raw values of a kind are made canonical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalizer {
    /// Parsed as a phone number (national numbers in the default region) and kept in E.164.
    Phone,
    /// Trimmed and lower-cased; must look like `local@domain.tld`.
    Email,
    /// Trimmed.
    Trim,
    /// Trimmed and lower-cased (hex device ids, cookie ids).
    TrimLower,
}

impl Normalizer {
    /// Makes `raw` canonical for `kind`; `region` is the ISO country code assumed for phone
    /// numbers written without a country code.
    pub fn normalize(
        self,
        kind: &IdentifierKind,
        raw: &str,
        region: phonenumber::country::Id,
    ) -> Result<Identifier, IdentifierError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(IdentifierError::Empty { kind: kind.clone() });
        }
        if trimmed.chars().any(char::is_control) {
            return Err(IdentifierError::ControlCharacter { kind: kind.clone() });
        }
        let value = match self {
            Self::Phone => normalize_phone(kind, trimmed, region)?,
            Self::Email => normalize_email(kind, trimmed)?,
            Self::Trim => trimmed.to_owned(),
            Self::TrimLower => trimmed.to_lowercase(),
        };
        if value.len() > MAX_IDENTIFIER_LEN {
            return Err(IdentifierError::TooLong { kind: kind.clone() });
        }
        Ok(Identifier {
            kind: kind.clone(),
            value,
        })
    }
}

fn normalize_phone(
    kind: &IdentifierKind,
    raw: &str,
    region: phonenumber::country::Id,
) -> Result<String, IdentifierError> {
    let invalid = || IdentifierError::InvalidPhone {
        kind: kind.clone(),
        value: raw.to_owned(),
        region: format!("{region:?}"),
    };
    // Chinese exports often write the international prefix as 0086 or 86 without a plus.
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let candidate = if raw.starts_with("00") {
        format!("+{}", &digits[2..])
    } else if region == phonenumber::country::Id::CN
        && digits.len() == 13
        && digits.starts_with("86")
        && !raw.starts_with('+')
    {
        format!("+{digits}")
    } else {
        raw.to_owned()
    };
    let number = phonenumber::parse(Some(region), &candidate).map_err(|_| invalid())?;
    if !phonenumber::is_valid(&number) {
        return Err(invalid());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

fn normalize_email(kind: &IdentifierKind, raw: &str) -> Result<String, IdentifierError> {
    let value = raw.to_lowercase();
    let invalid = || IdentifierError::InvalidEmail {
        kind: kind.clone(),
        value: raw.to_owned(),
    };
    let (local, domain) = value.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.contains(char::is_whitespace) || domain.contains('@') || !domain_ok
    {
        return Err(invalid());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    fn kind(name: &str) -> IdentifierKind {
        IdentifierKind::new(name).unwrap()
    }

    fn phone(raw: &str) -> Result<String, IdentifierError> {
        Normalizer::Phone
            .normalize(&kind("phone"), raw, Id::CN)
            .map(|i| i.value)
    }

    #[test]
    fn chinese_mobile_numbers_in_every_export_format_become_one_e164() {
        for raw in [
            "13800138000",
            "138 0013 8000",
            "138-0013-8000",
            "+86 138 0013 8000",
            "+8613800138000",
            "008613800138000",
            "8613800138000",
            " (+86) 138-0013-8000 ",
        ] {
            assert_eq!(phone(raw).as_deref(), Ok("+8613800138000"), "{raw}");
        }
    }

    #[test]
    fn foreign_numbers_keep_their_country() {
        assert_eq!(phone("+1 650-253-0000").as_deref(), Ok("+16502530000"));
        assert_eq!(phone("+44 20 7946 0958").as_deref(), Ok("+442079460958"));
        let us = Normalizer::Phone
            .normalize(&kind("phone"), "(650) 253-0000", Id::US)
            .unwrap();
        assert_eq!(us.value, "+16502530000");
    }

    #[test]
    fn malformed_phones_are_refused_with_the_value() {
        for raw in ["12345", "abc", "1380013800", "+86 999"] {
            let err = phone(raw).unwrap_err();
            assert!(
                matches!(err, IdentifierError::InvalidPhone { .. }),
                "{raw}: {err}"
            );
            assert!(err.to_string().contains(raw), "{err}");
        }
        assert!(matches!(phone("  "), Err(IdentifierError::Empty { .. })));
    }

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        let email = |raw: &str| {
            Normalizer::Email
                .normalize(&kind("email"), raw, Id::CN)
                .map(|i| i.value)
        };
        assert_eq!(
            email("  Li.Na@Example.COM ").as_deref(),
            Ok("li.na@example.com")
        );
        assert_eq!(email("王@例子.中国").as_deref(), Ok("王@例子.中国"));
        for bad in [
            "li.na",
            "li@na",
            "@example.com",
            "li na@example.com",
            "a@b@c.com",
            "a@.com",
        ] {
            assert!(
                matches!(email(bad), Err(IdentifierError::InvalidEmail { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_kinds_are_trimmed_and_checked() {
        let device = Normalizer::TrimLower
            .normalize(&kind("device_id"), " ABCDEF-01 ", Id::CN)
            .unwrap();
        assert_eq!(device.value, "abcdef-01");
        let card = Normalizer::Trim
            .normalize(&kind("member_card"), " MC-01 ", Id::CN)
            .unwrap();
        assert_eq!(card.value, "MC-01");
        assert!(matches!(
            Normalizer::Trim.normalize(&kind("member_card"), "a\u{0}b", Id::CN),
            Err(IdentifierError::ControlCharacter { .. })
        ));
        assert!(matches!(
            Normalizer::Trim.normalize(&kind("cookie"), &"x".repeat(300), Id::CN),
            Err(IdentifierError::TooLong { .. })
        ));
    }

    #[test]
    fn kind_names_are_validated() {
        assert!(IdentifierKind::new("loyalty_no_2").is_ok());
        assert!(IdentifierKind::new("Phone").is_err());
        assert!(IdentifierKind::new("").is_err());
        assert!(IdentifierKind::new("a-b").is_err());
    }
}
