//! The `Customer` type: the 360-degree profile, its scores, tags and segments, its personal
//! data (masked unless the caller's role may read it, and logged when it is read) and its
//! timeline.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Json, Result, SimpleObject, ID};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::access::{api_error, codes, require, Role};
use crate::backend::{Backend, CustomerRecord, HistoryEvent};
use crate::cursor;
use crate::loader::Loaders;
use crate::mask;

/// A live customer.
pub struct Customer {
    id: Uuid,
    record: Arc<CustomerRecord>,
}

impl Customer {
    /// The customer `id` (already resolved to a live one), if it has a profile.
    pub(crate) async fn load(ctx: &Context<'_>, id: Uuid) -> Result<Option<Self>> {
        let loaders = ctx.data::<Loaders>()?;
        let record = loaders
            .customers
            .load_one(id)
            .await
            .map_err(crate::backend_error)?;
        Ok(record.map(|record| Self { id, record }))
    }

    /// The customers `ids` that have profiles, in the given order, loaded in one batch.
    pub(crate) async fn load_many(ctx: &Context<'_>, ids: &[Uuid]) -> Result<Vec<Self>> {
        let loaders = ctx.data::<Loaders>()?;
        let mut records = loaders
            .customers
            .load_many(ids.iter().copied())
            .await
            .map_err(crate::backend_error)?;
        Ok(ids
            .iter()
            .filter_map(|id| records.remove(id).map(|record| Self { id: *id, record }))
            .collect())
    }

    /// The customer's id.
    pub(crate) fn uuid(&self) -> Uuid {
        self.id
    }

    /// The customer's history, opened, and whether the caller reads it unmasked (the read
    /// is then logged).
    async fn history(
        &self,
        ctx: &Context<'_>,
        what: &str,
    ) -> Result<(Arc<Vec<HistoryEvent>>, bool)> {
        let key = require(ctx, Role::Viewer)?;
        let loaders = ctx.data::<Loaders>()?;
        let history = loaders
            .histories
            .load_one(self.id)
            .await
            .map_err(crate::backend_error)?
            .unwrap_or_default();
        let unmasked = key.role.sees_personal_data();
        if unmasked {
            ctx.data::<Arc<dyn Backend>>()?
                .log_access(key, self.id, what)
                .await
                .map_err(crate::backend_error)?;
        }
        Ok((history, unmasked))
    }
}

/// An amount of money.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct Money {
    /// ISO 4217 currency code.
    pub currency: String,
    /// The amount in minor units (cents, fen).
    pub minor: i64,
}

/// Touchpoints counted by one value (a channel, an event type).
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct Count {
    /// The value.
    pub name: String,
    /// Touchpoints with it.
    pub touchpoints: u64,
}

/// Spend in a product category.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct CategorySpend {
    /// The category.
    pub category: String,
    /// Spend after discounts, minor units.
    pub spend_minor: i64,
}

/// Consent for one purpose.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct ConsentState {
    /// The purpose: `marketing_sms`, `marketing_email`, `push` or `profiling`.
    pub purpose: String,
    /// Given or withdrawn.
    pub granted: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// RFM scores and what they were computed from.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct Rfm {
    /// Recency score, 1-5 (5: most recent).
    pub r: u8,
    /// Frequency score, 1-5.
    pub f: u8,
    /// Monetary score, 1-5.
    pub m: u8,
    /// The named segment, for example `Champions`.
    pub segment: Option<String>,
    /// Days since the last order in the window.
    pub recency_days: Option<i64>,
    /// Orders in the window.
    pub frequency: i64,
    /// Spend in the window, minor units.
    pub monetary_minor: i64,
}

/// An identifier of a customer.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct CustomerIdentifier {
    /// Its kind, for example `phone`.
    pub kind: String,
    /// Its value, masked unless the caller's role may read personal data.
    pub value: String,
    /// Whether `value` is masked.
    pub masked: bool,
}

/// A customer merged into this one.
#[derive(Clone, Debug, PartialEq, Eq, SimpleObject)]
pub struct Merge {
    /// The customer absorbed (its id still resolves to this customer).
    pub absorbed: ID,
    /// When the merge was recorded.
    pub at: DateTime<Utc>,
    /// Who made it (`system` for the identity rules).
    pub actor: Option<String>,
    /// Why, for a merge made by hand.
    pub reason: Option<String>,
}

/// One event of a customer's timeline.
#[derive(Clone, Debug, SimpleObject)]
pub struct TimelineEvent {
    /// Its place in the log.
    pub position: u64,
    /// Its idempotency key.
    pub event_id: ID,
    /// Its type, for example `order_placed`.
    #[graphql(name = "type")]
    pub event_type: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// When it was stored.
    pub recorded_at: DateTime<Utc>,
    /// The channel it came through.
    pub channel: Option<String>,
    /// The system that sent it.
    pub source: Option<String>,
    /// Who appended it.
    pub actor: Option<String>,
    /// Why, for manual actions.
    pub reason: Option<String>,
    /// The customer whose history holds it (one merged into this customer, perhaps).
    pub customer: ID,
    /// The payload, personal data masked unless the caller's role may read it.
    pub payload: Json<Value>,
}

/// A filter on a timeline.
#[derive(Clone, Debug, Default, async_graphql::InputObject)]
pub struct TimelineFilter {
    /// Only these channels.
    pub channels: Option<Vec<String>>,
    /// Only these event types.
    pub types: Option<Vec<String>>,
    /// Only events that happened at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events that happened before this time.
    pub to: Option<DateTime<Utc>>,
}

impl TimelineFilter {
    fn admits(&self, e: &HistoryEvent) -> bool {
        let listed = |list: &Option<Vec<String>>, value: Option<&str>| {
            list.as_ref()
                .is_none_or(|l| value.is_some_and(|v| l.iter().any(|x| x == v)))
        };
        listed(&self.channels, e.channel.as_deref())
            && listed(&self.types, Some(&e.event_type))
            && self.from.is_none_or(|from| e.occurred_at >= from)
            && self.to.is_none_or(|to| e.occurred_at < to)
    }
}

/// The most a page may hold.
pub const MAX_PAGE: usize = 500;

/// A list field's complexity: its page size times its items' (each field counts 1).
pub(crate) fn page_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let page = first.map_or(50, |n| n.clamp(1, MAX_PAGE as i32) as usize);
    page.saturating_mul(child_complexity).saturating_add(1)
}

/// Checks a page size.
pub(crate) fn page_size(first: Option<i32>, default: usize) -> Result<usize> {
    match first {
        None => Ok(default),
        Some(n) if n >= 1 && (n as usize) <= MAX_PAGE => Ok(n as usize),
        Some(n) => Err(api_error(
            codes::INVALID_ARGUMENT,
            format!("`first` must be 1 to {MAX_PAGE}, not {n}"),
        )),
    }
}

fn touchpoint_events(history: &[HistoryEvent]) -> impl Iterator<Item = &HistoryEvent> {
    history
        .iter()
        .filter(|e| e.payload.get("channel").is_some())
}

/// The payload with personal members masked.
fn masked_payload(payload: &Value) -> Value {
    let mut payload = payload.clone();
    if let Some(list) = payload.get_mut("identifiers").and_then(Value::as_array_mut) {
        for item in list {
            mask_identifier(item);
        }
    }
    if let Some(list) = payload.get_mut("evidence").and_then(Value::as_array_mut) {
        for item in list {
            // Merge evidence lists identifiers, bare or wrapped with more context.
            match item.get_mut("identifier") {
                Some(identifier) => mask_identifier(identifier),
                None => mask_identifier(item),
            }
        }
    }
    if let Some(Value::Object(properties)) = payload.get_mut("properties") {
        for (name, value) in properties.iter_mut() {
            *value = mask::trait_value(name, value);
        }
    }
    if payload.get("action").and_then(|a| a.get("type")) == Some(&Value::from("traits_updated")) {
        if let Some(Value::Object(action)) = payload.get_mut("action") {
            for (name, value) in action.iter_mut() {
                if name != "type" {
                    *value = mask::trait_value(name, value);
                }
            }
        }
    }
    payload
}

fn mask_identifier(item: &mut Value) {
    let kind = item
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(Value::String(value)) = item.get_mut("value") {
        *value = mask::identifier(&kind, value);
    }
}

/// The customer's profile and what the read models add to it.
#[async_graphql::Object]
impl Customer {
    /// The customer's id.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    /// The version of the customer's stream (the number of events on it): what an operator
    /// passes as `expectedVersion` to a correction so that it fails if the customer changed.
    async fn version(&self, ctx: &Context<'_>) -> Result<u64> {
        require(ctx, Role::Viewer)?;
        ctx.data::<Arc<dyn Backend>>()?
            .customer_version(self.id)
            .await
            .map_err(crate::backend_error)
    }

    /// Whether the customer was erased: their personal data is gone for good.
    async fn erased(&self) -> bool {
        self.record.profile.erased
    }

    /// The first touchpoint's time.
    async fn first_seen(&self) -> Option<DateTime<Utc>> {
        self.record.profile.first_seen
    }

    /// The last touchpoint's time.
    async fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.record.profile.last_seen
    }

    /// Touchpoints, all channels.
    async fn touchpoints(&self) -> u64 {
        self.record.profile.touchpoints
    }

    /// Touchpoints per channel, most first.
    async fn channels(&self) -> Vec<Count> {
        counts(&self.record.profile.by_channel)
    }

    /// Touchpoints per event type, most first.
    async fn event_types(&self) -> Vec<Count> {
        counts(&self.record.profile.by_type)
    }

    /// The channel with the most touchpoints.
    async fn preferred_channel(&self) -> Option<&str> {
        self.record.profile.preferred_channel()
    }

    /// The hour of the day (0-23, UTC) with the most touchpoints.
    async fn preferred_hour(&self) -> Option<u32> {
        self.record.profile.preferred_hour()
    }

    /// Orders placed.
    async fn orders(&self) -> u64 {
        self.record.profile.orders
    }

    /// Order totals per currency.
    async fn revenue(&self) -> Vec<Money> {
        money(&self.record.profile.revenue)
    }

    /// Refunds per currency.
    async fn refunded(&self) -> Vec<Money> {
        money(&self.record.profile.refunded)
    }

    /// The average order value in each currency ordered in.
    async fn average_order_value(&self) -> Vec<Money> {
        let p = &self.record.profile;
        p.revenue
            .keys()
            .filter_map(|c| {
                p.average_order_value(c).map(|minor| Money {
                    currency: c.clone(),
                    minor,
                })
            })
            .collect()
    }

    /// The first order's time.
    async fn first_order_at(&self) -> Option<DateTime<Utc>> {
        self.record.profile.first_order_at
    }

    /// The last order's time.
    async fn last_order_at(&self) -> Option<DateTime<Utc>> {
        self.record.profile.last_order_at
    }

    /// Spend per product category, most first.
    async fn favourite_categories(
        &self,
        #[graphql(default = 5)] first: usize,
    ) -> Vec<CategorySpend> {
        let mut spend: Vec<CategorySpend> = self
            .record
            .profile
            .category_spend
            .iter()
            .map(|(category, minor)| CategorySpend {
                category: category.clone(),
                spend_minor: *minor,
            })
            .collect();
        spend.sort_by(|a, b| {
            b.spend_minor
                .cmp(&a.spend_minor)
                .then(a.category.cmp(&b.category))
        });
        spend.truncate(first);
        spend
    }

    /// Share of orders with a discount, 0-1.
    async fn promotion_sensitivity(&self) -> Option<f64> {
        self.record.profile.promotion_sensitivity()
    }

    /// Current consent per purpose.
    async fn consent(&self) -> Vec<ConsentState> {
        self.record
            .profile
            .consent
            .iter()
            .map(|(purpose, c)| ConsentState {
                purpose: serde_json::to_value(purpose)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                granted: c.granted,
                at: c.at,
            })
            .collect()
    }

    /// The value tier, as of the last scoring run.
    async fn tier(&self) -> Option<&str> {
        self.record.scores.as_ref().map(|s| s.tier.as_str())
    }

    /// The lifecycle stage, as of the last scoring run.
    async fn stage(&self) -> Option<&str> {
        self.record.scores.as_ref().map(|s| s.stage.as_str())
    }

    /// RFM scores, for customers with orders in the scoring window.
    async fn rfm(&self) -> Option<Rfm> {
        let s = self.record.scores.as_ref()?;
        let (r, f, m) = s.rfm?;
        Some(Rfm {
            r,
            f,
            m,
            segment: s.rfm_segment.clone(),
            recency_days: s.recency_days,
            frequency: s.frequency,
            monetary_minor: s.monetary_minor,
        })
    }

    /// Tags, in name order.
    async fn tags(&self) -> &[String] {
        &self.record.tags
    }

    /// Saved segments the customer belongs to, in name order.
    async fn segments(&self) -> &[String] {
        &self.record.segments
    }

    /// Traits: the clear ones (city, province, gender) always; the personal ones (name,
    /// birthday, ...) masked unless the caller's role may read them (such reads are logged).
    #[graphql(complexity = 100)]
    async fn traits(&self, ctx: &Context<'_>) -> Result<Json<Map<String, Value>>> {
        let mut traits = Map::new();
        if !self.record.profile.erased {
            let (history, unmasked) = self.history(ctx, "traits").await?;
            let mut updates: Vec<&HistoryEvent> = history
                .iter()
                .filter(|e| e.event_type == "traits_updated")
                .collect();
            updates.sort_by_key(|e| e.occurred_at);
            for event in updates {
                let Some(Value::Object(action)) = event.payload.get("action") else {
                    continue;
                };
                for (name, value) in action {
                    if name == "type" {
                        continue;
                    }
                    let value = if unmasked {
                        value.clone()
                    } else {
                        mask::trait_value(name, value)
                    };
                    traits.insert(name.clone(), value);
                }
            }
        }
        for (name, t) in &self.record.profile.traits {
            traits.insert(name.clone(), Value::String(t.value.clone()));
        }
        Ok(Json(traits))
    }

    /// Identifiers, masked unless the caller's role may read personal data (such reads are
    /// logged). Empty once erased.
    #[graphql(complexity = 100)]
    async fn identifiers(&self, ctx: &Context<'_>) -> Result<Vec<CustomerIdentifier>> {
        if self.record.profile.erased {
            return Ok(Vec::new());
        }
        let (history, unmasked) = self.history(ctx, "identifiers").await?;
        let mut seen = std::collections::BTreeSet::new();
        for event in touchpoint_events(&history) {
            let Some(list) = event.payload.get("identifiers").and_then(Value::as_array) else {
                continue;
            };
            for item in list {
                if let (Some(kind), Some(value)) = (
                    item.get("kind").and_then(Value::as_str),
                    item.get("value").and_then(Value::as_str),
                ) {
                    seen.insert((kind.to_owned(), value.to_owned()));
                }
            }
        }
        Ok(seen
            .into_iter()
            .map(|(kind, value)| CustomerIdentifier {
                value: if unmasked {
                    value
                } else {
                    mask::identifier(&kind, &value)
                },
                masked: !unmasked,
                kind,
            })
            .collect())
    }

    /// Customers merged into this one (and not separated again since), oldest first.
    #[graphql(complexity = 100)]
    async fn merged_from(&self, ctx: &Context<'_>) -> Result<Vec<Merge>> {
        require(ctx, Role::Viewer)?;
        let loaders = ctx.data::<Loaders>()?;
        let history = loaders
            .histories
            .load_one(self.id)
            .await
            .map_err(crate::backend_error)?
            .unwrap_or_default();
        // A merge undone later is no longer a merge of this customer.
        let undone = |absorbed: &str, after: u64| {
            history.iter().any(|u| {
                u.event_type == "merge_undone"
                    && u.customer == self.id
                    && u.position > after
                    && u.payload.get("other").and_then(Value::as_str) == Some(absorbed)
            })
        };
        Ok(history
            .iter()
            .filter(|e| e.event_type == "customer_merged" && e.customer == self.id)
            .filter_map(|e| {
                let absorbed = e.payload.get("absorbed")?.as_str()?;
                if undone(absorbed, e.position) {
                    return None;
                }
                Some(Merge {
                    absorbed: ID(absorbed.to_owned()),
                    at: e.recorded_at,
                    actor: e.actor.clone(),
                    reason: e.reason.clone(),
                })
            })
            .collect())
    }

    /// The customer's events (and those of customers merged into it), newest first,
    /// filtered, a page at a time.
    #[graphql(complexity = "100 + page_complexity(first, child_complexity)")]
    async fn timeline(
        &self,
        ctx: &Context<'_>,
        filter: Option<TimelineFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, TimelineEvent, EmptyFields, EmptyFields>> {
        let first = page_size(first, 50)?;
        let before_position = after.as_deref().map(cursor::decode_position).transpose()?;
        let (history, unmasked) = self.history(ctx, "timeline").await?;
        let filter = filter.unwrap_or_default();
        let mut matching = history
            .iter()
            .rev()
            .filter(|e| before_position.is_none_or(|p| e.position < p))
            .filter(|e| filter.admits(e));
        let page: Vec<&HistoryEvent> = matching.by_ref().take(first).collect();
        let has_next = matching.next().is_some();
        let mut connection = Connection::new(before_position.is_some(), has_next);
        connection.edges.extend(page.into_iter().map(|e| {
            Edge::new(
                cursor::encode_position(e.position),
                TimelineEvent {
                    position: e.position,
                    event_id: ID(e.event_id.to_string()),
                    event_type: e.event_type.clone(),
                    occurred_at: e.occurred_at,
                    recorded_at: e.recorded_at,
                    channel: e.channel.clone(),
                    source: e.source.clone(),
                    actor: e.actor.clone(),
                    // Free text typed by a person may name anyone.
                    reason: if unmasked {
                        e.reason.clone()
                    } else {
                        e.reason.as_ref().map(|_| "****".to_owned())
                    },
                    customer: ID(e.customer.to_string()),
                    payload: Json(if unmasked {
                        e.payload.clone()
                    } else {
                        masked_payload(&e.payload)
                    }),
                },
            )
        }));
        Ok(connection)
    }
}

/// A customer's profile at a time, as the log knew it at a time (see `customerAsOf`).
pub struct ProfileAsOf {
    /// The customer asked for.
    pub id: Uuid,
    /// The time the profile is of.
    pub at: DateTime<Utc>,
    /// The time the log is read as of (now when absent).
    pub known_at: Option<DateTime<Utc>>,
    /// The profile.
    pub profile: patron_projections::profile::Profile,
}

#[async_graphql::Object]
impl ProfileAsOf {
    /// The customer asked for.
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }

    /// The time the profile is of: touchpoints that happened by then count.
    async fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// The time the log is read as of: events stored after it (late offline data,
    /// corrections) do not count. Null: now.
    async fn known_at(&self) -> Option<DateTime<Utc>> {
        self.known_at
    }

    /// The first touchpoint's time.
    async fn first_seen(&self) -> Option<DateTime<Utc>> {
        self.profile.first_seen
    }

    /// The last touchpoint's time, by then.
    async fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.profile.last_seen
    }

    /// Touchpoints by then, all channels.
    async fn touchpoints(&self) -> u64 {
        self.profile.touchpoints
    }

    /// Touchpoints per channel, most first.
    async fn channels(&self) -> Vec<Count> {
        counts(&self.profile.by_channel)
    }

    /// Touchpoints per event type, most first.
    async fn event_types(&self) -> Vec<Count> {
        counts(&self.profile.by_type)
    }

    /// Orders placed by then.
    async fn orders(&self) -> u64 {
        self.profile.orders
    }

    /// Order totals per currency, by then.
    async fn revenue(&self) -> Vec<Money> {
        money(&self.profile.revenue)
    }

    /// The last order's time, by then.
    async fn last_order_at(&self) -> Option<DateTime<Utc>> {
        self.profile.last_order_at
    }
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> Vec<Count> {
    let mut counts: Vec<Count> = map
        .iter()
        .map(|(name, n)| Count {
            name: name.clone(),
            touchpoints: *n,
        })
        .collect();
    counts.sort_by(|a, b| b.touchpoints.cmp(&a.touchpoints).then(a.name.cmp(&b.name)));
    counts
}

fn money(map: &std::collections::BTreeMap<String, i64>) -> Vec<Money> {
    map.iter()
        .map(|(currency, minor)| Money {
            currency: currency.clone(),
            minor: *minor,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masked_payloads_hide_identifiers_traits_and_properties() {
        let payload = json!({
            "channel": "store",
            "identifiers": [{"kind": "phone", "value": "+8613812345678"}],
            "properties": {"note": "call after 6"},
            "action": {"type": "traits_updated", "name": "Li Wei", "city": "Shanghai"}
        });
        let masked = masked_payload(&payload);
        assert_eq!(masked["identifiers"][0]["value"], "138****5678");
        let merged = json!({"absorbed": "x", "evidence": [
            {"kind": "email", "value": "zhang@example.cn"},
            {"identifier": {"kind": "phone", "value": "+8613812345678"}}
        ]});
        let masked_merge = masked_payload(&merged);
        assert_eq!(masked_merge["evidence"][0]["value"], "z****@example.cn");
        assert_eq!(
            masked_merge["evidence"][1]["identifier"]["value"],
            "138****5678"
        );
        assert_eq!(masked["properties"]["note"], "c****");
        assert_eq!(masked["action"]["name"], "L****");
        assert_eq!(masked["action"]["city"], "Shanghai");
        assert_eq!(masked["channel"], "store");
    }
}
