//! The subscriptions, over websockets: customers updated and segment entries and exits, as
//! they happen.

use async_graphql::{Context, Result, SimpleObject, Subscription as GqlSubscription, ID};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use std::sync::Arc;

use crate::access::{require_subscriber, Role};
use crate::backend::Backend;
use crate::backend::Change;
use crate::query::{backend, parse_id};

/// A customer's profile was updated.
#[derive(Clone, Debug, SimpleObject)]
pub struct CustomerUpdated {
    /// The customer.
    pub customer: ID,
    /// The log position the profile now reflects.
    pub position: u64,
}

/// A customer entered or left a segment.
#[derive(Clone, Debug, SimpleObject)]
pub struct SegmentMembershipChanged {
    /// The segment.
    pub segment: String,
    /// The customer.
    pub customer: ID,
    /// Entered (`true`) or left.
    pub entered: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// How long a subscription trusts that its key is still live before asking again (when it
/// next has something to send).
pub const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// `stream`, ended at its first item after the key `key` was revoked.
fn while_key_live<T: Send + 'static>(
    backend: Arc<dyn Backend>,
    key: Uuid,
    stream: impl Stream<Item = T> + Send + 'static,
) -> impl Stream<Item = T> {
    let checked = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    stream
        .then(move |item| {
            let backend = backend.clone();
            let checked = checked.clone();
            async move {
                let due = checked
                    .lock()
                    .map(|at| at.elapsed() >= KEY_RECHECK)
                    .unwrap_or(true);
                if !due {
                    return (item, true);
                }
                let live = backend.key_is_live(key).await.unwrap_or(false);
                if let Ok(mut at) = checked.lock() {
                    *at = std::time::Instant::now();
                }
                (item, live)
            }
        })
        .take_while(|(_, live)| futures::future::ready(*live))
        .map(|(item, _)| item)
}

/// The root of every subscription.
pub struct Subscription;

#[GqlSubscription]
impl Subscription {
    /// Profiles updated by new events: one customer's, or everyone's.
    async fn customer_updated(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
    ) -> Result<impl Stream<Item = CustomerUpdated>> {
        let key = require_subscriber(ctx, Role::Viewer)?.id;
        let only: Option<Uuid> = id.as_ref().map(parse_id).transpose()?;
        let backend = backend(ctx)?;
        let changes = backend.changes().filter_map(move |change| async move {
            match change {
                Change::CustomerUpdated { customer, position }
                    if only.is_none_or(|o| o == customer) =>
                {
                    Some(CustomerUpdated {
                        customer: ID(customer.to_string()),
                        position,
                    })
                }
                _ => None,
            }
        });
        Ok(while_key_live(backend, key, changes))
    }

    /// Entries into and exits from saved segments: one segment's, or every segment's.
    async fn segment_membership_changed(
        &self,
        ctx: &Context<'_>,
        segment: Option<String>,
    ) -> Result<impl Stream<Item = SegmentMembershipChanged>> {
        let key = require_subscriber(ctx, Role::Viewer)?.id;
        let backend = backend(ctx)?;
        let changes = backend.changes().filter_map(move |change| {
            let segment = segment.clone();
            async move {
                match change {
                    Change::Membership(m) if segment.as_ref().is_none_or(|s| *s == m.segment) => {
                        Some(SegmentMembershipChanged {
                            segment: m.segment,
                            customer: ID(m.customer.to_string()),
                            entered: m.entered,
                            at: m.at,
                        })
                    }
                    _ => None,
                }
            }
        });
        Ok(while_key_live(backend, key, changes))
    }
}
