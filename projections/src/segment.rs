//! Segment rules: a small language over profile fields, scores, tags and behaviour in time
//! windows, combined with `and`, `or`, `not` and parentheses.
//!
//! ```text
//! tier = "high_value" and stage in ("declining", "churned")
//! count(order_placed, channel = "store") in last 365 days >= 1
//!     and count(order_placed, channel = "web") in last 365 days = 0
//! tag "high_frequency" or (orders >= 3 and not consent.marketing_sms = false)
//! spend in last 90 days >= 50000
//! ```
//!
//! A rule is parsed and checked once ([`Rule::parse`]): an unknown field, event type or channel,
//! a value of the wrong type or a malformed expression is refused with the byte offset of the
//! bad part and a message ([`RuleError`], whose `Display` points at it with a caret). A parsed
//! rule is then evaluated against one customer at a time ([`Rule::matches`]).
//!
//! A rule is bounded before it is read: at most [`MAX_RULE_BYTES`] bytes, [`MAX_DEPTH`] levels of
//! parentheses and `not`, [`MAX_CONDITIONS`] conditions and [`MAX_VALUES`] values in one `in`
//! list. Chains of `and` and `or` are kept flat, so the parser and the evaluator recurse only as
//! deep as the nesting, which the depth bound caps: no rule a client sends can exhaust the stack.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use patron_domain::touchpoint::{Channel, ConsentPurpose};

use crate::profile::Profile;
use crate::value::activity;

/// The event types a rule may count.
pub const EVENT_TYPES: &[&str] = &[
    "page_viewed",
    "screen_viewed",
    "searched",
    "cart_item_added",
    "store_visited",
    "order_placed",
    "order_refunded",
    "membership_desk_contact",
    "call_center_contact",
    "ad_impression",
    "ad_clicked",
    "partner_referral",
    "traits_updated",
    "consent_changed",
    "custom",
];

/// The longest rule read, in bytes.
pub const MAX_RULE_BYTES: usize = 16 * 1024;
/// The deepest nesting of parentheses and `not` in a rule.
pub const MAX_DEPTH: usize = 32;
/// The most conditions (comparisons, `in` tests and tags) in a rule.
pub const MAX_CONDITIONS: usize = 256;
/// The most values in one `in (...)` list.
pub const MAX_VALUES: usize = 1_000;

/// A rule that could not be read, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// Byte offset of the bad part.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = self.at.min(self.rule.len());
        while !self.rule.is_char_boundary(at) {
            at -= 1;
        }
        let column = self.rule[..at].chars().count();
        write!(
            f,
            "{} (at character {})\n  {}\n  {}^",
            self.message,
            column + 1,
            self.rule,
            " ".repeat(column)
        )
    }
}

impl std::error::Error for RuleError {}

/// What a customer is judged on: the profile, and the scores and tags of the last scoring run.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// The lifecycle stage.
    pub stage: Option<&'a str>,
    /// The value tier.
    pub tier: Option<&'a str>,
    /// The named RFM segment.
    pub rfm_segment: Option<&'a str>,
    /// RFM scores.
    pub rfm: Option<(u8, u8, u8)>,
    /// Tags.
    pub tags: &'a BTreeSet<String>,
    /// The currency spend and revenue are counted in.
    pub currency: &'a str,
    /// The moment judged as of (windows end on its day).
    pub as_of: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Bool,
}

impl Value {
    fn kind(&self) -> Kind {
        match self {
            Self::Number(_) => Kind::Number,
            Self::Text(_) => Kind::Text,
            Self::Bool(_) => Kind::Bool,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// What a comparison reads from a customer.
#[derive(Clone, Debug, PartialEq)]
enum Term {
    Stage,
    Tier,
    RfmSegment,
    R,
    F,
    M,
    Orders,
    Touchpoints,
    Revenue,
    AverageOrderValue,
    DaysSinceLastOrder,
    DaysSinceLastSeen,
    FavouriteCategory,
    PreferredChannel,
    PromotionSensitivity,
    /// A clear trait: `city`, `province`, `gender`.
    Trait(&'static str),
    Channel(String),
    Consent(ConsentPurpose),
    Count {
        key: String,
        days: i64,
    },
    Spend {
        days: i64,
    },
}

impl Term {
    fn kind(&self) -> Kind {
        match self {
            Self::Stage
            | Self::Tier
            | Self::RfmSegment
            | Self::FavouriteCategory
            | Self::PreferredChannel
            | Self::Trait(_) => Kind::Text,
            Self::Consent(_) => Kind::Bool,
            _ => Kind::Number,
        }
    }

    /// The value of the term for a subject; `None` when the customer has none (no orders for
    /// an average, no scores yet): every comparison with it is false.
    fn value(&self, s: &Subject<'_>) -> Option<Value> {
        let p = s.profile;
        let number = |n: f64| Some(Value::Number(n));
        let text = |t: Option<&str>| t.map(|t| Value::Text(t.to_owned()));
        let days_since = |at: Option<DateTime<Utc>>| {
            at.map(|at| Value::Number((s.as_of - at).num_days() as f64))
        };
        match self {
            Self::Stage => text(s.stage),
            Self::Tier => text(s.tier),
            Self::RfmSegment => text(s.rfm_segment),
            Self::R => s.rfm.map(|r| Value::Number(f64::from(r.0))),
            Self::F => s.rfm.map(|r| Value::Number(f64::from(r.1))),
            Self::M => s.rfm.map(|r| Value::Number(f64::from(r.2))),
            Self::Orders => number(p.orders as f64),
            Self::Touchpoints => number(p.touchpoints as f64),
            Self::Revenue => number(p.revenue.get(s.currency).copied().unwrap_or(0) as f64),
            Self::AverageOrderValue => p
                .average_order_value(s.currency)
                .map(|v| Value::Number(v as f64)),
            Self::DaysSinceLastOrder => days_since(p.last_order_at),
            Self::DaysSinceLastSeen => days_since(p.last_seen),
            Self::FavouriteCategory => text(p.favourite_category()),
            Self::PreferredChannel => text(p.preferred_channel()),
            Self::PromotionSensitivity => p.promotion_sensitivity().map(Value::Number),
            Self::Trait(name) => text(p.traits.get(*name).map(|t| t.value.as_str())),
            Self::Channel(c) => number(p.by_channel.get(c).copied().unwrap_or(0) as f64),
            Self::Consent(purpose) => Some(Value::Bool(
                p.consent.get(purpose).is_some_and(|c| c.granted),
            )),
            Self::Count { key, days } => number(p.count_in_last(key, *days, s.as_of) as f64),
            Self::Spend { days } => number(
                activity(p, s.currency, s.as_of, *days).map_or(0, |a| a.monetary_minor) as f64,
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    /// Every one holds (two or more).
    And(Vec<Expr>),
    /// Any one holds (two or more).
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare(Term, Op, Value),
    In(Term, Vec<Value>),
    Tag(String),
}

impl Expr {
    fn eval(&self, s: &Subject<'_>) -> bool {
        match self {
            Self::And(all) => all.iter().all(|e| e.eval(s)),
            Self::Or(any) => any.iter().any(|e| e.eval(s)),
            Self::Not(e) => !e.eval(s),
            Self::Tag(tag) => s.tags.contains(tag),
            Self::In(term, values) => term.value(s).is_some_and(|v| values.contains(&v)),
            Self::Compare(term, op, value) => {
                term.value(s).is_some_and(|v| compare(&v, *op, value))
            }
        }
    }
}

fn compare(left: &Value, op: Op, right: &Value) -> bool {
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ordering == Equal,
        Op::Ne => ordering != Equal,
        Op::Lt => ordering == Less,
        Op::Le => ordering != Greater,
        Op::Gt => ordering == Greater,
        Op::Ge => ordering != Less,
    }
}

/// A checked segment rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    text: String,
    expr: Expr,
}

impl Rule {
    /// Reads and checks a rule.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        Self::parse_with(text, 0)
    }

    /// Reads a rule as it is judged: a saved rule that was within the bounds, wrapped by
    /// Patron in one more level and condition (`(rule) and consent.marketing_email = true`).
    pub fn parse_judged(text: &str) -> Result<Self, RuleError> {
        Self::parse_with(text, 1)
    }

    /// Reads a rule allowing `slack` levels and conditions (and 256 bytes per level) past the
    /// bounds.
    fn parse_with(text: &str, slack: usize) -> Result<Self, RuleError> {
        let max_bytes = MAX_RULE_BYTES + 256 * slack;
        if text.len() > max_bytes {
            let mut at = max_bytes;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return Err(RuleError {
                rule: text.to_owned(),
                at,
                message: format!(
                    "a rule is at most {max_bytes} bytes; this one is {}",
                    text.len()
                ),
            });
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            text,
            tokens,
            next: 0,
            depth: 0,
            conditions: 0,
            max_depth: MAX_DEPTH + slack,
            max_conditions: MAX_CONDITIONS + slack,
        };
        let expr = parser.or()?;
        if let Some(token) = parser.peek() {
            return Err(parser.error_at(token.at, format!("unexpected {}", token.what())));
        }
        Ok(Self {
            text: text.to_owned(),
            expr,
        })
    }

    /// The rule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the customer matches.
    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        self.expr.eval(subject)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    at: usize,
}

impl Token {
    fn what(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Num(n) => format!("{n}"),
            Tok::Sym(s) => format!("`{s}`"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, RuleError> {
    let err = |at: usize, message: String| RuleError {
        rule: text.to_owned(),
        at,
        message,
    };
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let at = i;
        if c == b'"' {
            let end = text[i + 1..]
                .find('"')
                .ok_or_else(|| err(at, "a text value is not closed with \"".into()))?;
            tokens.push(Token {
                tok: Tok::Str(text[i + 1..i + 1 + end].to_owned()),
                at,
            });
            i += end + 2;
        } else if c.is_ascii_digit()
            || (c == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let mut j = i + 1;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                j += 1;
            }
            let number = text[i..j]
                .parse()
                .map_err(|_| err(at, format!("`{}` is not a number", &text[i..j])))?;
            tokens.push(Token {
                tok: Tok::Num(number),
                at,
            });
            i = j;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i + 1;
            while j < bytes.len()
                && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'.'))
            {
                j += 1;
            }
            tokens.push(Token {
                tok: Tok::Word(text[i..j].to_ascii_lowercase()),
                at,
            });
            i = j;
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let sym = match two {
                ">=" | "<=" | "!=" => Some(two),
                _ => None,
            };
            let one = text[i..]
                .chars()
                .next()
                .map_or("", |c| &text[i..i + c.len_utf8()]);
            let sym: &'static str = match sym.unwrap_or(one) {
                ">=" => ">=",
                "<=" => "<=",
                "!=" => "!=",
                "=" => "=",
                "<" => "<",
                ">" => ">",
                "(" => "(",
                ")" => ")",
                "," => ",",
                other if !other.is_ascii() => {
                    return Err(err(
                        at,
                        format!(
                            "unexpected character `{other}`: text values are quoted, \
                             for example city = \"上海\""
                        ),
                    ))
                }
                other => return Err(err(at, format!("unexpected character `{other}`"))),
            };
            i += sym.len();
            tokens.push(Token {
                tok: Tok::Sym(sym),
                at,
            });
        }
    }
    Ok(tokens)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    next: usize,
    /// Parentheses and `not`s open around the next token.
    depth: usize,
    /// Conditions read so far.
    conditions: usize,
    /// The bounds on `depth` and `conditions`.
    max_depth: usize,
    max_conditions: usize,
}

impl Parser<'_> {
    fn error_at(&self, at: usize, message: String) -> RuleError {
        RuleError {
            rule: self.text.to_owned(),
            at,
            message,
        }
    }

    fn end(&self) -> usize {
        self.text.len()
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn take(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Word(w), .. }) if w == word)
    }

    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Sym(s), .. }) if *s == sym)
    }

    fn expect_word(&mut self, word: &str) -> Result<usize, RuleError> {
        match self.take() {
            Some(Token {
                tok: Tok::Word(w),
                at,
            }) if w == word => Ok(at),
            Some(t) => Err(self.error_at(t.at, format!("expected `{word}`, found {}", t.what()))),
            None => Err(self.error_at(self.end(), format!("expected `{word}` at the end"))),
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<usize, RuleError> {
        match self.take() {
            Some(Token {
                tok: Tok::Sym(s),
                at,
            }) if s == sym => Ok(at),
            Some(t) => Err(self.error_at(t.at, format!("expected `{sym}`, found {}", t.what()))),
            None => Err(self.error_at(self.end(), format!("expected `{sym}` at the end"))),
        }
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut any = vec![self.and()?];
        while self.is_word("or") {
            self.next += 1;
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.swap_remove(0)
        } else {
            Expr::Or(any)
        })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut all = vec![self.not()?];
        while self.is_word("and") {
            self.next += 1;
            all.push(self.not()?);
        }
        Ok(if all.len() == 1 {
            all.swap_remove(0)
        } else {
            Expr::And(all)
        })
    }

    /// Enters one level of nesting at `at`, refusing past [`MAX_DEPTH`].
    fn deeper(&mut self, at: usize) -> Result<(), RuleError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            let max = self.max_depth;
            return Err(self.error_at(
                at,
                format!("a rule nests parentheses and `not` at most {max} deep"),
            ));
        }
        Ok(())
    }

    fn not(&mut self) -> Result<Expr, RuleError> {
        let at = self.peek().map_or(self.end(), |t| t.at);
        if self.is_word("not") {
            self.next += 1;
            self.deeper(at)?;
            let inner = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        if self.is_sym("(") {
            self.next += 1;
            self.deeper(at)?;
            let inner = self.or()?;
            self.expect_sym(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.conditions += 1;
        if self.conditions > self.max_conditions {
            let max = self.max_conditions;
            return Err(self.error_at(at, format!("a rule has at most {max} conditions")));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, RuleError> {
        let Some(first) = self.take() else {
            return Err(self.error_at(self.end(), "a condition is missing at the end".into()));
        };
        let at = first.at;
        let Tok::Word(word) = first.tok.clone() else {
            return Err(self.error_at(
                at,
                format!(
                    "expected a field, `tag`, `count` or `spend`, found {}",
                    first.what()
                ),
            ));
        };
        if word == "tag" {
            return match self.take() {
                Some(Token {
                    tok: Tok::Str(tag), ..
                }) => Ok(Expr::Tag(tag)),
                Some(t) => Err(self.error_at(
                    t.at,
                    format!("`tag` takes a quoted tag, found {}", t.what()),
                )),
                None => Err(self.error_at(self.end(), "`tag` takes a quoted tag".into())),
            };
        }
        let term = self.term(&word, at)?;
        if self.is_word("in") {
            self.next += 1;
            self.expect_sym("(")?;
            let mut values = vec![self.value(&term)?];
            while self.is_sym(",") {
                let at = self.peek().map_or(self.end(), |t| t.at);
                self.next += 1;
                if values.len() == MAX_VALUES {
                    return Err(self.error_at(
                        at,
                        format!("an `in` list holds at most {MAX_VALUES} values"),
                    ));
                }
                values.push(self.value(&term)?);
            }
            self.expect_sym(")")?;
            return Ok(Expr::In(term, values));
        }
        let op = match self.take() {
            Some(Token {
                tok: Tok::Sym(s),
                at,
            }) => match s {
                "=" => Op::Eq,
                "!=" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => {
                    return Err(self.error_at(
                        at,
                        format!(
                            "expected a comparison (=, !=, <, <=, >, >=) or `in`, found `{other}`"
                        ),
                    ))
                }
            },
            Some(t) => {
                return Err(self.error_at(
                    t.at,
                    format!(
                        "expected a comparison (=, !=, <, <=, >, >=) or `in`, found {}",
                        t.what()
                    ),
                ))
            }
            None => return Err(self.error_at(self.end(), format!("`{word}` needs a comparison"))),
        };
        if term.kind() != Kind::Number && !matches!(op, Op::Eq | Op::Ne) {
            return Err(self.error_at(
                at,
                format!("`{word}` is not a number: compare it with = or !="),
            ));
        }
        let value = self.value(&term)?;
        Ok(Expr::Compare(term, op, value))
    }

    fn value(&mut self, term: &Term) -> Result<Value, RuleError> {
        let Some(token) = self.take() else {
            return Err(self.error_at(self.end(), "a value is missing at the end".into()));
        };
        let value = match token.tok {
            Tok::Num(n) => Value::Number(n),
            Tok::Str(ref s) => Value::Text(s.clone()),
            Tok::Word(ref w) if w == "true" => Value::Bool(true),
            Tok::Word(ref w) if w == "false" => Value::Bool(false),
            _ => {
                return Err(self.error_at(
                    token.at,
                    format!("expected a value, found {}", token.what()),
                ))
            }
        };
        let expected = term.kind();
        if value.kind() != expected {
            let name = match expected {
                Kind::Number => "a number",
                Kind::Text => "a quoted text",
                Kind::Bool => "true or false",
            };
            return Err(self.error_at(
                token.at,
                format!("expected {name} here, found {}", token.what()),
            ));
        }
        Ok(value)
    }

    /// `in last N days`.
    fn window(&mut self) -> Result<i64, RuleError> {
        self.expect_word("in")?;
        self.expect_word("last")?;
        let days = match self.take() {
            Some(Token {
                tok: Tok::Num(n),
                at,
            }) => {
                if n < 1.0 || n.fract() != 0.0 || n > 36_500.0 {
                    return Err(self.error_at(
                        at,
                        format!("a window is a whole number of days from 1 to 36500, not {n}"),
                    ));
                }
                n as i64
            }
            Some(t) => {
                return Err(self.error_at(
                    t.at,
                    format!("expected a number of days, found {}", t.what()),
                ))
            }
            None => {
                return Err(self.error_at(self.end(), "expected a number of days at the end".into()))
            }
        };
        if self.is_word("days") || self.is_word("day") {
            self.next += 1;
        } else {
            let at = self.peek().map_or(self.end(), |t| t.at);
            return Err(self.error_at(at, "expected `days`".into()));
        }
        Ok(days)
    }

    fn term(&mut self, word: &str, at: usize) -> Result<Term, RuleError> {
        Ok(match word {
            "stage" => Term::Stage,
            "tier" => Term::Tier,
            "rfm_segment" => Term::RfmSegment,
            "r" => Term::R,
            "f" => Term::F,
            "m" => Term::M,
            "orders" => Term::Orders,
            "touchpoints" => Term::Touchpoints,
            "revenue" => Term::Revenue,
            "average_order_value" => Term::AverageOrderValue,
            "days_since_last_order" => Term::DaysSinceLastOrder,
            "days_since_last_seen" => Term::DaysSinceLastSeen,
            "favourite_category" => Term::FavouriteCategory,
            "preferred_channel" => Term::PreferredChannel,
            "promotion_sensitivity" => Term::PromotionSensitivity,
            "city" => Term::Trait("city"),
            "province" => Term::Trait("province"),
            "gender" => Term::Trait("gender"),
            "spend" => Term::Spend {
                days: self.window()?,
            },
            "count" => {
                self.expect_sym("(")?;
                let (event_type, type_at) = match self.take() {
                    Some(Token {
                        tok: Tok::Word(w),
                        at,
                    }) => (w, at),
                    Some(t) => {
                        return Err(self
                            .error_at(t.at, format!("expected an event type, found {}", t.what())))
                    }
                    None => {
                        return Err(
                            self.error_at(self.end(), "expected an event type at the end".into())
                        )
                    }
                };
                if !EVENT_TYPES.contains(&event_type.as_str()) {
                    return Err(self.error_at(
                        type_at,
                        format!(
                            "unknown event type `{event_type}`; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
                let mut key = event_type;
                if self.is_sym(",") {
                    self.next += 1;
                    self.expect_word("channel")?;
                    self.expect_sym("=")?;
                    let channel = self.channel()?;
                    key = format!("{key}@{channel}");
                }
                self.expect_sym(")")?;
                Term::Count {
                    key,
                    days: self.window()?,
                }
            }
            _ => {
                if let Some(channel) = word.strip_prefix("channel.") {
                    check_channel(channel).map_err(|m| self.error_at(at, m))?;
                    Term::Channel(channel.to_owned())
                } else if let Some(purpose) = word.strip_prefix("consent.") {
                    let purpose: ConsentPurpose = serde_json::from_value(serde_json::Value::String(purpose.to_owned()))
                        .map_err(|_| self.error_at(at, format!("unknown consent purpose `{purpose}`; known: marketing_sms, marketing_email, push, profiling")))?;
                    Term::Consent(purpose)
                } else {
                    return Err(self.error_at(at, format!(
                        "unknown field `{word}`; fields: stage, tier, rfm_segment, r, f, m, orders, touchpoints, revenue, \
                         average_order_value, days_since_last_order, days_since_last_seen, favourite_category, \
                         preferred_channel, promotion_sensitivity, city, province, gender, channel.<channel>, consent.<purpose>, \
                         count(...) in last N days, spend in last N days, tag \"...\""
                    )));
                }
            }
        })
    }

    fn channel(&mut self) -> Result<String, RuleError> {
        match self.take() {
            Some(Token {
                tok: Tok::Str(c),
                at,
            }) => {
                check_channel(&c).map_err(|m| self.error_at(at, m))?;
                Ok(c)
            }
            Some(t) => Err(self.error_at(
                t.at,
                format!("expected a quoted channel, found {}", t.what()),
            )),
            None => Err(self.error_at(self.end(), "expected a quoted channel at the end".into())),
        }
    }
}

fn check_channel(channel: &str) -> Result<(), String> {
    serde_json::from_value::<Channel>(serde_json::Value::String(channel.to_owned()))
        .map(|_| ())
        .map_err(|_| format!("unknown channel `{channel}`; known: web, app, mini_program, store, membership_desk, call_center, ads, partner, messaging, other"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::OrderEntry;
    use chrono::Duration;

    fn at(day: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .to_utc()
            + Duration::days(day)
    }

    /// Bought in store on days 0 and 40 (3,000 and 5,000 yuan), viewed the app on day 45.
    fn shopper() -> Profile {
        let mut p = Profile {
            orders: 2,
            touchpoints: 3,
            last_order_at: Some(at(40)),
            last_seen: Some(at(45)),
            ..Profile::default()
        };
        for (day, total) in [(0, 300_000), (40, 500_000)] {
            p.order_log.push(OrderEntry {
                at: at(day),
                currency: "CNY".into(),
                total_minor: total,
            });
            p.daily
                .entry("order_placed@store".into())
                .or_default()
                .push((crate::profile::day_of(at(day)), 1));
        }
        p.daily
            .entry("screen_viewed@app".into())
            .or_default()
            .push((crate::profile::day_of(at(45)), 1));
        p.revenue.insert("CNY".into(), 800_000);
        p.by_channel.insert("store".into(), 2);
        p.by_channel.insert("app".into(), 1);
        p
    }

    fn subject<'a>(p: &'a Profile, tags: &'a BTreeSet<String>) -> Subject<'a> {
        Subject {
            profile: p,
            stage: Some("growth"),
            tier: Some("potential"),
            rfm_segment: Some("loyal"),
            rfm: Some((4, 3, 5)),
            tags,
            currency: "CNY",
            as_of: at(50),
        }
    }

    fn check(rule: &str) -> bool {
        let p = shopper();
        let tags: BTreeSet<String> = ["high_frequency".to_owned()].into();
        Rule::parse(rule)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&subject(&p, &tags))
    }

    #[test]
    fn rules_read_as_a_marketer_means_them() {
        assert!(check(
            "tier = \"potential\" and stage in (\"growth\", \"mature\")"
        ));
        assert!(!check("tier = \"high_value\""));
        assert!(check(
            "orders >= 2 and revenue > 700000 and average_order_value = 400000"
        ));
        // In store but never online.
        assert!(check(
            "channel.store >= 1 and count(order_placed, channel = \"web\") in last 365 days = 0"
        ));
        // Windows end on the day judged: day 40's order is in the last 11 days, not the last 10.
        assert!(check("count(order_placed) in last 11 days = 1"));
        assert!(check("count(order_placed) in last 10 days = 0"));
        assert!(check(
            "spend in last 30 days = 500000 and spend in last 365 days = 800000"
        ));
        assert!(check(
            "count(screen_viewed, channel = \"app\") in last 7 days >= 1"
        ));
        assert!(check(
            "tag \"high_frequency\" and not tag \"promotion_sensitive\""
        ));
        assert!(check("(r >= 4 or f >= 4) and m = 5"));
        assert!(check(
            "days_since_last_order = 10 and days_since_last_seen < 7"
        ));
        assert!(check("not consent.marketing_sms = true"));
        assert!(check("rfm_segment != \"lost\" OR orders = 0"));
        assert!(check("promotion_sensitivity = 0"));
        // A value the customer does not have makes any comparison false.
        let nobody = Profile::default();
        let tags = BTreeSet::new();
        let rule = Rule::parse("average_order_value >= 0 or average_order_value < 0").unwrap();
        assert!(!rule.matches(&subject(&nobody, &tags)));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // false and false or true
        assert!(check(
            "orders = 0 and tier = \"basic\" or stage = \"growth\""
        ));
        // false and (false or true)
        assert!(!check(
            "orders = 0 and (tier = \"basic\" or stage = \"growth\")"
        ));
    }

    fn error(rule: &str) -> RuleError {
        Rule::parse(rule).expect_err(rule)
    }

    /// A profile whose only trait is its city.
    fn living_in(city: &str) -> Profile {
        let mut profile = Profile::default();
        profile.traits.insert(
            "city".into(),
            crate::profile::TraitValue {
                value: city.into(),
                at: chrono::Utc::now(),
            },
        );
        profile
    }

    /// A customer not scored yet, judged now.
    fn unscored<'a>(profile: &'a Profile, tags: &'a BTreeSet<String>) -> Subject<'a> {
        Subject {
            profile,
            stage: None,
            tier: None,
            rfm_segment: None,
            rfm: None,
            tags,
            currency: "CNY",
            as_of: chrono::Utc::now(),
        }
    }

    #[test]
    fn clear_traits_are_text_fields() {
        let profile = living_in("Shanghai");
        let tags = BTreeSet::new();
        let subject = unscored(&profile, &tags);
        assert!(Rule::parse("city = \"Shanghai\"")
            .unwrap()
            .matches(&subject));
        assert!(!Rule::parse("city = \"Beijing\"").unwrap().matches(&subject));
        assert!(!Rule::parse("province = \"Zhejiang\"")
            .unwrap()
            .matches(&subject));
        assert!(Rule::parse("city = 3").is_err(), "a city is text");
    }

    #[test]
    fn a_bad_rule_is_refused_where_it_is_bad() {
        let e = error("tier = \"high_value\" and orderz >= 3");
        assert_eq!(&e.rule[e.at..e.at + 6], "orderz");
        assert!(e.message.starts_with("unknown field `orderz`"), "{e}");
        assert!(
            e.to_string().ends_with(&format!("\n  {}^", " ".repeat(24))),
            "{e}"
        );

        let e = error("orders >= \"three\"");
        assert_eq!(e.at, 10);
        assert!(e.message.contains("expected a number"), "{e}");

        let e = error("stage > \"growth\"");
        assert!(e.message.contains("compare it with = or !="), "{e}");

        let e = error("count(order_plcaed) in last 30 days >= 1");
        assert_eq!(e.at, 6);
        assert!(e.message.starts_with("unknown event type"), "{e}");

        let e = error("count(order_placed, channel = \"tv\") in last 30 days >= 1");
        assert!(e.message.starts_with("unknown channel `tv`"), "{e}");

        let e = error("spend in last 0 days > 1");
        assert!(e.message.contains("whole number of days"), "{e}");

        let e = error("(orders > 1 and tier = \"basic\"");
        assert!(e.message.contains("expected `)` at the end"), "{e}");

        let e = error("orders > 1 tier = \"basic\"");
        assert_eq!(&e.rule[e.at..e.at + 4], "tier");

        let e = error("orders > 1 and");
        assert_eq!(e.at, e.rule.len());

        let e = error("consent.sms = true");
        assert!(e.message.contains("unknown consent purpose"), "{e}");

        let e = error("tier = \"basic");
        assert!(e.message.contains("not closed"), "{e}");

        let e = error("orders ~ 3");
        assert!(e.message.contains("unexpected character `~`"), "{e}");
    }

    #[test]
    fn a_rule_at_the_bounds_still_reads_once_restricted_to_a_consent() {
        // As deep and as long as a rule may be: the consent wrapper adds a level and a
        // condition, which a judged rule may have past the bounds, and only one.
        let deep = format!(
            "{}orders > 1{}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        let long = vec!["orders > 1"; MAX_CONDITIONS].join(" or ");
        for rule in [deep, long] {
            assert!(Rule::parse(&rule).is_ok());
            let wrapped = format!("({rule}) and consent.marketing_email = true");
            assert!(Rule::parse(&wrapped).is_err(), "past the bounds for a user");
            assert!(Rule::parse_judged(&wrapped).is_ok(), "{wrapped:.80}");
            let twice = format!("({wrapped}) and consent.marketing_email = true");
            assert!(Rule::parse_judged(&twice).is_err());
        }
    }

    #[test]
    fn deep_and_long_rules_are_refused_naming_the_limit() {
        // 10,000 nested parentheses (20 KB) and a flat chain of 200,000 `or` terms aborted the
        // process; within the byte bound, nesting past the depth bound is named.
        let deep = format!("{}orders > 1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(error(&deep).message.contains("at most 16384 bytes"));
        let deep = format!(
            "{}orders > 1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = error(&deep);
        assert!(e.message.contains("at most 32 deep"), "{e}");
        assert_eq!(e.at, MAX_DEPTH, "the parenthesis past the bound");
        let nots = format!("{}orders > 1", "not ".repeat(MAX_DEPTH + 1));
        assert!(error(&nots).message.contains("at most 32 deep"));
        let fine = format!(
            "{}orders > 1{}",
            "(".repeat(MAX_DEPTH),
            ")".repeat(MAX_DEPTH)
        );
        assert!(check(&fine));
        let nots = format!("{}orders > 1", "not ".repeat(MAX_DEPTH));
        assert!(check(&nots), "an even number of nots");

        let chain = vec!["orders = 9"; 200_000].join(" or ");
        assert!(error(&chain).message.contains("bytes"));
        let chain = |n: usize| {
            let mut terms = vec!["orders = 9"; n - 1];
            terms.push("orders = 2");
            terms.join(" or ")
        };
        assert!(check(&chain(MAX_CONDITIONS)), "the last of 256 terms holds");
        let e = error(&chain(MAX_CONDITIONS + 1));
        assert!(e.message.contains("at most 256 conditions"), "{e}");
        assert_eq!(
            &e.rule[e.at..],
            "orders = 2",
            "the condition past the bound"
        );

        let values = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!("orders in ({})", list.join(","))
        };
        assert!(check(&values(MAX_VALUES)));
        assert!(error(&values(MAX_VALUES + 1))
            .message
            .contains("at most 1000 values"));
    }

    #[test]
    fn chinese_values_work_quoted_and_are_explained_unquoted() {
        let profile = living_in("上海");
        let tags = BTreeSet::new();
        let subject = unscored(&profile, &tags);
        assert!(Rule::parse("city = \"上海\"").unwrap().matches(&subject));
        assert!(
            Rule::parse("city in (\"北京\", \"上海\") and not city = \"杭州\"")
                .unwrap()
                .matches(&subject)
        );

        let e = error("city = 上海");
        assert_eq!(e.at, 7);
        assert!(e.message.contains("unexpected character `上`"), "{e}");
        assert!(e.message.contains("quoted"), "{e}");
        // The caret sits under the character, counted in characters.
        assert!(
            e.to_string().ends_with(&format!("\n  {}^", " ".repeat(7))),
            "{e}"
        );
        let e = error("城市 = \"上海\"");
        assert_eq!(e.at, 0);
        let e = error("orders > 1 and tag \"新客\" 上");
        assert_eq!(&e.rule[e.at..], "上");
        // An offset inside a character (as an error built elsewhere might hold) still displays.
        let odd = RuleError {
            rule: "上海".into(),
            at: 1,
            message: "x".into(),
        };
        assert!(odd.to_string().ends_with("\n  ^"));
    }
}
