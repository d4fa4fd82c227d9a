//! The queries: customers, segments, distributions, the quarantine and API keys.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, Object, Result, SimpleObject, ID};
use uuid::Uuid;

use crate::access::{api_error, codes, require, ApiKey, Role};
use crate::analytics::Analytics;
use crate::analytics::POPULATION_COMPLEXITY;
use crate::backend::{
    Backend, Bucket, CustomerSort, Dimension, Purpose, QuarantineRecord, SegmentRecord,
};
use crate::customer::{page_complexity, page_size, Customer};
use crate::{backend_error, cursor};

/// The most `customerByIdentifier` lookups one request may make.
pub const MAX_LOOKUPS: usize = 5;

/// A page of customers, with how many match in all when known.
#[derive(SimpleObject)]
pub struct CustomerTotal {
    /// Customers matching, in all (null when counting them would cost a scan).
    pub total_count: Option<u64>,
}

/// A list of customers, a page at a time.
pub type CustomerConnection = Connection<String, Customer, CustomerTotal, EmptyFields>;

pub(crate) fn parse_id(id: &ID) -> Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| {
        api_error(
            codes::INVALID_ARGUMENT,
            format!("`id`: {:?} is not a customer id (a UUID)", id.as_str()),
        )
    })
}

pub(crate) fn backend(ctx: &Context<'_>) -> Result<Arc<dyn Backend>> {
    Ok(ctx.data::<Arc<dyn Backend>>()?.clone())
}

/// A saved segment.
pub struct Segment(pub SegmentRecord);

#[Object]
impl Segment {
    /// Its name.
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// Its rule, in the segment rule language.
    async fn rule(&self) -> &str {
        &self.0.rule
    }

    /// The consent purpose it is for: only customers who consent to it are members.
    async fn purpose(&self) -> Option<Purpose> {
        self.0.purpose
    }

    /// Members as of the last refresh (kept current as events arrive).
    async fn size(&self) -> u64 {
        self.0.size
    }

    /// Members, in customer id order, a page at a time.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn members(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<CustomerConnection> {
        let first = page_size(first, 50)?;
        let after = after.as_deref().map(cursor::decode_customer).transpose()?;
        let mut ids = backend(ctx)?
            .segment_members(&self.0.name, after, first + 1)
            .await
            .map_err(backend_error)?;
        let has_next = ids.len() > first;
        ids.truncate(first);
        let mut connection = Connection::with_additional_fields(
            after.is_some(),
            has_next,
            CustomerTotal {
                total_count: Some(self.0.size),
            },
        );
        for customer in Customer::load_many(ctx, &ids).await? {
            let id = customer.uuid();
            connection
                .edges
                .push(Edge::new(cursor::encode_customer(id), customer));
        }
        Ok(connection)
    }
}

/// A segment rule's size, without saving it.
#[derive(SimpleObject)]
pub struct SegmentPreview {
    /// The rule, as given.
    pub rule: String,
    /// Live customers it selects now.
    pub size: u64,
}

/// The root of every read.
pub struct Query;

#[Object]
impl Query {
    /// Customer analytics: cohorts, funnels, paths, attribution, lifetime value, product
    /// associations, campaign effect and data quality (analyst role).
    async fn analytics(&self, ctx: &Context<'_>) -> Result<Analytics> {
        require(ctx, Role::Analyst)?;
        Ok(Analytics)
    }

    /// The calling key.
    async fn me(&self, ctx: &Context<'_>) -> Result<ApiKey> {
        Ok(require(ctx, Role::Viewer)?.clone())
    }

    /// A customer by id; the id of a customer merged into another reads the survivor.
    async fn customer(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Customer>> {
        require(ctx, Role::Viewer)?;
        let id = parse_id(&id)?;
        match backend(ctx)?
            .live_customer(id)
            .await
            .map_err(backend_error)?
        {
            Some(live) => Customer::load(ctx, live).await,
            None => Ok(None),
        }
    }

    /// A customer's profile as it was at `at`, as the log knew it at `knownAt` (now when
    /// absent): with `knownAt` = `at`, what anyone could have seen then; without it, what the
    /// log now says the customer was then (late offline data and corrections included). Both
    /// are replays of the log. Null if the customer did not exist then.
    async fn customer_as_of(
        &self,
        ctx: &Context<'_>,
        id: ID,
        at: chrono::DateTime<chrono::Utc>,
        known_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Option<crate::customer::ProfileAsOf>> {
        require(ctx, Role::Viewer)?;
        let id = parse_id(&id)?;
        let profile = backend(ctx)?
            .profile_as_of(id, at, known_at)
            .await
            .map_err(backend_error)?;
        Ok(profile.map(|profile| crate::customer::ProfileAsOf {
            id,
            at,
            known_at,
            profile,
        }))
    }

    /// The review queue: likely duplicates the identity rules did not merge, highest score
    /// first (operator role). `scanDuplicates` fills it.
    async fn duplicate_suggestions(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: usize,
    ) -> Result<Vec<crate::correction::DuplicateSuggestion>> {
        crate::correction::suggestions(ctx, first).await
    }

    /// Why an identifier (given as at ingestion) belongs to the customer holding it: the
    /// event that linked it, then each merge, with source, actor, reason and rules version
    /// (operator role).
    async fn explain_identifier(
        &self,
        ctx: &Context<'_>,
        kind: String,
        value: String,
    ) -> Result<crate::correction::IdentifierExplanation> {
        crate::correction::explain(ctx, &kind, &value).await
    }

    /// The customer holding an identifier, given as at ingestion (`kind: "phone", value:
    /// "138 1234 5678"`): it is normalized the same way. At most [`MAX_LOOKUPS`] per request
    /// (`TOO_MANY_LOOKUPS`), and within the key's budget over time
    /// (`LOOKUP_BUDGET_EXHAUSTED`: 30 an hour for viewers by default); each is written to the
    /// access log. Lookups could otherwise guess the hidden digits of a masked value.
    async fn customer_by_identifier(
        &self,
        ctx: &Context<'_>,
        kind: String,
        value: String,
    ) -> Result<Option<Customer>> {
        let key = require(ctx, Role::Viewer)?;
        let loaders = ctx.data::<crate::loader::Loaders>()?;
        if loaders
            .lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            >= MAX_LOOKUPS
        {
            return Err(api_error(
                codes::TOO_MANY_LOOKUPS,
                format!("at most {MAX_LOOKUPS} identifier lookups per request"),
            ));
        }
        let backend = backend(ctx)?;
        backend.spend_lookup(key).await.map_err(backend_error)?;
        let found = backend
            .customer_by_identifier(&kind, &value)
            .await
            .map_err(backend_error)?;
        backend
            .log_access(
                key,
                found.unwrap_or_else(Uuid::nil),
                &format!("lookup:{kind}"),
            )
            .await
            .map_err(backend_error)?;
        match found {
            Some(live) => Customer::load(ctx, live).await,
            None => Ok(None),
        }
    }

    /// Live customers, optionally filtered by a segment rule (for example `tier =
    /// "high_value" and city = "Shanghai"`), sorted, a page at a time.
    #[graphql(
        complexity = "page_complexity(first, child_complexity).saturating_add(\
        if filter.is_some() || sort != CustomerSort::Id { POPULATION_COMPLEXITY } else { 0 })"
    )]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        filter: Option<String>,
        #[graphql(default_with = "CustomerSort::Id")] sort: CustomerSort,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<CustomerConnection> {
        require(ctx, Role::Viewer)?;
        let first = page_size(first, 50)?;
        if filter.is_none() && sort == CustomerSort::Id {
            // Every customer in id order: read a page at a time from the customer after the
            // cursor's, however deep the page.
            let after = after.as_deref().map(cursor::decode_customer).transpose()?;
            let count = ctx.look_ahead().field("totalCount").exists();
            let page = backend(ctx)?
                .list(after, first, count)
                .await
                .map_err(backend_error)?;
            let mut connection = Connection::with_additional_fields(
                after.is_some(),
                page.has_more,
                CustomerTotal {
                    total_count: page.total,
                },
            );
            for customer in Customer::load_many(ctx, &page.ids).await? {
                let id = customer.uuid();
                connection
                    .edges
                    .push(Edge::new(cursor::encode_customer(id), customer));
            }
            return Ok(connection);
        }
        let offset = after.as_deref().map(cursor::decode_offset).transpose()?;
        let start = offset.unwrap_or(0);
        let page = backend(ctx)?
            .search(filter.as_deref(), sort, start, first)
            .await
            .map_err(backend_error)?;
        let mut connection = Connection::with_additional_fields(
            start > 0,
            page.has_more,
            CustomerTotal {
                total_count: page.total,
            },
        );
        for (i, customer) in Customer::load_many(ctx, &page.ids)
            .await?
            .into_iter()
            .enumerate()
        {
            connection
                .edges
                .push(Edge::new(cursor::encode_offset(start + i + 1), customer));
        }
        Ok(connection)
    }

    /// Saved segments, by name.
    async fn segments(&self, ctx: &Context<'_>) -> Result<Vec<Segment>> {
        require(ctx, Role::Viewer)?;
        Ok(backend(ctx)?
            .segments()
            .await
            .map_err(backend_error)?
            .into_iter()
            .map(Segment)
            .collect())
    }

    /// A saved segment by name.
    async fn segment(&self, ctx: &Context<'_>, name: String) -> Result<Option<Segment>> {
        require(ctx, Role::Viewer)?;
        Ok(backend(ctx)?
            .segments()
            .await
            .map_err(backend_error)?
            .into_iter()
            .find(|s| s.name == name)
            .map(Segment))
    }

    /// How many live customers a rule selects now, without saving it. An invalid rule is
    /// refused with `INVALID_RULE` and a message pointing at the bad part.
    #[graphql(complexity = "POPULATION_COMPLEXITY.saturating_add(child_complexity)")]
    async fn preview_segment(&self, ctx: &Context<'_>, rule: String) -> Result<SegmentPreview> {
        require(ctx, Role::Viewer)?;
        let size = backend(ctx)?
            .preview_segment(&rule)
            .await
            .map_err(backend_error)?;
        Ok(SegmentPreview { rule, size })
    }

    /// Live customers per value of a dimension, most first.
    #[graphql(complexity = "POPULATION_COMPLEXITY.saturating_add(child_complexity)")]
    async fn distribution(&self, ctx: &Context<'_>, dimension: Dimension) -> Result<Vec<Bucket>> {
        require(ctx, Role::Viewer)?;
        let mut buckets = backend(ctx)?
            .distribution(dimension)
            .await
            .map_err(backend_error)?;
        buckets.sort_by(|a, b| b.customers.cmp(&a.customers).then(a.value.cmp(&b.value)));
        Ok(buckets)
    }

    /// Records refused at ingestion, oldest first (operator role: they hold raw personal
    /// data until they expire).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn quarantine(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, QuarantineRecord, EmptyFields, EmptyFields>> {
        let key = require(ctx, Role::Operator)?;
        let first = page_size(first, 50)?;
        let after_id = after.as_deref().map(cursor::decode_offset).transpose()?;
        // Quarantined records are raw, personal data included: the read is logged.
        backend(ctx)?
            .log_access(key, Uuid::nil(), "quarantine")
            .await
            .map_err(backend_error)?;
        let mut records = backend(ctx)?
            .quarantine(after_id.unwrap_or(0) as u64, first + 1)
            .await
            .map_err(backend_error)?;
        let has_next = records.len() > first;
        records.truncate(first);
        let mut connection = Connection::new(after_id.is_some(), has_next);
        connection.edges.extend(
            records
                .into_iter()
                .map(|r| Edge::new(cursor::encode_offset(r.id as usize), r)),
        );
        Ok(connection)
    }

    /// API keys, revoked ones included (admin role).
    async fn api_keys(&self, ctx: &Context<'_>) -> Result<Vec<ApiKey>> {
        require(ctx, Role::Admin)?;
        backend(ctx)?.keys().await.map_err(backend_error)
    }
}
