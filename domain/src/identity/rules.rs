//! Identity rules: which identifier kinds exist, how their values are normalized, whether they
//! merge customers (core) or only link to one (auxiliary), how many a customer may hold, and
//! which values never link anything. Loaded from TOML; the defaults suit retail in China.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identifier::{Identifier, IdentifierError, IdentifierKind, Normalizer};

/// Whether an identifier kind can merge two customers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// Names one person: two customers sharing it are one (phone, email, login id, member id).
    Core,
    /// Links to a customer but may be shared (a family tablet, a shop's card reader): it never
    /// merges two customers that each hold a different core identifier of the same kind.
    Auxiliary,
}

/// The rule for one identifier kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindRule {
    /// Core or auxiliary.
    pub strength: Strength,
    /// How raw values are made canonical.
    pub normalize: Normalizer,
    /// How many values of this kind one customer may hold; more are kept as evidence only.
    pub max_per_customer: u32,
    /// Values (written in any format the normalizer accepts) that never link anything.
    #[serde(default)]
    pub blocked: Vec<String>,
}

/// The rule set as written in the rules file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rule set's version, recorded with every resolution decision for audit.
    pub version: u32,
    /// ISO 3166 country code assumed for phone numbers without a country code.
    #[serde(default = "default_region")]
    pub default_region: String,
    /// One rule per identifier kind.
    pub kinds: BTreeMap<IdentifierKind, KindRule>,
}

fn default_region() -> String {
    "CN".into()
}

/// What is wrong with a rules file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RulesError {
    /// The default region is not an ISO 3166 code the phone library knows.
    #[error("default_region {0:?} is not a known ISO 3166 country code")]
    UnknownRegion(String),
    /// A limit of zero would make a kind useless.
    #[error("kinds.{0}.max_per_customer must be at least 1")]
    ZeroLimit(IdentifierKind),
    /// A blocked value does not normalize.
    #[error("kinds.{kind}.blocked: {source}")]
    BlockedValue {
        /// The kind whose list holds it.
        kind: IdentifierKind,
        /// Why it does not normalize.
        source: IdentifierError,
    },
    /// No kind is declared.
    #[error("the rules declare no identifier kind")]
    NoKinds,
}

/// Validated identity rules, ready to normalize and resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRules {
    version: u32,
    region: phonenumber::country::Id,
    kinds: BTreeMap<IdentifierKind, KindRule>,
    blocked: BTreeSet<Identifier>,
}

fn kind(name: &str) -> IdentifierKind {
    IdentifierKind::new(name).unwrap_or_else(|_| unreachable!("built-in kind names are valid"))
}

impl Default for IdentityRules {
    /// Retail defaults: phone, email, login id, member id and WeChat union id are core; member
    /// card, device, cookie, WeChat open id and anonymous id are auxiliary; placeholder phones,
    /// emails and device ids are blocked.
    fn default() -> Self {
        Self::from_file(RulesFile::default())
            .unwrap_or_else(|e| unreachable!("the built-in rules are valid: {e}"))
    }
}

impl Default for RulesFile {
    fn default() -> Self {
        let rule = |strength, normalize, max: u32, blocked: &[&str]| KindRule {
            strength,
            normalize,
            max_per_customer: max,
            blocked: blocked.iter().map(|s| (*s).to_owned()).collect(),
        };
        use Normalizer::*;
        use Strength::*;
        let kinds = [
            (
                IdentifierKind::PHONE,
                rule(
                    Core,
                    Phone,
                    5,
                    &[
                        "13800138000",
                        "13888888888",
                        "13900000000",
                        "13000000000",
                        "18888888888",
                        "18800000000",
                        "13333333333",
                        "15555555555",
                        "13111111111",
                        "13912345678",
                        "18612345678",
                    ],
                ),
            ),
            (
                IdentifierKind::EMAIL,
                rule(
                    Core,
                    Email,
                    5,
                    &[
                        "test@test.com",
                        "test@example.com",
                        "noreply@example.com",
                        "none@none.com",
                        "a@a.com",
                        "123@qq.com",
                    ],
                ),
            ),
            (IdentifierKind::LOGIN_ID, rule(Core, Trim, 3, &[])),
            (IdentifierKind::MEMBER_ID, rule(Core, Trim, 2, &[])),
            (IdentifierKind::WECHAT_UNIONID, rule(Core, Trim, 2, &[])),
            (
                IdentifierKind::MEMBER_CARD,
                rule(Auxiliary, Trim, 5, &["0", "000000"]),
            ),
            (
                IdentifierKind::DEVICE_ID,
                rule(
                    Auxiliary,
                    TrimLower,
                    20,
                    &[
                        "00000000-0000-0000-0000-000000000000",
                        "0000000000000000",
                        "unknown",
                        "null",
                        "undefined",
                        "none",
                        "02:00:00:00:00:00",
                    ],
                ),
            ),
            (IdentifierKind::COOKIE, rule(Auxiliary, Trim, 50, &[])),
            (
                IdentifierKind::WECHAT_OPENID,
                rule(Auxiliary, Trim, 10, &[]),
            ),
            (IdentifierKind::ANONYMOUS_ID, rule(Auxiliary, Trim, 50, &[])),
        ];
        Self {
            version: 1,
            default_region: default_region(),
            kinds: kinds.into_iter().map(|(k, r)| (kind(k), r)).collect(),
        }
    }
}

impl IdentityRules {
    /// Validates a rules file: the region must be known, limits positive, blocked values valid.
    pub fn from_file(file: RulesFile) -> Result<Self, RulesError> {
        if file.kinds.is_empty() {
            return Err(RulesError::NoKinds);
        }
        let region: phonenumber::country::Id = file
            .default_region
            .parse()
            .map_err(|_| RulesError::UnknownRegion(file.default_region.clone()))?;
        let mut blocked = BTreeSet::new();
        for (kind, rule) in &file.kinds {
            if rule.max_per_customer == 0 {
                return Err(RulesError::ZeroLimit(kind.clone()));
            }
            for value in &rule.blocked {
                let id = rule
                    .normalize
                    .normalize(kind, value, region)
                    .map_err(|source| RulesError::BlockedValue {
                        kind: kind.clone(),
                        source,
                    })?;
                blocked.insert(id);
            }
        }
        Ok(Self {
            version: file.version,
            region,
            kinds: file.kinds,
            blocked,
        })
    }

    /// The rule set's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The rule for a kind, if declared.
    pub fn rule(&self, kind: &IdentifierKind) -> Option<&KindRule> {
        self.kinds.get(kind)
    }

    /// The declared kinds.
    pub fn kinds(&self) -> impl Iterator<Item = (&IdentifierKind, &KindRule)> {
        self.kinds.iter()
    }

    /// Whether a kind is core.
    pub fn is_core(&self, kind: &IdentifierKind) -> bool {
        self.rule(kind)
            .is_some_and(|r| r.strength == Strength::Core)
    }

    /// Whether a normalized identifier is blocked.
    pub fn is_blocked(&self, identifier: &Identifier) -> bool {
        self.blocked.contains(identifier)
    }

    /// The same rules with every blocked identifier passed through `f` (to pseudonyms).
    pub fn map_blocked(&self, f: impl Fn(&Identifier) -> Identifier) -> Self {
        Self {
            blocked: self.blocked.iter().map(f).collect(),
            ..self.clone()
        }
    }

    /// Normalizes a raw value of a declared kind.
    pub fn normalize(&self, kind: &str, raw: &str) -> Result<Identifier, IdentifierError> {
        let kind = IdentifierKind::new(kind)?;
        let rule = self
            .rule(&kind)
            .ok_or_else(|| IdentifierError::UnknownKind {
                kind: kind.as_str().to_owned(),
            })?;
        rule.normalize.normalize(&kind, raw, self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_block_placeholders_in_any_format() {
        let rules = IdentityRules::default();
        let placeholder = rules.normalize("phone", "138-0013-8000").unwrap();
        assert!(rules.is_blocked(&placeholder));
        let real = rules.normalize("phone", "139 1234 0001").unwrap();
        assert!(!rules.is_blocked(&real));
        assert!(rules.is_blocked(&rules.normalize("device_id", "UNKNOWN").unwrap()));
        assert!(rules.is_core(&kind("phone")));
        assert!(!rules.is_core(&kind("device_id")));
    }

    #[test]
    fn unknown_kinds_are_refused() {
        let err = IdentityRules::default()
            .normalize("passport", "E123")
            .unwrap_err();
        assert_eq!(
            err,
            IdentifierError::UnknownKind {
                kind: "passport".into()
            }
        );
    }

    #[test]
    fn bad_rules_files_name_the_problem() {
        let file = RulesFile {
            default_region: "XX".into(),
            ..RulesFile::default()
        };
        assert_eq!(
            IdentityRules::from_file(file).unwrap_err(),
            RulesError::UnknownRegion("XX".into())
        );

        let mut file = RulesFile::default();
        file.kinds.get_mut(&kind("email")).unwrap().max_per_customer = 0;
        assert_eq!(
            IdentityRules::from_file(file).unwrap_err().to_string(),
            "kinds.email.max_per_customer must be at least 1"
        );

        let mut file = RulesFile::default();
        file.kinds
            .get_mut(&kind("phone"))
            .unwrap()
            .blocked
            .push("12".into());
        let err = IdentityRules::from_file(file).unwrap_err().to_string();
        assert!(err.starts_with("kinds.phone.blocked:"), "{err}");
    }
}
