//! The consistency checks after a run: nothing oversold, every unit accounted for.

use commerce_core::Commerce;
use sqlx::PgPool;

use super::drive::Totals;

/// Problems listed per check before the rest are only counted.
const SHOWN: usize = 5;

/// What the checks found.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// One line per broken rule; empty when consistent.
    pub(crate) problems: Vec<String>,
    /// Whether every product ended with nothing available.
    pub(crate) sold_out: bool,
}

/// The sum of ledger deltas of every product, by product id.
///
/// # Errors
/// Database errors.
pub(crate) async fn ledger_sums(pool: &PgPool) -> sqlx::Result<Vec<(i64, i64)>> {
    sqlx::query_as(
        "SELECT p.id, COALESCE(SUM(l.delta), 0)::BIGINT \
         FROM commerce.products p LEFT JOIN commerce.stock_ledger l ON l.product_id = p.id \
         GROUP BY p.id ORDER BY p.id",
    )
    .fetch_all(pool)
    .await
}

/// Checks the database after a run in which every product started with `stock` units and
/// `totals` were recorded; `ledger_before` is [`ledger_sums`] from before the run; `received`
/// the units received during the run per product id (empty: none).
///
/// For every target: per product, available == stock − units confirmed and >= 0, and the
/// units taken in total == requests confirmed. With orders: orders stored == confirmed, the
/// ordered quantities == units taken, per product the ledger moved by exactly final − start,
/// and [`Commerce::audit`] is clean. With the bare update: no order rows, the ledger untouched.
///
/// # Errors
/// Database errors.
pub(crate) async fn verify(
    pool: &PgPool,
    writes_orders: bool,
    stock: i64,
    totals: &Totals,
    ledger_before: &[(i64, i64)],
    received: &[i64],
) -> anyhow::Result<Verdict> {
    let mut problems = Vec::new();
    let levels: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, available FROM commerce.products ORDER BY id")
            .fetch_all(pool)
            .await?;
    // Units of orders cancelled after they were confirmed (over HTTP the payment saga may
    // cancel one), per product: they went back to stock.
    let returned: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT l.product_id, SUM(l.allocated)::BIGINT FROM commerce.order_lines l \
         JOIN commerce.orders o ON o.id = l.order_id WHERE o.status = 'CANCELLED' \
         GROUP BY l.product_id",
    )
    .fetch_all(pool)
    .await?;
    let returned_of = |product: i64| {
        returned
            .iter()
            .find(|(p, _)| *p == product)
            .map_or(0, |(_, units)| *units)
    };
    let mut wrong = Vec::new();
    let (mut taken, mut given_back) = (0_i64, 0_i64);
    for &(product, available) in &levels {
        let sold = usize::try_from(product)
            .ok()
            .and_then(|p| totals.sold.get(p))
            .copied()
            .unwrap_or_default();
        let back = returned_of(product);
        let arrived = usize::try_from(product)
            .ok()
            .and_then(|p| received.get(p))
            .copied()
            .unwrap_or_default();
        taken += stock + arrived - available;
        given_back += back;
        let expected = stock + arrived - sold + back;
        if available < 0 || available != expected {
            wrong.push(format!(
                "product {product}: available {available} but start + received - confirmed + \
                 cancelled = {expected}"
            ));
        }
    }
    summarise(&mut problems, wrong);
    let ok = i64::try_from(totals.ok)?;
    if taken != ok - given_back {
        problems.push(format!(
            "{taken} units taken but {ok} confirmed ({given_back} cancelled since)"
        ));
    }

    let (orders, ordered): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM commerce.orders), \
                (SELECT COALESCE(SUM(l.quantity), 0)::BIGINT FROM commerce.order_lines l \
                 JOIN commerce.orders o ON o.id = l.order_id WHERE o.status <> 'CANCELLED')",
    )
    .fetch_one(pool)
    .await?;
    let ledger_after = ledger_sums(pool).await?;
    if writes_orders {
        if orders != ok {
            problems.push(format!("{orders} orders stored but {ok} confirmed"));
        }
        if ordered != taken {
            problems.push(format!("{ordered} units ordered but {taken} taken"));
        }
        let mut moved = Vec::new();
        for (&(product, available), (&(_, before), &(_, after))) in
            levels.iter().zip(ledger_before.iter().zip(&ledger_after))
        {
            if after - before != available - stock {
                moved.push(format!(
                    "product {product}: ledger moved {} but stock {}",
                    after - before,
                    available - stock
                ));
            }
        }
        summarise(&mut problems, moved);
        let audit = Commerce::builder(pool.clone()).build().audit().await?;
        summarise(&mut problems, audit.violations);
    } else {
        if orders != 0 {
            problems.push(format!("{orders} orders stored by the bare update"));
        }
        if ledger_after != ledger_before {
            problems.push("the ledger changed under the bare update".to_owned());
        }
    }
    Ok(Verdict {
        problems,
        sold_out: !levels.is_empty() && levels.iter().all(|&(_, available)| available == 0),
    })
}

/// Adds the first [`SHOWN`] of `found` to `problems`, and a count of the rest.
fn summarise(problems: &mut Vec<String>, found: Vec<String>) {
    let more = found.len().saturating_sub(SHOWN);
    problems.extend(found.into_iter().take(SHOWN));
    if more > 0 {
        problems.push(format!("... and {more} more"));
    }
}
