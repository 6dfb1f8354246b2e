//! The `payment.payments` table: one payment per order and the only module that writes it.
//!
//! ```text
//!  pending ──claim──▶ charging ──▶ approved ──cancel──▶ refund_pending ──claim──▶ refunding ──▶ refunded
//!     ▲                  │    ├──▶ declined | failed                  ▲                    └──▶ refund_failed
//!     └──── parked ──────┘    │                                        │
//!  (cancel, nothing taken) ───┴──▶ voided                              │
//!  (cancel, maybe taken) ──▶ void_pending ──claim──▶ voiding ──approved─┘
//!                                                          └──declined / refused──▶ voided
//! ```
//!
//! `charging`, `voiding` and `refunding` rows carry a lease in `next_attempt_at`: a worker
//! that died mid-call leaves them claimable again, and the gateway's idempotency key makes the
//! repeat safe. Every change below is guarded by the status it expects, so a worker whose lease
//! ran out cannot settle a row twice (and emit its event twice).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// To charge (new, or parked after a call that settled nothing).
    Pending,
    /// Claimed by a worker; the call is on the wire.
    Charging,
    /// The money was taken; the order is being processed.
    Approved,
    /// The gateway declined (402). Final: nothing was taken.
    Declined,
    /// The gateway refused the request for good. Final: nothing was taken.
    Failed,
    /// The order was cancelled before any money could have been taken. Final.
    Voided,
    /// The order was cancelled after a call whose outcome is unknown: the gateway is asked
    /// again with the same key, and what it approved is refunded.
    VoidPending,
    /// Claimed by a worker to ask about a cancelled order's charge.
    Voiding,
    /// The money was taken for an order cancelled since: to refund.
    RefundPending,
    /// Claimed by a worker; the refund is on the wire.
    Refunding,
    /// The money was given back. Final.
    Refunded,
    /// The gateway refused the refund for good (unknown charge, refunded elsewhere). Final: a
    /// person must look (metric `payment_refunds_failed_total`, an error log line).
    RefundFailed,
}

impl PaymentStatus {
    const ALL: [Self; 12] = [
        Self::Pending,
        Self::Charging,
        Self::Approved,
        Self::Declined,
        Self::Failed,
        Self::Voided,
        Self::VoidPending,
        Self::Voiding,
        Self::RefundPending,
        Self::Refunding,
        Self::Refunded,
        Self::RefundFailed,
    ];

    /// The status as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Charging => "charging",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Voided => "voided",
            Self::VoidPending => "void_pending",
            Self::Voiding => "voiding",
            Self::RefundPending => "refund_pending",
            Self::Refunding => "refunding",
            Self::Refunded => "refunded",
            Self::RefundFailed => "refund_failed",
        }
    }

    /// Whether nothing more will happen to the payment.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Declined | Self::Failed | Self::Voided | Self::Refunded | Self::RefundFailed
        )
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_owned()))
    }
}

/// A status the table holds but this code does not know (a newer version wrote it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payment status {0:?}")]
pub struct UnknownStatus(pub String);

/// Errors of the store: the database's, or a row this code cannot read.
pub(super) type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// A payment a worker claimed, with what it was claimed for.
#[derive(Debug, Clone)]
pub(super) struct Due {
    pub(super) order_id: Uuid,
    pub(super) amount: i64,
    pub(super) currency: String,
    /// [`PaymentStatus::Charging`], [`PaymentStatus::Voiding`] or
    /// [`PaymentStatus::Refunding`].
    pub(super) status: PaymentStatus,
    pub(super) charge_id: Option<String>,
    /// Claims so far, this one included.
    pub(super) attempts: i32,
    /// The trace context of the event it was recorded from.
    pub(super) traceparent: Option<String>,
}

/// A payment as its worker finds it, locked, when the gateway has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Current {
    pub(super) status: PaymentStatus,
    /// The order was cancelled (while the call was on the wire, or before).
    pub(super) cancel_requested: bool,
    /// An earlier call of this payment may have taken the money.
    pub(super) may_have_charged: bool,
}

/// What a worker writes when it settles a claimed payment.
#[derive(Debug, Clone, Default)]
pub(super) struct Settle<'a> {
    pub(super) charge_id: Option<&'a str>,
    pub(super) refund_id: Option<&'a str>,
    pub(super) last_error: Option<&'a str>,
    /// Due again after this (a parked payment); `None` keeps `next_attempt_at`.
    pub(super) due_in: Option<Duration>,
    /// Sets the flag (it is never cleared).
    pub(super) may_have_charged: bool,
}

/// Records the payments to take for many orders (order, amount, currency, trace context of
/// its event) in one statement; returns the orders recorded now (the others exist already:
/// redelivered events). An amount of 0 is recorded approved: there is nothing to take, and
/// gateways refuse such charges.
pub(super) async fn record_all(
    conn: &mut PgConnection,
    payments: &[(Uuid, i64, &str, Option<&str>)],
) -> Result<HashSet<Uuid>, StoreError> {
    let mut orders = Vec::with_capacity(payments.len());
    let mut amounts = Vec::with_capacity(payments.len());
    let mut currencies = Vec::with_capacity(payments.len());
    let mut statuses = Vec::with_capacity(payments.len());
    let mut traces = Vec::with_capacity(payments.len());
    for &(order, amount, currency, traceparent) in payments {
        orders.push(order);
        amounts.push(amount);
        currencies.push(currency);
        traces.push(traceparent);
        statuses.push(if amount == 0 {
            PaymentStatus::Approved.as_str()
        } else {
            PaymentStatus::Pending.as_str()
        });
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO payment.payments (order_id, amount, currency, status, traceparent) \
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[]) \
         ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
    )
    .bind(&orders)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&statuses)
    .bind(&traces)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// The `SET` list of a payment whose order was cancelled (see [`request_cancel`]), shared
/// by the event's path and the reconciliation's ([`cancel_unheard`]), so the two cannot
/// drift apart. Its columns are unqualified: the statement's target table is the only one
/// that has them.
macro_rules! cancellation {
    () => {
        "cancel_requested = true, \
         status = CASE \
             WHEN status = 'pending' AND may_have_charged THEN 'void_pending' \
             WHEN status = 'pending' THEN 'voided' \
             WHEN status = 'approved' AND charge_id IS NULL THEN 'voided' \
             WHEN status = 'approved' THEN 'refund_pending' \
             ELSE status END, \
         next_attempt_at = CASE WHEN status IN ('pending', 'approved') THEN now() \
                                ELSE next_attempt_at END, \
         updated_at = now()"
    };
}

/// The order was cancelled: marks the payment so, and moves it on. Not charged yet and no
/// call may have taken anything: `voided`. A call may have: `void_pending` (ask again). Taken:
/// `refund_pending` (or `voided` when nothing was charged: an amount of 0). On the wire: the
/// worker sees `cancel_requested` when it settles. Returns the status after, `None` when the
/// order has no payment (it never became CREATED).
pub(super) async fn request_cancel(
    conn: &mut PgConnection,
    order: Uuid,
) -> Result<Option<PaymentStatus>, StoreError> {
    let status: Option<String> = sqlx::query_scalar(concat!(
        "UPDATE payment.payments SET ",
        cancellation!(),
        " WHERE order_id = $1 RETURNING status"
    ))
    .bind(order)
    .fetch_optional(conn)
    .await?;
    status.map(|s| s.parse().map_err(Into::into)).transpose()
}

/// The reconciliation of a lost cancellation: payments that may still hold or take money
/// (`pending`, `charging`, `approved`) of orders the order service cancelled more than
/// `grace` ago, which no `order.cancelled` event reached (`cancel_requested` unset), get
/// what [`request_cancel`] gives them. Reads the order's status from the database the
/// services share. At most `batch` at once, skipping rows a worker or consumer holds.
/// Returns each one's order and status after.
pub(super) async fn cancel_unheard(
    conn: &mut PgConnection,
    grace: Duration,
    batch: i64,
) -> Result<Vec<(Uuid, PaymentStatus)>, StoreError> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(concat!(
        "WITH unheard AS ( \
             SELECT p.order_id FROM payment.payments p \
             JOIN commerce.orders o ON o.id = p.order_id \
             WHERE NOT p.cancel_requested AND p.status IN ('pending', 'charging', 'approved') \
               AND o.status = 'CANCELLED' \
               AND o.updated_at < now() - make_interval(secs => $1) \
             ORDER BY o.updated_at LIMIT $2 FOR UPDATE OF p SKIP LOCKED) \
         UPDATE payment.payments p SET ",
        cancellation!(),
        " FROM unheard WHERE p.order_id = unheard.order_id \
         RETURNING p.order_id, p.status"
    ))
    .bind(grace.as_secs_f64())
    .bind(batch)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(order, status)| Ok((order, status.parse()?)))
        .collect()
}

/// The reconciliation of a lost placement: orders CREATED more than `grace` ago (since they
/// became CREATED) that have no payment, which no `order.placed` or `order.created` event
/// reached. Reads the orders from the database the services share, oldest first, at most
/// `batch`, each held `FOR SHARE` until the caller's transaction ends: the order service's
/// cancellation (or payment) of one waits for the payment recorded here, so its event finds
/// it; rows the order service holds are skipped, for the next round.
pub(super) async fn unheard_placements(
    conn: &mut PgConnection,
    grace: Duration,
    batch: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT o.id FROM commerce.orders o \
         WHERE o.status = 'CREATED' AND o.updated_at < now() - make_interval(secs => $1) \
           AND NOT EXISTS (SELECT 1 FROM payment.payments p WHERE p.order_id = o.id) \
         ORDER BY o.updated_at LIMIT $2 FOR SHARE OF o SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .bind(batch)
    .fetch_all(conn)
    .await?)
}

/// Claims up to `batch` due payments for `lease` (skipping rows other workers hold): a
/// payment to charge becomes `charging`, one to ask about `voiding`, one to refund
/// `refunding`; a claim whose lease ran out is claimed again as it was, marked as maybe
/// charged (the worker that held it may have called the gateway before it died).
pub(super) async fn claim_due(
    pool: &PgPool,
    batch: i64,
    lease: Duration,
) -> Result<Vec<Due>, StoreError> {
    type Row = (
        Uuid,
        i64,
        String,
        String,
        Option<String>,
        i32,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "UPDATE payment.payments p SET \
         status = CASE WHEN p.status IN ('pending', 'charging') THEN 'charging' \
                       WHEN p.status IN ('void_pending', 'voiding') THEN 'voiding' \
                       ELSE 'refunding' END, \
         attempts = p.attempts + 1, \
         may_have_charged = p.may_have_charged OR p.status IN ('charging', 'voiding'), \
         next_attempt_at = now() + make_interval(secs => $2), updated_at = now() \
         FROM (SELECT order_id FROM payment.payments \
               WHERE status IN ('pending', 'charging', 'void_pending', 'voiding', \
                                'refund_pending', 'refunding') \
               AND next_attempt_at <= now() \
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due \
         WHERE p.order_id = due.order_id \
         RETURNING p.order_id, p.amount, p.currency, p.status, p.charge_id, p.attempts, \
                   p.traceparent",
    )
    .bind(batch)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(
            |(order_id, amount, currency, status, charge_id, attempts, traceparent)| {
                Ok(Due {
                    order_id,
                    amount,
                    currency,
                    status: status.parse()?,
                    charge_id,
                    attempts,
                    traceparent,
                })
            },
        )
        .collect()
}

/// The payments of `orders`, locked in ascending order id (the order every batch writer
/// takes them in) for the rest of the caller's transaction; a payment that is gone is absent.
pub(super) async fn lock_all(
    conn: &mut PgConnection,
    orders: &[Uuid],
) -> Result<HashMap<Uuid, Current>, StoreError> {
    let rows: Vec<(Uuid, String, bool, bool)> = sqlx::query_as(
        "SELECT order_id, status, cancel_requested, may_have_charged FROM payment.payments \
         WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(orders)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(order, status, cancel_requested, may_have_charged)| {
            Ok((
                order,
                Current {
                    status: status.parse()?,
                    cancel_requested,
                    may_have_charged,
                },
            ))
        })
        .collect()
}

/// Moves every payment of `charges` (order, charge id) from `charging` to `approved` with its
/// charge id, in one statement; returns the orders moved (a payment no longer `charging` is
/// left alone).
pub(super) async fn approve_all(
    conn: &mut PgConnection,
    charges: &[(Uuid, String)],
) -> Result<Vec<Uuid>, StoreError> {
    let (orders, charge_ids): (Vec<Uuid>, Vec<&str>) = charges
        .iter()
        .map(|(order, charge)| (*order, charge.as_str()))
        .unzip();
    let moved = sqlx::query_scalar(
        "UPDATE payment.payments p SET status = 'approved', charge_id = t.charge_id, \
         last_error = NULL, updated_at = now() \
         FROM UNNEST($1::uuid[], $2::text[]) AS t(order_id, charge_id) \
         WHERE p.order_id = t.order_id AND p.status = 'charging' \
         RETURNING p.order_id",
    )
    .bind(&orders)
    .bind(&charge_ids)
    .fetch_all(conn)
    .await?;
    Ok(moved)
}

/// Moves the payment from `from` to `to` with `settle`'s facts; `false` (nothing written)
/// when it is no longer `from`.
pub(super) async fn settle(
    conn: &mut PgConnection,
    order: Uuid,
    from: PaymentStatus,
    to: PaymentStatus,
    settle: &Settle<'_>,
) -> Result<bool, StoreError> {
    let changed = sqlx::query(
        "UPDATE payment.payments SET status = $3, \
         charge_id = COALESCE($4, charge_id), refund_id = COALESCE($5, refund_id), \
         last_error = $6, may_have_charged = may_have_charged OR $7, \
         next_attempt_at = CASE WHEN $8::float8 IS NULL THEN next_attempt_at \
                                ELSE now() + make_interval(secs => $8) END, \
         updated_at = now() \
         WHERE order_id = $1 AND status = $2",
    )
    .bind(order)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(settle.charge_id)
    .bind(settle.refund_id)
    .bind(settle.last_error)
    .bind(settle.may_have_charged)
    .bind(settle.due_in.map(|d| d.as_secs_f64()))
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Payments by status, for `/metrics`.
pub(super) async fn count_by_status(
    pool: &PgPool,
) -> Result<Vec<(PaymentStatus, i64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM payment.payments GROUP BY status")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(status, count)| Ok((status.parse()?, count)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_refused() {
        for status in PaymentStatus::ALL {
            assert_eq!(status.as_str().parse::<PaymentStatus>(), Ok(status));
        }
        assert!("paid".parse::<PaymentStatus>().is_err());
    }
}
