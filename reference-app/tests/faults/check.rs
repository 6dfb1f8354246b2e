//! The checks a round's history and the stores must pass once the system has settled: what
//! the client saw against what the database, the payment gateway and the caches hold.

use std::collections::{HashMap, HashSet};

use commerce_client::ApiClient;
use sqlx::PgPool;
use uuid::Uuid;

use super::traffic::{Op, Seen};
use crate::common::gateway::ScriptedGateway;

/// What the checks found (every field but `audit_consistent` must be zero for a pass).
#[derive(Debug, Default, Clone)]
pub(crate) struct Findings {
    /// Orders the client saw placed that the database does not hold, and cancellations the
    /// client saw done whose order is not cancelled.
    pub(crate) lost: usize,
    /// Orders beyond what the client could have caused: a key with two orders, or more
    /// orders for a user than their acknowledged and unanswered placements.
    pub(crate) doubled: usize,
    /// Orders of a placement the client saw refused.
    pub(crate) phantom: usize,
    /// Orders still CREATED (no payment outcome), payments still in transit, events still
    /// pending in the outbox, dead letters.
    pub(crate) stuck: usize,
    /// Orders whose money at the payment gateway disagrees with their status: money kept for
    /// a cancelled order, none for a paid one, or two charges kept for one order.
    pub(crate) money: usize,
    /// The stock audit (stock against ledger, orders and backorders) passed.
    pub(crate) audit_consistent: bool,
    /// Products whose name or price read through a store instance differs from the database.
    pub(crate) stale_cache: usize,
    /// Orders the saga cancelled for want of a payment answer within its timeout (not a
    /// fault of the checks: what a fault cost the customers).
    pub(crate) timed_out: usize,
    /// What was wrong, a line each (the first few of each kind).
    pub(crate) notes: Vec<String>,
}

impl Findings {
    /// Nothing wrong.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.phantom == 0
            && self.stuck == 0
            && self.money == 0
            && self.audit_consistent
            && self.stale_cache == 0
    }

    fn note(&mut self, line: String) {
        if self.notes.len() < 12 {
            self.notes.push(line);
        }
    }
}

/// One order as stored.
struct Stored {
    user: String,
    key: Option<String>,
    status: String,
}

/// Statuses whose money the gateway must hold (paid and alive).
const PAID: [&str; 3] = ["PROCESSING", "SHIPPED", "DELIVERED"];

/// Checks everything: the whole history (all rounds so far) against the stores.
pub(crate) async fn check(
    pool: &PgPool,
    ops: &[(usize, Op)],
    payments: &ScriptedGateway,
    admin: &ApiClient,
    stores: &[ApiClient],
) -> Findings {
    let mut found = Findings::default();
    let rows: Vec<(Uuid, String, Option<String>, String)> =
        sqlx::query_as("SELECT id, user_id, idempotency_key, status FROM commerce.orders")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let stored: HashMap<Uuid, Stored> = rows
        .into_iter()
        .map(|(id, user, key, status)| (id, Stored { user, key, status }))
        .collect();

    // Lost, doubled, phantom: each user's placements against their orders.
    #[derive(Default)]
    struct Books {
        acknowledged: HashSet<Uuid>,
        unanswered: usize,
    }
    let mut users: HashMap<&str, Books> = HashMap::new();
    let mut refused_keys: HashSet<(&str, &str)> = HashSet::new();
    for (_, op) in ops {
        match op {
            Op::Place { user, key, seen } => {
                let books = users.entry(user).or_default();
                match seen {
                    Seen::Done(Some(id)) => {
                        books.acknowledged.insert(*id);
                        if !stored.contains_key(id) {
                            found.lost += 1;
                            found.note(format!("lost: order {id} of {user} was acknowledged"));
                        }
                    }
                    Seen::Done(None) => {}
                    Seen::Unknown(_) => books.unanswered += 1,
                    Seen::Refused(..) => {
                        if let Some(key) = key {
                            refused_keys.insert((user, key));
                        }
                    }
                }
            }
            Op::Cancel {
                user,
                order,
                seen: Seen::Done(_),
            } if stored.get(order).map(|o| o.status.as_str()) != Some("CANCELLED") => {
                found.lost += 1;
                found.note(format!(
                    "lost: the cancellation of {user}'s order {order} was acknowledged"
                ));
            }
            _ => {}
        }
    }
    receipts_and_names(pool, ops, &mut found).await;
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    let mut per_key: HashMap<(&str, &str), usize> = HashMap::new();
    for order in stored.values() {
        *per_user.entry(order.user.as_str()).or_insert(0) += 1;
        if let Some(key) = &order.key {
            *per_key
                .entry((order.user.as_str(), key.as_str()))
                .or_insert(0) += 1;
            if refused_keys.contains(&(order.user.as_str(), key.as_str())) {
                found.phantom += 1;
                found.note(format!("phantom: {} key {key} was refused", order.user));
            }
        }
    }
    for ((user, key), count) in &per_key {
        if *count > 1 {
            found.doubled += count - 1;
            found.note(format!("doubled: {count} orders of {user} under key {key}"));
        }
    }
    for (user, books) in &users {
        let held = per_user.get(user).copied().unwrap_or(0);
        let most = books.acknowledged.len() + books.unanswered;
        if held > most {
            found.doubled += held - most;
            found.note(format!(
                "doubled: {user} has {held} orders, acknowledged {} and unanswered {}",
                books.acknowledged.len(),
                books.unanswered
            ));
        }
    }

    // Stuck: anything not settled.
    let created = stored.values().filter(|o| o.status == "CREATED").count();
    let moving: HashSet<Uuid> = sqlx::query_scalar(
        "SELECT order_id FROM payment.payments WHERE status IN \
         ('pending', 'charging', 'void_pending', 'voiding', 'refund_pending', 'refunding')",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
    .into_iter()
    .collect();
    let in_transit = moving.len() as i64;
    let pending: i64 = scalar(
        pool,
        "SELECT count(*) FROM commerce_outbox.event WHERE status IN ('pending', 'dead')",
    )
    .await;
    let dead_letters: i64 = scalar(
        pool,
        "SELECT count(*) FROM commerce_outbox.consumer_dead_letter",
    )
    .await;
    let stuck = created as i64 + in_transit + pending + dead_letters;
    found.stuck = usize::try_from(stuck).unwrap_or(usize::MAX);
    if stuck > 0 {
        found.note(format!(
            "stuck: {created} orders CREATED, {in_transit} payments in transit, {pending} \
             events pending or dead, {dead_letters} consumer dead letters"
        ));
    }

    // Money: kept at the gateway exactly for the paid, live orders (an order whose payment
    // is still in transit is counted as stuck above, not here).
    for (id, order) in &stored {
        if moving.contains(id) {
            continue;
        }
        let charges = payments.charges_of(*id);
        let kept = charges.iter().filter(|c| c.refund.is_none()).count();
        let paid = PAID.contains(&order.status.as_str());
        let wrong = !matches!((paid, kept), (true, 1) | (false, 0));
        if wrong && order.status != "CREATED" {
            found.money += 1;
            found.note(format!(
                "money: order {id} is {} and the gateway keeps {kept} charges ({})",
                order.status,
                payments.describe(*id)
            ));
        }
    }

    // Stock: the app's own audit, in one snapshot.
    match admin.audit().await {
        Ok(audit) => {
            found.audit_consistent = audit.consistent;
            if !audit.consistent {
                found.note(format!("audit: {:?}", audit.violations));
            }
        }
        Err(e) => found.note(format!("audit: {e}")),
    }

    found.timed_out = usize::try_from(
        scalar(
            pool,
            "SELECT count(DISTINCT order_id) FROM commerce.order_status_history \
             WHERE to_status = 'CANCELLED' AND reason LIKE 'payment timed out%'",
        )
        .await,
    )
    .unwrap_or(0);
    found.stale_cache = stale(pool, stores, &mut found.notes).await;
    found
}

/// Receipts and renames: every acknowledged receipt is in the ledger (and no more than were
/// sent), and each product's name is its last rename when that one was acknowledged.
async fn receipts_and_names(pool: &PgPool, ops: &[(usize, Op)], found: &mut Findings) {
    let mut sent: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut last_name: HashMap<i64, Option<&str>> = HashMap::new();
    for (_, op) in ops {
        match op {
            Op::Receive { product, seen } => {
                let (acknowledged, unanswered) = sent.entry(*product).or_default();
                match seen {
                    Seen::Done(_) => *acknowledged += 1,
                    Seen::Unknown(_) => *unanswered += 1,
                    Seen::Refused(..) => {}
                }
            }
            // A rename without an answer may land or not: the name is then unknown.
            Op::Rename {
                product,
                name,
                seen,
            } => match seen {
                Seen::Done(_) => {
                    last_name.insert(*product, Some(name.as_str()));
                }
                Seen::Unknown(_) => {
                    last_name.insert(*product, None);
                }
                Seen::Refused(..) => {}
            },
            _ => {}
        }
    }
    let ledger: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT product_id, count(*) FROM commerce.stock_ledger WHERE kind = 'inbound' \
         GROUP BY product_id",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let ledger: HashMap<i64, i64> = ledger.into_iter().collect();
    for (product, (acknowledged, unanswered)) in sent {
        // Each product's first inbound movement is its initial stock.
        let held = ledger.get(&product).copied().unwrap_or(0) - 1;
        if held < acknowledged {
            found.lost += usize::try_from(acknowledged - held).unwrap_or(0);
            found.note(format!(
                "lost: product {product} has {held} receipts in its ledger, {acknowledged} acknowledged"
            ));
        } else if held > acknowledged + unanswered {
            found.doubled += usize::try_from(held - acknowledged - unanswered).unwrap_or(0);
            found.note(format!(
                "doubled: product {product} has {held} receipts, {acknowledged} acknowledged and \
                 {unanswered} unanswered"
            ));
        }
    }
    let names: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM commerce.products")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let names: HashMap<i64, String> = names.into_iter().collect();
    for (product, name) in last_name {
        if let (Some(name), Some(stored)) = (name, names.get(&product)) {
            if stored != name {
                found.lost += 1;
                found.note(format!(
                    "lost: product {product} is named {stored:?}, its last acknowledged rename {name:?}"
                ));
            }
        }
    }
}

/// Products whose name or price through a store instance is not the database's.
pub(crate) async fn stale(pool: &PgPool, stores: &[ApiClient], notes: &mut Vec<String>) -> usize {
    let truth: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, name, price FROM commerce.products")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let mut stale = 0;
    for store in stores {
        for (id, name, price) in &truth {
            match store.product(*id).await {
                Ok(view) if view.name == *name && view.price == *price => {}
                Ok(view) => {
                    stale += 1;
                    if notes.len() < 12 {
                        notes.push(format!(
                            "cache: {} reads product {id} as {:?} at {}, the database {name:?} at {price}",
                            store.base_url(),
                            view.name,
                            view.price
                        ));
                    }
                }
                Err(e) => {
                    stale += 1;
                    if notes.len() < 12 {
                        notes.push(format!("cache: {} product {id}: {e}", store.base_url()));
                    }
                }
            }
        }
    }
    stale
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1)
}
