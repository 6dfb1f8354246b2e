//! Live order status: a transaction hook notifies Postgres of every status change (delivered
//! at commit, to every instance), one listener per process fans the notifications out, and
//! each event stream reads the order's new history rows when told, and at least every second
//! whatever else is notified, so a lost notification only delays an event.
//!
//! An event's id is the position of its change in the order's history (1 for the first
//! status), which only ever grows: a client that reconnects with `Last-Event-ID` gets exactly
//! the changes after it. Streams are admitted up to caps per user and overall, read on a pool
//! of their own, and end after a maximum lifetime or when the token that opened them expires,
//! whichever comes first (the client reconnects).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::response::sse::{Event, KeepAlive, Sse};
use commerce_core::{Commerce, CoreEvent, OrderId, StatusChange, TransactionHook};
use futures::Stream;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::stream_admission::{StreamAdmission, StreamPermit};
use super::OrderState;
use crate::config::StreamSettings;
use crate::http::{ApiError, ApiResult};

/// The Postgres channel status changes are announced on (payload: the order id).
pub const CHANNEL: &str = "commerce_order_status";

/// The longest a stream goes without reading its order's history, notified or not.
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
                let listening = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(CHANNEL).await?;
                    Ok::<_, sqlx::Error>(listener)
                }
                .await;
                let mut listener = match listening {
                    Ok(listener) => listener,
                    Err(error) => {
                        // A second before the next try: a database that refuses us is not
                        // hammered in a loop.
                        tracing::warn!(%error, "order status listener cannot LISTEN {CHANNEL}; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                };
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

/// What the event streams share: the history reader on a pool of their own, the caps, the
/// lifetime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Streams {
    /// Reads the history on the streams' own pool: a thousand streams polling cannot take
    /// the connections requests need.
    history: Commerce,
    admission: StreamAdmission,
    max_lifetime: Duration,
}

impl Streams {
    /// Streams reading on `pool`, limited by `settings`.
    #[must_use]
    pub fn new(pool: PgPool, settings: &StreamSettings) -> Self {
        Self {
            history: Commerce::builder(pool).build(),
            admission: StreamAdmission::new(settings.max_per_user, settings.max_total),
            max_lifetime: settings.max_lifetime,
        }
    }
}

/// Where a stream starts: the event ids a client has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A new client: the current status first.
    Current,
    /// A client that saw the events up to this id (`Last-Event-ID`).
    After(usize),
}

impl Resume {
    /// From the `Last-Event-ID` header's value, if any.
    ///
    /// # Errors
    /// 400 `bad_request` for a value that is not an id this API gives out.
    pub fn from_header(value: Option<&axum::http::HeaderValue>) -> ApiResult<Self> {
        let Some(value) = value else {
            return Ok(Self::Current);
        };
        value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Self::After)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "Last-Event-ID must be the id of an event this stream sent (a number)",
                )
            })
    }
}

/// What to answer a request for an order's events.
#[derive(Debug)]
pub enum Opened<S> {
    /// The stream.
    Stream(Sse<S>),
    /// The client has seen the final event: nothing will follow (204 tells an `EventSource`
    /// to stop reconnecting).
    Finished,
}

/// Opens the event stream of `order` for `user`, whose token expires at `token_expires`.
///
/// # Errors
/// 429 `too_many_streams` beyond a cap; 400 `bad_request` for a `Last-Event-ID` beyond the
/// order's history; the history read's errors.
pub(super) async fn open(
    state: &OrderState,
    order: OrderId,
    user: &str,
    token_expires: SystemTime,
    resume: Resume,
) -> ApiResult<Opened<impl Stream<Item = Result<Event, Infallible>>>> {
    let permit = state
        .streams
        .admission
        .admit(user)
        .map_err(|refused| ApiError::too_many_streams(refused.limit(), refused.max()))?;
    // Subscribed before the first read, so no change between the two is missed.
    let updates = state.feed.subscribe();
    let history = state.commerce.order_history(order).await?;
    let sent = match resume {
        Resume::Current => history.len().saturating_sub(1),
        Resume::After(seen) if seen <= history.len() => seen,
        Resume::After(_) => {
            return Err(ApiError::bad_request(
                "Last-Event-ID is beyond this order's history: not an id of this stream",
            ))
        }
    };
    if sent == history.len() && history.last().is_some_and(|last| last.to.is_final()) {
        return Ok(Opened::Finished);
    }
    let token_left = token_expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let now = Instant::now();
    let mut watch = Watch {
        history: state.streams.history.clone(),
        order,
        updates,
        shutdown: state.shutdown.clone(),
        ends_at: now + state.streams.max_lifetime.min(token_left),
        next_poll: now + POLL,
        sent,
        pending: VecDeque::new(),
        finished: false,
        _permit: permit,
    };
    watch.take(history);
    let events = futures::stream::unfold(watch, |mut watch| async move {
        let event = watch.next().await?;
        Some((Ok(event), watch))
    });
    Ok(Opened::Stream(
        Sse::new(events).keep_alive(KeepAlive::default()),
    ))
}

/// Where one event stream stands.
struct Watch {
    /// The reader on the streams' pool.
    history: Commerce,
    order: OrderId,
    updates: broadcast::Receiver<OrderId>,
    shutdown: CancellationToken,
    /// The end of its lifetime, or of its token's.
    ends_at: Instant,
    /// The next read whatever is notified: notifications of other orders do not move it.
    next_poll: Instant,
    /// History rows queued or sent (the next event's id is one more).
    sent: usize,
    /// Changes to send, with their positions (ids).
    pending: VecDeque<(usize, StatusChange)>,
    finished: bool,
    /// Its place among the open streams, given back when the stream is dropped.
    _permit: StreamPermit,
}

impl Watch {
    /// The next event, or `None` when the stream ends (final status, lifetime or token over,
    /// shutdown, or a database error, which is logged).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some((position, change)) = self.pending.pop_front() {
                if change.to.is_final() {
                    self.finished = true;
                    self.pending.clear();
                }
                return Event::default()
                    .event("status")
                    .id(position.to_string())
                    .json_data(super::history_view(&change))
                    .ok();
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(self.ends_at) => return None,
                () = tokio::time::sleep_until(self.next_poll) => {}
                update = self.updates.recv() => match update {
                    Ok(order) if order != self.order => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    // Ours, or missed some (lagged): read the history either way.
                    _ => {}
                },
            }
            self.next_poll = Instant::now() + POLL;
            match self.history.order_history(self.order).await {
                Ok(history) => self.take(history),
                Err(error) => {
                    tracing::warn!(%error, order = %self.order, "order event stream ends");
                    return None;
                }
            }
        }
    }

    /// Queues the rows of `history` not queued yet, each with its position as its id.
    fn take(&mut self, history: Vec<StatusChange>) {
        let known = self.sent;
        self.sent = self.sent.max(history.len());
        self.pending.extend(
            history
                .into_iter()
                .enumerate()
                .skip(known)
                .map(|(index, change)| (index + 1, change)),
        );
    }
}
