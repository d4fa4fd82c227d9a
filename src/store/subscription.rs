//! Catch-up subscriptions: read the log from a position, then follow it as it grows.

use std::time::Duration;

use patron_domain::{Position, RecordedEvent};
use tokio::sync::watch;

use super::{EventStore, Result};

/// Reads the whole log in position order, batch by batch, and waits for more when caught up.
///
/// Positions are assigned in commit order on both backends, so reading every position after the
/// last one seen never skips an event that committed late.
pub struct Subscription {
    store: EventStore,
    after: Position,
    batch_size: usize,
    head: watch::Receiver<Position>,
    poll_interval: Duration,
}

impl Subscription {
    pub(super) fn new(store: EventStore, after: Position, batch_size: usize) -> Self {
        let head = store.head_watch();
        let poll_interval = store.poll_interval;
        Self {
            store,
            after,
            batch_size,
            head,
            poll_interval,
        }
    }

    /// The position of the last event handed out (or the starting point).
    pub fn position(&self) -> Position {
        self.after
    }

    /// The next batch of events, waiting until there is at least one. Appends through this
    /// process wake it at once; appends by other processes are seen within the poll interval.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>> {
        loop {
            if let Some(batch) = self.try_next_batch().await? {
                return Ok(batch);
            }
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(self.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// The next batch if there is one now, without waiting.
    pub async fn try_next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>> {
        self.head.borrow_and_update();
        let batch = self.store.read_all(self.after, self.batch_size).await?;
        match batch.last() {
            Some(last) => {
                self.after = last.position;
                Ok(Some(batch))
            }
            None => Ok(None),
        }
    }
}
