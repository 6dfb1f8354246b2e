//! Steady traffic through the gateway, every operation recorded with what the client saw:
//! customers placing orders (half with an idempotency key, retried with the same key when no
//! answer came), cancelling their own, reading them; an admin receiving stock and renaming
//! products; watchers following orders' status streams. The history is what the checks
//! hold the stores to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use commerce_client::{ApiClient, Error as ClientError, Inbound, PlaceOrder, RenameProduct};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// What the client saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A 2xx answer (for a placement: the order's id).
    Done(Option<Uuid>),
    /// A 4xx answer with its error code: refused, nothing done.
    Refused(u16, String),
    /// No answer, or a 5xx: it may or may not have happened.
    Unknown(String),
}

impl Seen {
    /// What the client saw of `answer` (`id` picks a done one's order id).
    pub(crate) fn of<T>(answer: &Result<T, ClientError>, id: impl Fn(&T) -> Option<Uuid>) -> Self {
        match answer {
            Ok(value) => Self::Done(id(value)),
            Err(ClientError::Api { status, error, .. }) if status.is_client_error() => {
                Self::Refused(status.as_u16(), error.code.clone())
            }
            // A 5xx by its status and code (`503 conflict_retry`: a fenced or changed write).
            Err(ClientError::Api { status, error, .. }) => {
                Self::Unknown(format!("{} {}", status.as_u16(), error.code))
            }
            Err(other) => Self::Unknown(other.to_string()),
        }
    }
}

/// One operation and its outcome.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `POST /orders` (its final outcome, after the retries a keyed one may make).
    Place {
        user: String,
        key: Option<String>,
        seen: Seen,
    },
    /// `POST /orders/{id}/cancel` of an order the user was told exists.
    Cancel {
        user: String,
        order: Uuid,
        seen: Seen,
    },
    /// `POST /products/{id}/stock/inbound`.
    Receive { product: i64, seen: Seen },
    /// `PATCH /products/{id}` (a new name).
    Rename {
        product: i64,
        name: String,
        seen: Seen,
    },
}

/// Every operation of a run, with the round it belongs to.
#[derive(Debug, Default)]
pub(crate) struct History {
    ops: Mutex<Vec<(usize, Op)>>,
    /// Status streams opened, events read, streams that failed.
    pub(crate) streams: AtomicU64,
    pub(crate) stream_events: AtomicU64,
    pub(crate) stream_errors: AtomicU64,
}

impl History {
    /// Records `op` under `round`.
    pub(crate) fn record(&self, round: usize, op: Op) {
        self.ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((round, op));
    }

    /// Every operation so far.
    pub(crate) fn ops(&self) -> Vec<(usize, Op)> {
        self.ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// How hard the traffic pushes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) customers: usize,
    /// Each customer's pause between two operations.
    pub(crate) think: Duration,
    pub(crate) watchers: usize,
}

/// Who sends the traffic: clients of the gateway.
pub(crate) struct Cast {
    pub(crate) customers: Vec<(String, ApiClient)>,
    pub(crate) admin: ApiClient,
    pub(crate) products: Vec<i64>,
}

/// Traffic running until [`Traffic::stop`].
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Traffic {
    /// Starts the traffic of `round`; keys are unique across rounds.
    pub(crate) fn start(
        cast: &Arc<Cast>,
        load: Load,
        round: usize,
        history: &Arc<History>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let placed: Arc<Mutex<Vec<(Uuid, ApiClient)>>> = Arc::default();
        let mut tasks = JoinSet::new();
        for n in 0..load.customers.min(cast.customers.len()) {
            let (cast, history, stop, placed) =
                (cast.clone(), history.clone(), stop.clone(), placed.clone());
            tasks.spawn(async move {
                customer(&cast, n, round, load.think, &history, &stop, &placed).await;
            });
        }
        {
            let (cast, history, stop) = (cast.clone(), history.clone(), stop.clone());
            tasks.spawn(async move { admin(&cast, round, &history, &stop).await });
        }
        for _ in 0..load.watchers {
            let (history, stop, placed) = (history.clone(), stop.clone(), placed.clone());
            tasks.spawn(async move { watcher(&history, &stop, &placed).await });
        }
        Self { stop, tasks }
    }

    /// Stops sending and waits for the requests under way (each bounded by its client's
    /// timeout).
    pub(crate) async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Attempts a keyed placement makes before it gives up (each after the last got no answer).
const KEYED_ATTEMPTS: u32 = 3;

async fn customer(
    cast: &Cast,
    n: usize,
    round: usize,
    think: Duration,
    history: &History,
    stop: &AtomicBool,
    placed: &Mutex<Vec<(Uuid, ApiClient)>>,
) {
    let (user, client) = &cast.customers[n];
    let mut rng = StdRng::seed_from_u64((round as u64) << 32 | n as u64);
    let mut mine: Vec<Uuid> = Vec::new();
    let mut count = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let dice: f64 = rng.gen();
        if dice < 0.15 && !mine.is_empty() {
            let order = mine.swap_remove(rng.gen_range(0..mine.len()));
            let answer = client.cancel_order(order).await;
            let seen = Seen::of(&answer, |_| None);
            history.record(
                round,
                Op::Cancel {
                    user: user.clone(),
                    order,
                    seen,
                },
            );
        } else if dice < 0.25 && !mine.is_empty() {
            let order = mine[rng.gen_range(0..mine.len())];
            let _ = client.order(order).await;
        } else {
            count += 1;
            let product = cast.products[rng.gen_range(0..cast.products.len())];
            let order = PlaceOrder::one(product, rng.gen_range(1..=2));
            let key = rng
                .gen_bool(0.5)
                .then(|| format!("{user}-r{round}-{count}"));
            let seen = match &key {
                Some(key) => {
                    let mut seen = Seen::Unknown("not sent".to_owned());
                    for attempt in 0..KEYED_ATTEMPTS {
                        if attempt > 0 {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let answer = client.place_order_with_key(&order, key).await;
                        seen = Seen::of(&answer, |p| Some(p.order.id));
                        if !matches!(seen, Seen::Unknown(_)) {
                            break;
                        }
                    }
                    seen
                }
                None => {
                    let answer = client.place_order_without_key(&order).await;
                    Seen::of(&answer, |p| Some(p.order.id))
                }
            };
            if let Seen::Done(Some(id)) = seen {
                mine.push(id);
                placed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((id, client.clone()));
            }
            history.record(
                round,
                Op::Place {
                    user: user.clone(),
                    key,
                    seen,
                },
            );
        }
        tokio::time::sleep(think).await;
    }
}

/// Receives stock every quarter second and renames a product every two seconds.
async fn admin(cast: &Cast, round: usize, history: &History, stop: &AtomicBool) {
    let mut rng = StdRng::seed_from_u64(round as u64);
    let mut renamed = Instant::now();
    let mut names = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let product = cast.products[rng.gen_range(0..cast.products.len())];
        let answer = cast
            .admin
            .receive_stock(
                product,
                &Inbound {
                    quantity: 10,
                    note: None,
                },
            )
            .await;
        history.record(
            round,
            Op::Receive {
                product,
                seen: Seen::of(&answer, |_| None),
            },
        );
        if renamed.elapsed() >= Duration::from_secs(2) {
            renamed = Instant::now();
            names += 1;
            let name = format!("item {product} r{round} n{names}");
            let answer = cast
                .admin
                .rename_product(product, &RenameProduct { name: name.clone() })
                .await;
            history.record(
                round,
                Op::Rename {
                    product,
                    name,
                    seen: Seen::of(&answer, |_| None),
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Follows the status stream of the latest order placed, one after another.
async fn watcher(history: &History, stop: &AtomicBool, placed: &Mutex<Vec<(Uuid, ApiClient)>>) {
    while !stop.load(Ordering::SeqCst) {
        let latest = placed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .cloned();
        let Some((order, client)) = latest else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        history.streams.fetch_add(1, Ordering::Relaxed);
        match client.order_events(order).await {
            Ok(mut stream) => {
                let until = Instant::now() + Duration::from_secs(5);
                while let Ok(Some(event)) = tokio::time::timeout_at(until, stream.next()).await {
                    match event {
                        Ok(_) => history.stream_events.fetch_add(1, Ordering::Relaxed),
                        Err(_) => history.stream_errors.fetch_add(1, Ordering::Relaxed),
                    };
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
            Err(_) => {
                history.stream_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Counts of a round's operations, for the table.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) ops: usize,
    pub(crate) acknowledged: usize,
    pub(crate) refused: usize,
    pub(crate) unknown: usize,
}

/// The tally of `round`'s operations.
pub(crate) fn tally(ops: &[(usize, Op)], round: usize) -> Tally {
    let mut tally = Tally::default();
    for (_, op) in ops.iter().filter(|(r, _)| *r == round) {
        let seen = match op {
            Op::Place { seen, .. }
            | Op::Cancel { seen, .. }
            | Op::Receive { seen, .. }
            | Op::Rename { seen, .. } => seen,
        };
        tally.ops += 1;
        match seen {
            Seen::Done(_) => tally.acknowledged += 1,
            Seen::Refused(..) => tally.refused += 1,
            Seen::Unknown(_) => tally.unknown += 1,
        }
    }
    tally
}

/// The refusal codes of `round`, counted (for the report: what the faults turned away).
pub(crate) fn refusals(ops: &[(usize, Op)], round: usize) -> HashMap<String, usize> {
    count_seen(ops, round, |seen| match seen {
        Seen::Refused(status, code) => Some(format!("{status} {code}")),
        _ => None,
    })
}

/// The placements and cancellations of `round` left unanswered, counted by what the client
/// saw instead (a 5xx's status and code, or the transport error).
pub(crate) fn unanswered(ops: &[(usize, Op)], round: usize) -> HashMap<String, usize> {
    count_seen(ops, round, |seen| match seen {
        // Transport errors carry addresses and ids: their first words are enough.
        Seen::Unknown(what) => Some(
            what.split_whitespace()
                .take(4)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    })
}

/// The placements and cancellations of `round`, counted by `key` of what the client saw
/// (those it gives no key are left out).
fn count_seen(
    ops: &[(usize, Op)],
    round: usize,
    key: impl Fn(&Seen) -> Option<String>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, op) in ops.iter().filter(|(r, _)| *r == round) {
        if let Op::Place { seen, .. } | Op::Cancel { seen, .. } = op {
            if let Some(key) = key(seen) {
                *counts.entry(key).or_insert(0) += 1;
            }
        }
    }
    counts
}
