//! The event vocabulary of touchpoints: what a customer did, where, and who they said they were.
//!
//! A [`RawTouchpoint`] is a record as a channel sends it; [`RawTouchpoint::validate`] turns it into
//! a typed [`Touchpoint`] (identifiers normalized, times in UTC, amounts checked) or a
//! [`Rejection`] that names the field at fault.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::event_log::EventId;
use crate::identifier::Identifier;
use crate::identity::IdentityRules;

/// How far in the future an `occurred_at` may lie (clock skew of the sending system).
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::hours(1);

/// The largest amount of money one line, order or refund may carry, in minor units: 10^13,
/// that is 100 billion in a currency of two decimals. Sums over a customer's orders are kept in
/// `i64` and cannot pass `i64::MAX` before some 922,000 orders of this size (they saturate).
pub const MAX_AMOUNT_MINOR: i64 = 10_000_000_000_000;

/// The largest quantity of one line.
pub const MAX_QUANTITY: u32 = 1_000_000;

/// The earliest `occurred_at` accepted unless configured otherwise: 1990-01-01T00:00:00Z, in
/// seconds since 1970-01-01 UTC.
pub const DEFAULT_EARLIEST_TIME: i64 = 631_152_000;

/// The times a touchpoint's `occurred_at` may take: from `earliest` to `now` plus
/// [`MAX_FUTURE_SKEW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBounds {
    /// The earliest time accepted.
    pub earliest: DateTime<Utc>,
    /// The time of validation.
    pub now: DateTime<Utc>,
}

impl TimeBounds {
    /// The bounds at `now`, from [`DEFAULT_EARLIEST_TIME`].
    pub fn at(now: DateTime<Utc>) -> Self {
        Self {
            earliest: default_earliest_time(),
            now,
        }
    }
}

/// [`DEFAULT_EARLIEST_TIME`] as a time.
pub fn default_earliest_time() -> DateTime<Utc> {
    DateTime::from_timestamp(DEFAULT_EARLIEST_TIME, 0).unwrap_or_default()
}

/// The channel a touchpoint came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// A website.
    Web,
    /// A mobile app.
    App,
    /// A mini-program (WeChat, Alipay, ...).
    MiniProgram,
    /// A physical store: visits and POS purchases.
    Store,
    /// The membership desk.
    MembershipDesk,
    /// The call center.
    CallCenter,
    /// An advertising platform.
    Ads,
    /// A partner (referrals, co-marketing).
    Partner,
    /// Email or SMS campaigns.
    Messaging,
    /// Anything else.
    Other,
}

impl Channel {
    /// The channel's name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::App => "app",
            Self::MiniProgram => "mini_program",
            Self::Store => "store",
            Self::MembershipDesk => "membership_desk",
            Self::CallCenter => "call_center",
            Self::Ads => "ads",
            Self::Partner => "partner",
            Self::Messaging => "messaging",
            Self::Other => "other",
        }
    }
}

/// An amount of money in minor units (fen, cents) of a currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Minor units, never negative.
    pub minor: i64,
    /// ISO 4217 code, for example `CNY`.
    pub currency: String,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    /// The product's stock-keeping unit.
    pub sku: String,
    /// The product's category.
    #[serde(default)]
    pub category: Option<String>,
    /// How many, at least 1.
    pub quantity: u32,
    /// Price of one unit before discount, in minor units.
    pub unit_price_minor: i64,
    /// Discount on the whole line, in minor units.
    #[serde(default)]
    pub discount_minor: i64,
}

impl LineItem {
    /// The line's amount after discount, exactly: quantity times unit price less discount.
    pub fn exact_amount_minor(&self) -> i128 {
        i128::from(self.quantity) * i128::from(self.unit_price_minor)
            - i128::from(self.discount_minor)
    }

    /// The line's amount after discount, in minor units, saturating at the bounds of `i64` (a
    /// validated line's amount is 0 to [`MAX_AMOUNT_MINOR`]).
    pub fn amount_minor(&self) -> i64 {
        let exact = self.exact_amount_minor();
        i64::try_from(exact).unwrap_or(if exact < 0 { i64::MIN } else { i64::MAX })
    }
}

/// An order: its id, lines and total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order's id in the source system.
    pub order_id: String,
    /// ISO 4217 currency of every amount.
    pub currency: String,
    /// The lines.
    pub items: Vec<LineItem>,
    /// The amount paid, in minor units: the sum of the lines after discount.
    pub total_minor: i64,
}

/// A refund of (part of) an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The refunded order.
    pub order_id: String,
    /// The amount refunded.
    pub amount: Money,
}

/// The purposes a customer consents to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentPurpose {
    /// Marketing text messages.
    MarketingSms,
    /// Marketing email.
    MarketingEmail,
    /// Push notifications.
    Push,
    /// Building a profile from behaviour.
    Profiling,
}

/// The traits that identify no one on their own, kept readable in stored events so that
/// profiles and segments can use them (`city = "Shanghai"`); every other trait is sealed.
pub const CLEAR_TRAITS: &[&str] = &["gender", "city", "province"];

/// Descriptive traits of a person.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traits {
    /// Full name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Gender as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// Date of birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<NaiveDate>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Province or state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub province: Option<String>,
    /// Any other trait.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", flatten)]
    pub other: BTreeMap<String, Value>,
}

impl Traits {
    /// Splits the traits into the clear ones ([`CLEAR_TRAITS`]) and the personal rest.
    pub fn split_clear(&self) -> (Traits, Traits) {
        let clear = Traits {
            gender: self.gender.clone(),
            city: self.city.clone(),
            province: self.province.clone(),
            ..Traits::default()
        };
        let personal = Traits {
            name: self.name.clone(),
            birthday: self.birthday,
            other: self.other.clone(),
            ..Traits::default()
        };
        (clear, personal)
    }

    /// Whether no trait is given.
    pub fn is_empty(&self) -> bool {
        self == &Traits::default()
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// A web page was viewed.
    PageViewed {
        /// The page.
        url: String,
    },
    /// An app or mini-program screen was viewed.
    ScreenViewed {
        /// The screen.
        screen: String,
    },
    /// A search was made.
    Searched {
        /// What was searched for.
        query: String,
    },
    /// A product was added to the cart.
    CartItemAdded {
        /// The product line.
        item: LineItem,
    },
    /// A store was visited.
    StoreVisited {
        /// The store.
        store_id: String,
    },
    /// An order was placed (online or at a POS).
    OrderPlaced(Order),
    /// An order was refunded.
    OrderRefunded(Refund),
    /// The membership desk was contacted.
    MembershipDeskContact {
        /// What about.
        #[serde(default)]
        topic: Option<String>,
    },
    /// The call center was contacted.
    CallCenterContact {
        /// What about.
        #[serde(default)]
        topic: Option<String>,
    },
    /// An ad was shown.
    AdImpression {
        /// The campaign.
        campaign: String,
    },
    /// An ad was clicked.
    AdClicked {
        /// The campaign.
        campaign: String,
    },
    /// A partner referred the customer.
    PartnerReferral {
        /// The partner.
        partner: String,
    },
    /// Traits were given or changed.
    TraitsUpdated(Traits),
    /// Consent for a purpose was given or withdrawn.
    ConsentChanged {
        /// The purpose.
        purpose: ConsentPurpose,
        /// Given (`true`) or withdrawn.
        granted: bool,
    },
    /// Any other named event (for example a tracking SDK's custom event).
    Custom {
        /// The event's name.
        name: String,
    },
}

impl Action {
    /// The event type this action is stored under.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::PageViewed { .. } => "page_viewed",
            Self::ScreenViewed { .. } => "screen_viewed",
            Self::Searched { .. } => "searched",
            Self::CartItemAdded { .. } => "cart_item_added",
            Self::StoreVisited { .. } => "store_visited",
            Self::OrderPlaced(_) => "order_placed",
            Self::OrderRefunded(_) => "order_refunded",
            Self::MembershipDeskContact { .. } => "membership_desk_contact",
            Self::CallCenterContact { .. } => "call_center_contact",
            Self::AdImpression { .. } => "ad_impression",
            Self::AdClicked { .. } => "ad_clicked",
            Self::PartnerReferral { .. } => "partner_referral",
            Self::TraitsUpdated(_) => "traits_updated",
            Self::ConsentChanged { .. } => "consent_changed",
            Self::Custom { .. } => "custom",
        }
    }
}

/// A validated touchpoint: ready to resolve and store.
#[derive(Clone, Debug, PartialEq)]
pub struct Touchpoint {
    /// The idempotency key.
    pub event_id: EventId,
    /// The channel it came through.
    pub channel: Channel,
    /// The system that sent it.
    pub source: String,
    /// When it happened (UTC).
    pub occurred_at: DateTime<Utc>,
    /// The normalized identifiers it carries.
    pub identifiers: Vec<Identifier>,
    /// What happened.
    pub action: Action,
    /// Anything else the record carried.
    pub properties: Map<String, Value>,
}

/// A touchpoint record as a channel sends it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct RawTouchpoint {
    /// The idempotency key; a UUID. Required.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The event type, for example `order_placed`. Required.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// The channel, for example `store`. Required.
    #[serde(default)]
    pub channel: Option<String>,
    /// The sending system. Required.
    #[serde(default)]
    pub source: Option<String>,
    /// When it happened, RFC 3339 with a zone (`2026-03-08T09:30:15+08:00`). Required.
    #[serde(default)]
    pub occurred_at: Option<String>,
    /// Identifiers by kind: `{"phone": "138...", "device_id": ["a", "b"]}`. At least one.
    #[serde(default)]
    pub identifiers: BTreeMap<String, OneOrMany>,
    /// The action's own fields (`url`, `order_id`, `items`, `purpose` ...) and any other property.
    #[serde(default, flatten)]
    pub fields: Map<String, Value>,
}

/// One value or several.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            Self::One(v) => vec![v.as_str()],
            Self::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

/// Why a record was refused: the field at fault and what is wrong with it.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
#[error("{field}: {reason}")]
pub struct Rejection {
    /// The field, as a path (`identifiers.phone`, `items[2].quantity`).
    pub field: String,
    /// What is wrong, for a person to read.
    pub reason: String,
    /// A stable code: `missing_field`, `invalid_identifier`, `unknown_event_type`, ...
    pub code: RejectionCode,
}

/// Stable codes for [`Rejection`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// A required field is absent or empty.
    MissingField,
    /// The record is not a JSON object, or a field has the wrong JSON type.
    Malformed,
    /// The event type is not one Patron knows.
    UnknownEventType,
    /// The channel is not one Patron knows.
    UnknownChannel,
    /// An identifier's value does not normalize, or its kind is not declared.
    InvalidIdentifier,
    /// A time is not RFC 3339 with a zone, or lies in the future or before the earliest time
    /// accepted; or a date is not a calendar date.
    InvalidTime,
    /// An amount is negative or above its bound, or the lines do not add up to the total.
    InvalidAmount,
    /// The event id is not a UUID.
    InvalidEventId,
}

impl RejectionCode {
    /// The code as it is serialized: `missing_field`, `malformed`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingField => "missing_field",
            Self::Malformed => "malformed",
            Self::UnknownEventType => "unknown_event_type",
            Self::UnknownChannel => "unknown_channel",
            Self::InvalidIdentifier => "invalid_identifier",
            Self::InvalidTime => "invalid_time",
            Self::InvalidAmount => "invalid_amount",
            Self::InvalidEventId => "invalid_event_id",
        }
    }
}

fn reject(field: impl Into<String>, code: RejectionCode, reason: impl Into<String>) -> Rejection {
    Rejection {
        field: field.into(),
        reason: reason.into(),
        code,
    }
}

fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, Rejection> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(reject(field, RejectionCode::MissingField, "is required")),
    }
}

fn take<T: serde::de::DeserializeOwned>(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<T, Rejection> {
    let value = fields
        .remove(name)
        .ok_or_else(|| reject(name, RejectionCode::MissingField, "is required"))?;
    serde_json::from_value(value).map_err(|e| reject(name, RejectionCode::Malformed, e.to_string()))
}

fn take_opt<T: serde::de::DeserializeOwned>(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<T>, Rejection> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| reject(name, RejectionCode::Malformed, e.to_string())),
    }
}

fn check_currency(currency: &str, field: &str) -> Result<(), Rejection> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(reject(
            field,
            RejectionCode::InvalidAmount,
            format!("{currency:?} is not an ISO 4217 code such as CNY"),
        ))
    }
}

/// An amount over [`MAX_AMOUNT_MINOR`], refused naming `field`.
fn too_large(field: impl Into<String>) -> Rejection {
    reject(
        field,
        RejectionCode::InvalidAmount,
        format!("must be at most 10^13 ({MAX_AMOUNT_MINOR}) minor units"),
    )
}

/// Checks `amount` of `field`: 0 to [`MAX_AMOUNT_MINOR`].
fn check_amount(amount: i64, field: &str) -> Result<(), Rejection> {
    if amount < 0 {
        return Err(reject(
            field,
            RejectionCode::InvalidAmount,
            "must not be negative",
        ));
    }
    if amount > MAX_AMOUNT_MINOR {
        return Err(too_large(field));
    }
    Ok(())
}

/// Checks a line; its amount is then 0 to [`MAX_AMOUNT_MINOR`].
fn check_line(item: &LineItem, field: &str) -> Result<(), Rejection> {
    if item.quantity == 0 {
        return Err(reject(
            format!("{field}.quantity"),
            RejectionCode::InvalidAmount,
            "must be at least 1",
        ));
    }
    if item.quantity > MAX_QUANTITY {
        return Err(reject(
            format!("{field}.quantity"),
            RejectionCode::InvalidAmount,
            format!("must be at most {MAX_QUANTITY}"),
        ));
    }
    check_amount(item.unit_price_minor, &format!("{field}.unit_price_minor"))?;
    let discount = format!("{field}.discount_minor");
    check_amount(item.discount_minor, &discount)?;
    let amount = item.exact_amount_minor();
    if amount < 0 {
        return Err(reject(
            discount,
            RejectionCode::InvalidAmount,
            "must be between 0 and the line's price",
        ));
    }
    if amount > i128::from(MAX_AMOUNT_MINOR) {
        return Err(reject(
            field,
            RejectionCode::InvalidAmount,
            format!(
                "the line's amount (quantity times unit price less discount) is {amount}, \
                 more than 10^13 ({MAX_AMOUNT_MINOR}) minor units"
            ),
        ));
    }
    Ok(())
}

/// The JSON type of `value`, for a person to read.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A text trait: absent when missing or null, refused naming `traits.<name>` when not text.
fn text_trait(traits: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Rejection> {
    match traits.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(reject(
            format!("traits.{name}"),
            RejectionCode::Malformed,
            format!("must be text, not {}", json_type(&other)),
        )),
    }
}

/// A calendar date written `YYYY-MM-DD`, or what is wrong with it.
fn parse_date(text: &str) -> Result<NaiveDate, String> {
    if let Ok(date) = text.parse::<NaiveDate>() {
        return Ok(date);
    }
    let numbers: Vec<Option<u32>> = text.split('-').map(|part| part.parse().ok()).collect();
    let [Some(year), Some(month), Some(day)] = numbers.as_slice() else {
        return Err(format!("{text:?} is not a date written YYYY-MM-DD"));
    };
    if !(1..=12).contains(month) {
        return Err(format!("month {month} is not a month (1 to 12)"));
    }
    let days = i32::try_from(*year)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, *month, 1))
        .and_then(|first| first.checked_add_months(chrono::Months::new(1)))
        .and_then(|next| next.pred_opt())
        .map(|last| last.day());
    match days {
        Some(days) if !(1..=days).contains(day) => Err(format!(
            "day {day} is not a day of {year:04}-{month:02}, which has {days} days"
        )),
        _ => Err(format!("{text:?} is not a date written YYYY-MM-DD")),
    }
}

/// The earliest birthday accepted.
pub const EARLIEST_BIRTHDAY: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(date) => date,
    None => NaiveDate::MIN,
};

/// A birthday is refused before [`EARLIEST_BIRTHDAY`] and after the day the record happened.
fn check_birthday(birthday: NaiveDate, occurred_at: DateTime<Utc>) -> Result<(), Rejection> {
    let refuse = |reason: String| reject("traits.birthday", RejectionCode::InvalidTime, reason);
    if birthday < EARLIEST_BIRTHDAY {
        return Err(refuse(format!(
            "{birthday} is before {EARLIEST_BIRTHDAY}, the earliest birthday accepted"
        )));
    }
    // The day the record happened in the zone furthest ahead of UTC (UTC+14).
    let latest_day = (occurred_at + chrono::Duration::hours(14)).date_naive();
    if birthday > latest_day {
        return Err(refuse(format!(
            "{birthday} is after the day the record happened ({latest_day})"
        )));
    }
    Ok(())
}

/// The traits of a `traits_updated` record, each typed trait checked on its own so that a
/// refusal names it (`traits.birthday`).
fn parse_traits(value: Value) -> Result<Traits, Rejection> {
    let Value::Object(mut traits) = value else {
        return Err(reject(
            "traits",
            RejectionCode::Malformed,
            format!("must be an object, not {}", json_type(&value)),
        ));
    };
    let birthday = match traits.remove("birthday") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(
            parse_date(&text)
                .map_err(|reason| reject("traits.birthday", RejectionCode::InvalidTime, reason))?,
        ),
        Some(other) => {
            return Err(reject(
                "traits.birthday",
                RejectionCode::Malformed,
                format!(
                    "must be a date written YYYY-MM-DD, not {}",
                    json_type(&other)
                ),
            ))
        }
    };
    Ok(Traits {
        name: text_trait(&mut traits, "name")?,
        gender: text_trait(&mut traits, "gender")?,
        birthday,
        city: text_trait(&mut traits, "city")?,
        province: text_trait(&mut traits, "province")?,
        other: traits.into_iter().collect(),
    })
}

fn parse_action(event_type: &str, fields: &mut Map<String, Value>) -> Result<Action, Rejection> {
    Ok(match event_type {
        "page_viewed" => Action::PageViewed {
            url: take(fields, "url")?,
        },
        "screen_viewed" => Action::ScreenViewed {
            screen: take(fields, "screen")?,
        },
        "searched" => Action::Searched {
            query: take(fields, "query")?,
        },
        "cart_item_added" => {
            let item: LineItem = take(fields, "item")?;
            check_line(&item, "item")?;
            Action::CartItemAdded { item }
        }
        "store_visited" => Action::StoreVisited {
            store_id: take(fields, "store_id")?,
        },
        "order_placed" => {
            let order_id: String = take(fields, "order_id")?;
            let currency: String = take(fields, "currency")?;
            check_currency(&currency, "currency")?;
            let items: Vec<LineItem> = take(fields, "items")?;
            if items.is_empty() {
                return Err(reject(
                    "items",
                    RejectionCode::MissingField,
                    "an order needs at least one line",
                ));
            }
            for (i, item) in items.iter().enumerate() {
                check_line(item, &format!("items[{i}]"))?;
            }
            // Exact: each line is at most 10^13, so no count of lines overflows an i128.
            let sum: i128 = items.iter().map(LineItem::exact_amount_minor).sum();
            if sum > i128::from(MAX_AMOUNT_MINOR) {
                return Err(reject(
                    "items",
                    RejectionCode::InvalidAmount,
                    format!(
                        "the lines add up to {sum}, more than 10^13 ({MAX_AMOUNT_MINOR}) minor \
                         units"
                    ),
                ));
            }
            let total_minor = take_opt::<i64>(fields, "total_minor")?;
            if let Some(total) = total_minor {
                check_amount(total, "total_minor")?;
            }
            let total_minor = match total_minor {
                Some(total) => total,
                None => i64::try_from(sum).map_err(|_| too_large("items"))?,
            };
            if i128::from(total_minor) != sum {
                return Err(reject(
                    "total_minor",
                    RejectionCode::InvalidAmount,
                    format!("is {total_minor} but the lines add up to {sum}"),
                ));
            }
            Action::OrderPlaced(Order {
                order_id,
                currency,
                items,
                total_minor,
            })
        }
        "order_refunded" => {
            let order_id: String = take(fields, "order_id")?;
            let currency: String = take(fields, "currency")?;
            check_currency(&currency, "currency")?;
            let minor: i64 = take(fields, "amount_minor")?;
            if minor <= 0 {
                return Err(reject(
                    "amount_minor",
                    RejectionCode::InvalidAmount,
                    "must be positive",
                ));
            }
            check_amount(minor, "amount_minor")?;
            Action::OrderRefunded(Refund {
                order_id,
                amount: Money { minor, currency },
            })
        }
        "membership_desk_contact" => Action::MembershipDeskContact {
            topic: take_opt(fields, "topic")?,
        },
        "call_center_contact" => Action::CallCenterContact {
            topic: take_opt(fields, "topic")?,
        },
        "ad_impression" => Action::AdImpression {
            campaign: take(fields, "campaign")?,
        },
        "ad_clicked" => Action::AdClicked {
            campaign: take(fields, "campaign")?,
        },
        "partner_referral" => Action::PartnerReferral {
            partner: take(fields, "partner")?,
        },
        "traits_updated" => {
            let traits = fields
                .remove("traits")
                .ok_or_else(|| reject("traits", RejectionCode::MissingField, "is required"))?;
            Action::TraitsUpdated(parse_traits(traits)?)
        }
        "consent_changed" => Action::ConsentChanged {
            purpose: take(fields, "purpose")?,
            granted: take(fields, "granted")?,
        },
        "custom" => Action::Custom {
            name: take(fields, "name")?,
        },
        other => {
            return Err(reject(
                "type",
                RejectionCode::UnknownEventType,
                format!("{other:?} is not a known event type"),
            ))
        }
    })
}

impl RawTouchpoint {
    /// Checks every field and normalizes identifiers under `rules`; `times` bounds
    /// `occurred_at`. Consumes the record: its fields move into the touchpoint.
    pub fn validate(
        self,
        rules: &IdentityRules,
        times: TimeBounds,
    ) -> Result<Touchpoint, Rejection> {
        let event_id = required(&self.event_id, "event_id")?;
        let event_id = Uuid::parse_str(event_id)
            .map(EventId::from_uuid)
            .map_err(|_| {
                reject(
                    "event_id",
                    RejectionCode::InvalidEventId,
                    format!("{event_id:?} is not a UUID"),
                )
            })?;
        let event_type = required(&self.event_type, "type")?;
        let channel = required(&self.channel, "channel")?;
        let channel: Channel =
            serde_json::from_value(Value::String(channel.to_owned())).map_err(|_| {
                reject(
                    "channel",
                    RejectionCode::UnknownChannel,
                    format!("{channel:?} is not a known channel"),
                )
            })?;
        let source = required(&self.source, "source")?.to_owned();
        let occurred = required(&self.occurred_at, "occurred_at")?;
        let occurred_at = DateTime::parse_from_rfc3339(occurred)
            .map_err(|_| {
                reject(
                    "occurred_at",
                    RejectionCode::InvalidTime,
                    format!("{occurred:?} is not an RFC 3339 time with a zone"),
                )
            })?
            .with_timezone(&Utc);
        if occurred_at > times.now + MAX_FUTURE_SKEW {
            return Err(reject(
                "occurred_at",
                RejectionCode::InvalidTime,
                format!("{occurred} is in the future"),
            ));
        }
        if occurred_at < times.earliest {
            return Err(reject(
                "occurred_at",
                RejectionCode::InvalidTime,
                format!(
                    "{occurred} is before {}, the earliest time accepted",
                    times
                        .earliest
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            ));
        }
        let mut identifiers = Vec::new();
        for (kind, values) in &self.identifiers {
            for (i, raw) in values.values().into_iter().enumerate() {
                let field = match values {
                    OneOrMany::One(_) => format!("identifiers.{kind}"),
                    OneOrMany::Many(_) => format!("identifiers.{kind}[{i}]"),
                };
                let id = rules
                    .normalize(kind, raw)
                    .map_err(|e| reject(field, RejectionCode::InvalidIdentifier, e.to_string()))?;
                if !identifiers.contains(&id) {
                    identifiers.push(id);
                }
            }
        }
        if identifiers.is_empty() {
            return Err(reject(
                "identifiers",
                RejectionCode::MissingField,
                "at least one identifier is required",
            ));
        }
        let event_type = event_type.to_owned();
        let mut fields = self.fields;
        let action = parse_action(&event_type, &mut fields)?;
        if let Action::TraitsUpdated(Traits {
            birthday: Some(birthday),
            ..
        }) = &action
        {
            check_birthday(*birthday, occurred_at)?;
        }
        Ok(Touchpoint {
            event_id,
            channel,
            source,
            occurred_at: chrono::SubsecRound::trunc_subsecs(occurred_at, 6),
            identifiers,
            action,
            properties: fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(value: Value) -> RawTouchpoint {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn rejection_codes_read_as_they_serialize() {
        use RejectionCode::*;
        for code in [
            MissingField,
            Malformed,
            UnknownEventType,
            UnknownChannel,
            InvalidIdentifier,
            InvalidTime,
            InvalidAmount,
            InvalidEventId,
        ] {
            assert_eq!(json!(code), json!(code.as_str()));
        }
    }

    fn order() -> Value {
        json!({
            "event_id": "0192f0c4-7c1e-7a33-9d5e-1b2c3d4e5f60",
            "type": "order_placed",
            "channel": "store",
            "source": "pos-shanghai",
            "occurred_at": "2026-03-08T09:30:15+08:00",
            "identifiers": {"phone": "139 1234 0001", "member_card": ["MC-1", "MC-1"]},
            "order_id": "PO-1",
            "currency": "CNY",
            "items": [
                {"sku": "SKU-1", "category": "skincare", "quantity": 2, "unit_price_minor": 12900, "discount_minor": 1000},
                {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 5000}
            ],
            "store_id": "SH-0042"
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn rejection(value: Value) -> Rejection {
        raw(value)
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap_err()
    }

    #[test]
    fn a_store_order_is_validated_and_normalized() {
        let t = raw(order())
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap();
        assert_eq!(t.channel, Channel::Store);
        assert_eq!(t.occurred_at.to_rfc3339(), "2026-03-08T01:30:15+00:00");
        let ids: Vec<String> = t.identifiers.iter().map(ToString::to_string).collect();
        assert_eq!(ids, vec!["member_card:MC-1", "phone:+8613912340001"]);
        let Action::OrderPlaced(order) = &t.action else {
            panic!("{:?}", t.action)
        };
        assert_eq!(order.total_minor, 2 * 12900 - 1000 + 5000);
        assert_eq!(t.action.event_type(), "order_placed");
        assert_eq!(t.properties.get("store_id"), Some(&json!("SH-0042")));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str, RejectionCode)> = vec![
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("event_id");
                }),
                "event_id",
                RejectionCode::MissingField,
            ),
            (
                Box::new(|v| v["event_id"] = json!("PO-1")),
                "event_id",
                RejectionCode::InvalidEventId,
            ),
            (
                Box::new(|v| v["type"] = json!("order_teleported")),
                "type",
                RejectionCode::UnknownEventType,
            ),
            (
                Box::new(|v| v["channel"] = json!("carrier_pigeon")),
                "channel",
                RejectionCode::UnknownChannel,
            ),
            (
                Box::new(|v| v["occurred_at"] = json!("2026-03-08 09:30:15")),
                "occurred_at",
                RejectionCode::InvalidTime,
            ),
            (
                Box::new(|v| v["occurred_at"] = json!("2027-01-01T00:00:00Z")),
                "occurred_at",
                RejectionCode::InvalidTime,
            ),
            (
                Box::new(|v| v["identifiers"] = json!({"phone": "12345"})),
                "identifiers.phone",
                RejectionCode::InvalidIdentifier,
            ),
            (
                Box::new(|v| v["identifiers"] = json!({"passport": "E1"})),
                "identifiers.passport",
                RejectionCode::InvalidIdentifier,
            ),
            (
                Box::new(|v| v["identifiers"] = json!({})),
                "identifiers",
                RejectionCode::MissingField,
            ),
            (
                Box::new(|v| v["items"][1]["unit_price_minor"] = json!(-5)),
                "items[1].unit_price_minor",
                RejectionCode::InvalidAmount,
            ),
            (
                Box::new(|v| v["items"][0]["quantity"] = json!(0)),
                "items[0].quantity",
                RejectionCode::InvalidAmount,
            ),
            (
                Box::new(|v| v["total_minor"] = json!(1)),
                "total_minor",
                RejectionCode::InvalidAmount,
            ),
            (
                Box::new(|v| v["currency"] = json!("rmb")),
                "currency",
                RejectionCode::InvalidAmount,
            ),
            (
                Box::new(|v| v["items"] = json!("two")),
                "items",
                RejectionCode::Malformed,
            ),
        ];
        for (change, field, code) in cases {
            let mut value = order();
            change(&mut value);
            let r = rejection(value);
            assert_eq!((r.field.as_str(), r.code), (field, code), "{r}");
        }
    }

    #[test]
    fn identifier_lists_name_the_bad_element() {
        let mut value = order();
        value["identifiers"] = json!({"email": ["ok@example.cn", "not-an-email"]});
        assert_eq!(rejection(value).field, "identifiers.email[1]");
    }

    #[test]
    fn consent_and_traits_parse() {
        let mut value = order();
        let obj = value.as_object_mut().unwrap();
        obj.retain(|k, _| {
            [
                "event_id",
                "channel",
                "source",
                "occurred_at",
                "identifiers",
            ]
            .contains(&k.as_str())
        });
        obj.insert("type".into(), json!("consent_changed"));
        obj.insert("purpose".into(), json!("marketing_sms"));
        obj.insert("granted".into(), json!(false));
        let t = raw(value.clone())
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap();
        assert_eq!(
            t.action,
            Action::ConsentChanged {
                purpose: ConsentPurpose::MarketingSms,
                granted: false
            }
        );

        let obj = value.as_object_mut().unwrap();
        obj.remove("purpose");
        obj.remove("granted");
        obj.insert("type".into(), json!("traits_updated"));
        obj.insert(
            "traits".into(),
            json!({"name": "李娜", "birthday": "1990-05-01", "city": "Shanghai", "vip": true}),
        );
        let t = raw(value)
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap();
        let Action::TraitsUpdated(traits) = t.action else {
            panic!()
        };
        assert_eq!(traits.birthday, NaiveDate::from_ymd_opt(1990, 5, 1));
        assert_eq!(traits.other.get("vip"), Some(&json!(true)));
    }

    fn traits_record(traits: Value) -> Value {
        json!({
            "event_id": "0192f0c4-7c1e-7a33-9d5e-1b2c3d4e5f60",
            "type": "traits_updated",
            "channel": "membership_desk",
            "source": "crm",
            "occurred_at": "2026-03-08T09:30:15+08:00",
            "identifiers": {"phone": "139 1234 0001"},
            "traits": traits,
        })
    }

    #[test]
    fn amounts_beyond_their_bounds_are_refused_naming_field_and_bound() {
        // The review's record: 4 x 4611686018427387909 wrapped to a total of 20.
        let mut value = order();
        value["items"] =
            json!([{"sku": "X", "quantity": 4, "unit_price_minor": 4_611_686_018_427_387_909_i64}]);
        value["total_minor"] = json!(20);
        let r = rejection(value);
        assert_eq!(
            (r.field.as_str(), r.code),
            ("items[0].unit_price_minor", RejectionCode::InvalidAmount)
        );
        assert!(r.reason.contains("10^13"), "{r}");

        type Change = Box<dyn Fn(&mut Value)>;
        let bound = MAX_AMOUNT_MINOR;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(move |v| v["items"][1]["unit_price_minor"] = json!(bound + 1)),
                "items[1].unit_price_minor",
            ),
            (
                Box::new(move |v| v["items"][1]["discount_minor"] = json!(bound + 1)),
                "items[1].discount_minor",
            ),
            (
                Box::new(|v| v["items"][1]["quantity"] = json!(MAX_QUANTITY + 1)),
                "items[1].quantity",
            ),
            (
                // Each part within its bound, the line's amount beyond it.
                Box::new(move |v| {
                    v["items"][1] = json!({"sku": "X", "quantity": 2, "unit_price_minor": bound});
                }),
                "items[1]",
            ),
            (
                // Each line within the bound, their sum beyond it.
                Box::new(move |v| {
                    let line = json!({"sku": "X", "quantity": 1, "unit_price_minor": bound});
                    v["items"] = json!([line.clone(), line]);
                }),
                "items",
            ),
            (
                Box::new(move |v| v["total_minor"] = json!(bound + 1)),
                "total_minor",
            ),
            (Box::new(|v| v["total_minor"] = json!(-1)), "total_minor"),
        ];
        for (change, field) in cases {
            let mut value = order();
            change(&mut value);
            let r = rejection(value);
            assert_eq!(
                (r.field.as_str(), r.code),
                (field, RejectionCode::InvalidAmount),
                "{r}"
            );
        }

        // At the bound: accepted.
        let mut value = order();
        value["items"] = json!([{"sku": "X", "quantity": 1, "unit_price_minor": bound}]);
        let t = raw(value)
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap();
        let Action::OrderPlaced(placed) = t.action else {
            panic!("{:?}", t.action)
        };
        assert_eq!(placed.total_minor, bound);

        // A refund beyond the bound.
        let mut value = order();
        let obj = value.as_object_mut().unwrap();
        obj.remove("items");
        obj.insert("type".into(), json!("order_refunded"));
        obj.insert("amount_minor".into(), json!(bound + 1));
        let r = rejection(value);
        assert_eq!(
            (r.field.as_str(), r.code),
            ("amount_minor", RejectionCode::InvalidAmount)
        );
    }

    #[test]
    fn times_before_the_earliest_are_refused_naming_the_bound() {
        let mut value = order();
        value["occurred_at"] = json!("1989-12-31T23:59:59Z");
        let r = rejection(value);
        assert_eq!(
            (r.field.as_str(), r.code),
            ("occurred_at", RejectionCode::InvalidTime)
        );
        assert!(r.reason.contains("1990-01-01T00:00:00Z"), "{r}");

        let mut value = order();
        value["occurred_at"] = json!("1990-01-01T08:00:00+08:00");
        assert!(raw(value)
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .is_ok());

        // A configured bound.
        let earliest = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let times = TimeBounds {
            earliest,
            now: now(),
        };
        let r = raw(order())
            .validate(
                &IdentityRules::default(),
                TimeBounds {
                    earliest: earliest + TimeDelta::days(90),
                    ..times
                },
            )
            .unwrap_err();
        assert!(r.reason.contains("2026-04-01T00:00:00Z"), "{r}");
        let mut value = order();
        value["occurred_at"] = json!("2026-01-01T00:00:00Z");
        assert!(raw(value)
            .validate(&IdentityRules::default(), times)
            .is_ok());
    }

    #[test]
    fn a_birthday_on_the_day_of_the_record_reads_in_any_zone() {
        // 01:00 in Shanghai is the evening before in UTC: born that day is still accepted.
        let mut record = traits_record(json!({"birthday": "2026-03-08"}));
        record["occurred_at"] = json!("2026-03-08T01:00:00+08:00");
        let touchpoint = raw(record)
            .validate(&IdentityRules::default(), TimeBounds::at(Utc::now()))
            .expect("born the day the record happened");
        let Action::TraitsUpdated(traits) = touchpoint.action else {
            panic!("a traits update");
        };
        assert_eq!(traits.birthday, NaiveDate::from_ymd_opt(2026, 3, 8));
        let mut record = traits_record(json!({"birthday": "2026-03-09"}));
        record["occurred_at"] = json!("2026-03-08T01:00:00+08:00");
        let r = raw(record)
            .validate(&IdentityRules::default(), TimeBounds::at(Utc::now()))
            .unwrap_err();
        assert_eq!(r.field, "traits.birthday");
    }

    #[test]
    fn a_bad_trait_is_named_with_its_problem() {
        let cases = [
            (
                json!({"birthday": "1993-18-19"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "month 18",
            ),
            (
                json!({"birthday": "1993-04-31"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "day 31",
            ),
            (
                json!({"birthday": "1993-02-29"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "28 days",
            ),
            (
                json!({"birthday": "0010-05-01"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "before 1900-01-01",
            ),
            (
                json!({"birthday": "2999-05-01"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "after the day the record happened",
            ),
            (
                json!({"birthday": "May 1st"}),
                "traits.birthday",
                RejectionCode::InvalidTime,
                "YYYY-MM-DD",
            ),
            (
                json!({"birthday": 19930501}),
                "traits.birthday",
                RejectionCode::Malformed,
                "a number",
            ),
            (
                json!({"name": ["Li", "Na"]}),
                "traits.name",
                RejectionCode::Malformed,
                "a list",
            ),
            (
                json!({"gender": true}),
                "traits.gender",
                RejectionCode::Malformed,
                "a boolean",
            ),
            (
                json!({"city": {"en": "Shanghai"}}),
                "traits.city",
                RejectionCode::Malformed,
                "an object",
            ),
            (
                json!({"province": 31}),
                "traits.province",
                RejectionCode::Malformed,
                "a number",
            ),
            (
                json!("vip"),
                "traits",
                RejectionCode::Malformed,
                "an object",
            ),
        ];
        for (traits, field, code, says) in cases {
            let r = rejection(traits_record(traits.clone()));
            assert_eq!((r.field.as_str(), r.code), (field, code), "{traits}: {r}");
            assert!(r.reason.contains(says), "{traits}: {r}");
        }

        // Valid ones, a leap day and nulls included, still read; other traits are kept.
        let record = traits_record(json!({
            "birthday": "1992-02-29", "name": "李娜", "gender": null, "city": "Shanghai",
            "province": "Shanghai", "vip": true
        }));
        let t = raw(record)
            .validate(&IdentityRules::default(), TimeBounds::at(now()))
            .unwrap();
        let Action::TraitsUpdated(traits) = t.action else {
            panic!("{:?}", t.action)
        };
        assert_eq!(traits.birthday, NaiveDate::from_ymd_opt(1992, 2, 29));
        assert_eq!(traits.gender, None);
        assert_eq!(traits.city.as_deref(), Some("Shanghai"));
        assert_eq!(traits.other.get("vip"), Some(&json!(true)));
        let missing = rejection(json!({
            "event_id": "0192f0c4-7c1e-7a33-9d5e-1b2c3d4e5f60", "type": "traits_updated",
            "channel": "web", "source": "s", "occurred_at": "2026-03-08T09:30:15Z",
            "identifiers": {"phone": "139 1234 0001"}
        }));
        assert_eq!(
            (missing.field.as_str(), missing.code),
            ("traits", RejectionCode::MissingField)
        );
    }
}
