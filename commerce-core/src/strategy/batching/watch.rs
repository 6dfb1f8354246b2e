//! The sold-out fast path's source of truth: Postgres's `commerce_stock` notifications.
//!
//! The rule: a product may be turned away in memory only when a batch saw it with no stock
//! **and** nothing may have raised its stock since. "Since" is tracked with a generation
//! counter that every notification (any product: increases are rare next to orders) and
//! every loss of the listener's connection bumps. A batch notes the generation *before* it
//! reads or writes the product; its figure counts only while the generation is unchanged and
//! the listener is connected. A receipt that commits after the batch's read therefore either
//! bumps the generation before the figure is used, or is seen by the next batch, never lost.
//! Between the receipt's commit and the notification's arrival (a few milliseconds) an order
//! may still be turned away, as it could have been a moment earlier.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::oneshot;

use super::plan::Figures;

/// The channel the migration's trigger notifies.
const CHANNEL: &str = "commerce_stock";

/// Listens for stock increases while it lives.
pub(super) struct StockWatch {
    state: Arc<State>,
    /// Dropped with the watch: stops the listener task.
    _stop: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    generation: AtomicU64,
    connected: AtomicBool,
}

impl StockWatch {
    /// Starts listening on `pool`'s database (in a task of the current runtime).
    pub(super) fn start(pool: PgPool) -> Self {
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(listen(pool, Arc::clone(&state), stopped));
        Self { state, _stop: stop }
    }

    /// The generation to note before reading a product's figures; `None` while the listener
    /// is not connected (figures read then never enable the fast path).
    pub(super) fn generation(&self) -> Option<u64> {
        // Generation first: a disconnect bumps it after clearing `connected`.
        let generation = self.state.generation.load(Ordering::SeqCst);
        self.state
            .connected
            .load(Ordering::SeqCst)
            .then_some(generation)
    }

    /// Whether `figures` (of a product) still prove it sold out.
    pub(super) fn still_sold_out(&self, figures: Figures) -> bool {
        figures.available == 0
            && figures
                .generation
                .is_some_and(|seen| self.generation() == Some(seen))
    }
}

async fn listen(pool: PgPool, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if pool.is_closed() {
            return;
        }
        let listener = async {
            // A connection of its own, outside the application's pool (which it would
            // otherwise hold one of for good).
            let own = PgPoolOptions::new()
                .max_connections(1)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with((*pool.connect_options()).clone());
            let mut listener = PgListener::connect_with(&own).await?;
            listener.ignore_pool_close_event(true);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = &mut stop => return,
            listener = listener => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "stock listener cannot connect; sold-out fast path off");
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        // Subscribed: figures read from now on are covered by the notifications.
        state.generation.fetch_add(1, Ordering::SeqCst);
        state.connected.store(true, Ordering::SeqCst);
        loop {
            let next = tokio::select! {
                _ = &mut stop => return,
                () = pool.close_event() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(_)) => {
                    state.generation.fetch_add(1, Ordering::SeqCst);
                }
                // The connection was lost (notifications may have been missed), or failed.
                Ok(None) | Err(_) => {
                    state.connected.store(false, Ordering::SeqCst);
                    state.generation.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!("stock listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}
