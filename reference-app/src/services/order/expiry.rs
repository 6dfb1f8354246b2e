//! What expires in the order service, swept in the background: orders that waited too long in
//! one status (CREATED without a payment answer: the saga's timeout; BACKORDERED without
//! stock: their allocated units go back to the shelf and the next backorders), and
//! idempotency keys past their retention.
//!
//! Every sweep reads pages of candidates and decides each one again under its row lock
//! (commerce-core's conditional cancel), so several instances may sweep at once, and an order
//! that moved on between the listing and its cancel (paid, served) is left alone.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use commerce_core::{Commerce, OrderId, OrderStatus};
use commerce_outbox::saga::{record_saga_step, SagaStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::services::contracts::SAGA;
use crate::telemetry::count_saga;

/// Orders a sweep reads per page; it reads pages until one comes back short.
const PAGE: u32 = 100;

/// Orders to cancel once they have been in `status` for longer than `after`.
#[derive(Debug, Clone)]
pub(crate) struct Expiry {
    pub(crate) status: OrderStatus,
    pub(crate) after: Duration,
    /// The cancel reason, in the order's history.
    pub(crate) reason: String,
    /// The saga step to record with the cancel, if the expiry is a saga's compensation.
    pub(crate) saga_step: Option<&'static str>,
    /// The `saga_outcomes_total` label counted per cancel.
    pub(crate) counter: &'static str,
}

/// BACKORDERED for longer than `after`: the order is cancelled, its allocated units return.
pub(crate) fn backorder_expiry(after: Duration) -> Expiry {
    Expiry {
        status: OrderStatus::Backordered,
        after,
        reason: format!("backorder expired after {}s without stock", after.as_secs()),
        saga_step: None,
        counter: "backorder_expired",
    }
}

/// Runs `round` every `every` (counted from the end of the last round) until `shutdown`; a
/// failed round is warned about, named `task`, and the next one retries. The order service's
/// periodic work (the expiries, the key purge, the approval reconciliation) runs so.
pub(crate) fn spawn_every<F, Fut>(
    task: &'static str,
    every: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
    mut round: F,
) where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Err(error) = round().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    task,
                    "background round failed; the next round retries"
                );
            }
        }
    });
}

/// Runs `expiry` every `after / 4` (between 0.1 and 5 s) until `shutdown`.
pub(crate) fn spawn_expiry(
    commerce: Commerce,
    expiry: Expiry,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let every = (expiry.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let stop = shutdown.clone();
    spawn_every("order expiry", every, shutdown, tasks, move || {
        let (commerce, expiry, stop) = (commerce.clone(), expiry.clone(), stop.clone());
        async move {
            expire(&commerce, &expiry, PAGE, &stop)
                .await
                .with_context(|| format!("expiring orders {}", expiry.status))?;
            Ok(())
        }
    });
}

/// One round: pages of `page` expired orders until a short page (or shutdown). Returns how
/// many it cancelled.
pub(crate) async fn expire(
    commerce: &Commerce,
    expiry: &Expiry,
    page: u32,
    shutdown: &CancellationToken,
) -> Result<usize, commerce_core::Error> {
    let mut cancelled = 0;
    loop {
        let stale = commerce
            .orders_stuck_in(expiry.status, expiry.after, page)
            .await?;
        let full = stale.len() == page as usize;
        let mut progressed = false;
        for order in stale {
            match expire_one(commerce, order, expiry).await {
                Ok(true) => {
                    cancelled += 1;
                    progressed = true;
                    count_saga(expiry.counter);
                    tracing::info!(%order, reason = %expiry.reason, "order cancelled");
                }
                Ok(false) => progressed = true,
                Err(error) => tracing::warn!(%error, %order, "expiry cancel failed"),
            }
        }
        // A full page in which nothing moved would come back the same: leave it to the next
        // round rather than spin.
        if !full || !progressed || shutdown.is_cancelled() {
            return Ok(cancelled);
        }
    }
}

/// Cancels one expired order (if it is still in the expiry's status under its row lock) and
/// records the saga step, in one transaction; `false` when the order moved on meanwhile.
pub(crate) async fn expire_one(
    commerce: &Commerce,
    order: OrderId,
    expiry: &Expiry,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut tx = commerce.pool().begin().await?;
    let cancelled = commerce
        .cancel_order_if_in(&mut tx, order, expiry.status, &expiry.reason)
        .await?;
    let Some(cancelled) = cancelled else {
        return Ok(false);
    };
    if let Some(step) = expiry.saga_step {
        record_saga_step(
            &mut tx,
            SAGA,
            &order.to_string(),
            step,
            SagaStatus::Compensated,
            None,
            Some(&expiry.reason),
        )
        .await?;
    }
    tx.commit().await?;
    // The units it held are for sale again: tell this instance's stock strategy now (the
    // others hear it from the database's notification).
    for line in &cancelled.lines {
        commerce.stock_raised(line.product);
    }
    Ok(true)
}

/// Forgets idempotency keys older than `retention`, every `retention / 24` (between 1 s and
/// an hour), until `shutdown`: a repeat after that places a new order.
pub(crate) fn spawn_key_purge(
    commerce: Commerce,
    retention: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    const BATCH: u32 = 1_000;
    let every = (retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3_600));
    let stop = shutdown.clone();
    spawn_every("idempotency key purge", every, shutdown, tasks, move || {
        let (commerce, stop) = (commerce.clone(), stop.clone());
        async move {
            let mut forgotten = 0;
            loop {
                let now = commerce.forget_idempotency_keys(retention, BATCH).await?;
                forgotten += now;
                if now < u64::from(BATCH) || stop.is_cancelled() {
                    break;
                }
            }
            if forgotten > 0 {
                tracing::debug!(forgotten, "idempotency keys past their retention forgotten");
            }
            Ok(())
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use commerce_core::{NewOrder, NewProduct, ProductId, ShortagePolicy};
    use commerce_testkit::TestDb;

    use super::*;
    use crate::services::order::saga::payment_timeout;

    /// Orders expire as soon as they enter the status: any age is over this.
    const AT_ONCE: Duration = Duration::ZERO;

    /// A fresh database with product 1 (`stock` units at 450) and a plain `Commerce`.
    pub(in crate::services::order) async fn shop(stock: i64) -> (TestDb, Commerce) {
        let db = TestDb::new(&[&commerce_core::MIGRATOR, &commerce_outbox::MIGRATOR]).await;
        let commerce = Commerce::builder(db.pool().clone()).build();
        commerce
            .create_product(NewProduct::new(ProductId(1), "mug").price(450).stock(stock))
            .await
            .unwrap();
        (db, commerce)
    }

    /// `quantity` of product 1 for `user`, backordering what is short.
    pub(in crate::services::order) async fn place(
        commerce: &Commerce,
        user: &str,
        quantity: i64,
    ) -> OrderId {
        commerce
            .place_order(
                NewOrder::new(user)
                    .line(1, quantity)
                    .policy(ShortagePolicy::Backorder),
            )
            .await
            .unwrap()
            .order
            .id
    }

    /// Review M2: an order paid between the sweep's listing and its cancel is PROCESSING by
    /// then; the cancel is decided under the row lock, so it is left alone.
    #[tokio::test]
    async fn the_timeout_leaves_an_order_that_was_paid_meanwhile() {
        let (_db, commerce) = shop(5).await;
        let order = place(&commerce, "alice", 1).await;
        commerce
            .transition_order(order, OrderStatus::Processing, "payment approved")
            .await
            .unwrap();
        let expiry = payment_timeout(Duration::from_secs(30));
        assert!(!expire_one(&commerce, order, &expiry).await.unwrap());
        assert_eq!(
            commerce.order(order).await.unwrap().status,
            OrderStatus::Processing
        );
        assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 4);
    }

    /// Review minor 3: one round sweeps every timed-out order, not one page of them.
    #[tokio::test]
    async fn one_round_sweeps_past_a_full_page() {
        let (_db, commerce) = shop(1_000).await;
        let page = 10;
        let total = page as usize * 2 + 7;
        for i in 0..total {
            place(&commerce, &format!("user-{i}"), 1).await;
        }
        let expiry = payment_timeout(AT_ONCE);
        let cancelled = expire(&commerce, &expiry, page, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(cancelled, total);
        let left = commerce
            .orders_stuck_in(OrderStatus::Created, AT_ONCE, 1_000)
            .await
            .unwrap();
        assert!(left.is_empty(), "{} orders still CREATED", left.len());
        assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 1_000);
    }

    /// Review M5: a backorder holding stock without a payment is cancelled after its time,
    /// and its units go back on the shelf; CREATED orders are not touched by it.
    #[tokio::test]
    async fn an_expired_backorder_returns_the_stock_it_held() {
        let (_db, commerce) = shop(5).await;
        let paid = place(&commerce, "bob", 1).await;
        let hoarder = place(&commerce, "mallory", 10).await;
        assert_eq!(
            commerce.order(hoarder).await.unwrap().status,
            OrderStatus::Backordered
        );
        assert_eq!(commerce.stock(ProductId(1)).await.unwrap().available, 0);
        let cancelled = expire(
            &commerce,
            &backorder_expiry(AT_ONCE),
            PAGE,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(cancelled, 1);
        assert_eq!(
            commerce.order(hoarder).await.unwrap().status,
            OrderStatus::Cancelled
        );
        assert_eq!(
            commerce.order(paid).await.unwrap().status,
            OrderStatus::Created
        );
        let stock = commerce.stock(ProductId(1)).await.unwrap();
        assert_eq!((stock.available, stock.backordered), (4, 0));
    }
}
