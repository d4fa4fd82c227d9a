//! Batch loading: every customer a request names is read in one batch per table, however
//! deep in the query it is named, and each customer's history is read once per request.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use futures::future::BoxFuture;
use uuid::Uuid;

use crate::backend::{Backend, BackendError, CustomerRecord, HistoryEvent};

/// Loads customers' read models in batches.
pub struct CustomerLoader(pub Arc<dyn Backend>);

impl Loader<Uuid> for CustomerLoader {
    type Value = Arc<CustomerRecord>;
    type Error = BackendError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        Ok(self
            .0
            .customers(keys)
            .await?
            .into_iter()
            .map(|(id, record)| (id, Arc::new(record)))
            .collect())
    }
}

/// Loads customers' opened histories.
pub struct HistoryLoader(pub Arc<dyn Backend>);

impl Loader<Uuid> for HistoryLoader {
    type Value = Arc<Vec<HistoryEvent>>;
    type Error = BackendError;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let mut found = HashMap::with_capacity(keys.len());
        for key in keys {
            found.insert(*key, Arc::new(self.0.history(*key).await?));
        }
        Ok(found)
    }
}

/// The loaders of one request (or one websocket connection): their caches live as long as it.
pub struct Loaders {
    /// Customers' read models.
    pub customers: DataLoader<CustomerLoader, HashMapCache>,
    /// Customers' histories.
    pub histories: DataLoader<HistoryLoader, HashMapCache>,
    /// Identifier lookups made by this request so far.
    pub lookups: std::sync::atomic::AtomicUsize,
}

impl Loaders {
    /// Loaders over `backend`, spawning their batches with `spawn` (for example
    /// `tokio::spawn`).
    pub fn new<S>(backend: Arc<dyn Backend>, spawn: S) -> Self
    where
        S: Fn(BoxFuture<'static, ()>) + Send + Sync + Clone + 'static,
    {
        let delay = std::time::Duration::from_micros(200);
        Self {
            customers: DataLoader::with_cache(
                CustomerLoader(backend.clone()),
                spawn.clone(),
                HashMapCache::default(),
            )
            .delay(delay),
            histories: DataLoader::with_cache(
                HistoryLoader(backend),
                spawn,
                HashMapCache::default(),
            )
            .delay(delay),
            lookups: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}
