//! Live order status: a transaction hook notifies Postgres of every status change (delivered
//! at commit, to every instance), one listener per process fans the notifications out, and
//! each event stream reads the order's new history rows when told (or every second, so a
//! lost notification only delays an event).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use async_trait::async_trait;
use axum::response::sse::{Event, KeepAlive, Sse};
use commerce_core::{Commerce, CoreEvent, OrderId, TransactionHook};
use futures::Stream;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::OrderState;

/// The Postgres channel status changes are announced on (payload: the order id).
pub const CHANNEL: &str = "commerce_order_status";

/// How often a stream re-reads the history when no notification came.
const POLL: Duration = Duration::from_secs(1);

/// Status changes of orders as they commit, fanned out to this process's event streams.
#[derive(Debug, Clone)]
pub struct StatusFeed {
    sender: broadcast::Sender<OrderId>,
}

impl Default for StatusFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusFeed {
    /// A feed nothing feeds yet (see [`StatusFeed::listen`]).
    #[must_use]
    pub fn new() -> Self {
        // A slow stream that lags behind only re-reads its order's history.
        Self {
            sender: broadcast::channel(4096).0,
        }
    }

    /// Orders whose status changed from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<OrderId> {
        self.sender.subscribe()
    }

    /// Listens on [`CHANNEL`] until `shutdown`, reconnecting after a lost connection.
    pub fn listen(&self, pool: PgPool, shutdown: CancellationToken, tasks: &TaskTracker) {
        let sender = self.sender.clone();
        tasks.spawn(async move {
            while !shutdown.is_cancelled() {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "order status listener cannot connect; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
                if let Err(error) = listener.listen(CHANNEL).await {
                    tracing::warn!(%error, "LISTEN {CHANNEL} failed; retrying");
                    continue;
                }
                loop {
                    let notification = tokio::select! {
                        () = shutdown.cancelled() => return,
                        n = listener.recv() => n,
                    };
                    match notification {
                        Ok(n) => {
                            if let Ok(id) = Uuid::parse_str(n.payload()) {
                                // No receiver is fine: nobody watches.
                                let _ = sender.send(OrderId(id));
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "order status listener lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// Announces every order whose status a transaction changed, on [`CHANNEL`], delivered only
/// if the transaction commits.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotifyStatusChanges;

#[async_trait]
impl TransactionHook for NotifyStatusChanges {
    async fn before_commit(
        &self,
        conn: &mut PgConnection,
        events: &[CoreEvent],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut orders: Vec<Uuid> = events
            .iter()
            .filter_map(|event| match event {
                CoreEvent::OrderPlaced { order, .. }
                | CoreEvent::OrderStatusChanged { order, .. }
                | CoreEvent::OrderCancelled { order, .. } => Some(order.0),
                _ => None,
            })
            .collect();
        orders.sort_unstable();
        orders.dedup();
        if !orders.is_empty() {
            sqlx::query("SELECT pg_notify($1, id::text) FROM UNNEST($2::uuid[]) AS t(id)")
                .bind(CHANNEL)
                .bind(&orders)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

/// Where one event stream stands.
struct Watch {
    commerce: Commerce,
    order: OrderId,
    updates: broadcast::Receiver<OrderId>,
    shutdown: CancellationToken,
    /// History rows already sent.
    sent: usize,
    started: bool,
    pending: VecDeque<commerce_core::StatusChange>,
    finished: bool,
}

impl Watch {
    /// The next event, or `None` when the stream ends (final status, shutdown, or a
    /// database error, which is logged).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                if change.to.is_final() {
                    self.finished = true;
                    self.pending.clear();
                }
                let view = super::history_view(&change);
                return Event::default()
                    .event("status")
                    .id(self.sent.to_string())
                    .json_data(view)
                    .ok();
            }
            if self.finished {
                return None;
            }
            if self.started {
                tokio::select! {
                    () = self.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(POLL) => {}
                    update = self.updates.recv() => match update {
                        Ok(order) if order != self.order => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                        // Ours, or missed some (lagged): read the history either way.
                        _ => {}
                    },
                }
            }
            let history = match self.commerce.order_history(self.order).await {
                Ok(history) => history,
                Err(error) => {
                    tracing::warn!(%error, order = %self.order, "order event stream ends");
                    return None;
                }
            };
            if self.started {
                self.pending.extend(history.iter().skip(self.sent).cloned());
            } else {
                // The current status first.
                self.started = true;
                self.pending.extend(history.last().cloned());
            }
            self.sent = history.len();
        }
    }
}

/// The event stream of `order`.
pub(super) fn stream(
    state: &OrderState,
    order: OrderId,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribed before the first read, so no change between the two is missed.
    let watch = Watch {
        commerce: state.commerce.clone(),
        order,
        updates: state.feed.subscribe(),
        shutdown: state.shutdown.clone(),
        sent: 0,
        started: false,
        pending: VecDeque::new(),
        finished: false,
    };
    let events = futures::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((Ok(event), watch))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
