//! The subscriptions, over websockets: customers updated and segment entries and exits, as
//! they happen.

use async_graphql::{Context, Result, SimpleObject, Subscription as GqlSubscription, ID};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use crate::access::{require_subscriber, Role};
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
        require_subscriber(ctx, Role::Viewer)?;
        let only: Option<Uuid> = id.as_ref().map(parse_id).transpose()?;
        Ok(backend(ctx)?
            .changes()
            .filter_map(move |change| async move {
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
            }))
    }

    /// Entries into and exits from saved segments: one segment's, or every segment's.
    async fn segment_membership_changed(
        &self,
        ctx: &Context<'_>,
        segment: Option<String>,
    ) -> Result<impl Stream<Item = SegmentMembershipChanged>> {
        require_subscriber(ctx, Role::Viewer)?;
        Ok(backend(ctx)?.changes().filter_map(move |change| {
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
        }))
    }
}
