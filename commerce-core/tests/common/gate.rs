//! A transaction hook that parks transactions just before commit, to line up races
//! deterministically.

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commerce_core::{CoreEvent, TransactionHook};
use sqlx::PgConnection;
use tokio::sync::Barrier;

/// Once armed, holds every transaction whose events match `filter` until `parties` of them
/// have arrived (or 3 s passed, so a fixed build cannot hang), then lets them all commit.
#[derive(Clone)]
pub struct Gate {
    armed: Arc<AtomicBool>,
    barrier: Arc<Barrier>,
    filter: fn(&CoreEvent) -> bool,
}

impl Gate {
    /// A gate for `parties` transactions that emit an event matching `filter`.
    pub fn new(parties: usize, filter: fn(&CoreEvent) -> bool) -> Self {
        Self {
            armed: Arc::new(AtomicBool::new(false)),
            barrier: Arc::new(Barrier::new(parties)),
            filter,
        }
    }

    /// Holds transactions that served a backorder.
    pub fn on_backorder_allocation(parties: usize) -> Self {
        Self::new(parties, |e| {
            matches!(e, CoreEvent::BackorderAllocated { .. })
        })
    }

    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

#[async_trait]
impl TransactionHook for Gate {
    async fn before_commit(
        &self,
        _conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn Error + Send + Sync>> {
        if self.armed.load(Ordering::SeqCst) && events.iter().any(self.filter) {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.barrier.wait()).await;
        }
        Ok(())
    }
}
