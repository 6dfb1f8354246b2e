//! One row per (strategy, scenario): computed from a run, printed, written as JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::check::Verdict;
use super::drive::Totals;
use super::profile::{CpuSplit, Profile};
use super::{Mode, Plan};

/// What one (strategy, scenario) run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Strategy name (`bare-update` for the ceiling).
    pub strategy: String,
    /// Scenario name (`hot`, `spread`, `sellout`, `flash-<stock>`).
    pub scenario: String,
    /// `closed` or `open@<rate>`.
    pub mode: String,
    /// Concurrent clients (closed loop) or the cap on outstanding requests (open loop).
    pub clients: usize,
    /// Database pool size.
    pub connections: u32,
    /// Seconds from the start until the last request was answered.
    pub elapsed_s: f64,
    /// Requests that took a unit.
    pub ok: u64,
    /// Requests turned away for lack of stock.
    pub rejected: u64,
    /// Failed requests plus shed arrivals.
    pub errors: u64,
    /// Open-loop arrivals dropped at the cap (included in `errors`).
    pub shed: u64,
    /// Successful requests per second; for `flash`, while stock remained (up to the last
    /// success when it sold out).
    pub ok_per_s: f64,
    /// Rejections per second; for `flash`, after the sell-out instant only.
    pub rejected_per_s: f64,
    /// When every product sold out: seconds from the start to the last success.
    pub sold_out_after_s: Option<f64>,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Highest latency, ms.
    pub max_ms: f64,
    /// Whether every consistency check passed.
    pub check_ok: bool,
    /// `ok: ...`, or `FAILED: ` and the problems found.
    pub check: String,
    /// Write transactions and CPU split over the run (absent in files written before it was
    /// measured).
    #[serde(default)]
    pub profile: Option<Profile>,
    /// Over HTTP: how the payment saga kept pace (absent through the crate API).
    #[serde(default)]
    pub saga: Option<SagaPace>,
}

/// How the payment saga kept pace with the orders of an HTTP run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SagaPace {
    /// Orders paid (PROCESSING) when the load stopped, per second of the run.
    pub paid_per_s: f64,
    /// Orders still CREATED (placed, not yet paid) when the load stopped.
    pub created_at_stop: u64,
    /// Seconds from the end of the load until no order was CREATED; `None` when that took
    /// longer than the harness waits ([`SAGA_DRAIN_LIMIT`](super::SAGA_DRAIN_LIMIT)).
    pub drained_after_s: Option<f64>,
}

/// All rows of a run, as written by [`write_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One per (strategy, scenario), in run order.
    pub rows: Vec<Row>,
}

/// `n` per second of `window` (0 for an empty window).
pub(super) fn per_second(n: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        n as f64 / window.as_secs_f64()
    }
}

/// What a run measured and found, before it is turned into a [`Row`].
#[derive(Debug)]
pub(crate) struct Measured {
    /// From the start until the last request was answered.
    pub(crate) elapsed: Duration,
    pub(crate) totals: Totals,
    pub(crate) verdict: Verdict,
    /// Whether the target wrote orders (the check line says which checks ran).
    pub(crate) writes_orders: bool,
    /// Write transactions and CPU over the same window.
    pub(crate) profile: Profile,
    /// Over HTTP: the saga's pace.
    pub(crate) saga: Option<SagaPace>,
}

impl Row {
    pub(crate) fn new(
        strategy: &str,
        plan: &Plan,
        mode: Mode,
        connections: u32,
        measured: Measured,
    ) -> Self {
        let Measured {
            elapsed,
            totals,
            verdict,
            writes_orders,
            profile,
            saga,
        } = measured;
        let sold_out_at = verdict.sold_out.then(|| totals.last_ok.unwrap_or_default());
        let (ok_per_s, rejected_per_s) = match sold_out_at {
            Some(at) if plan.flash => (
                per_second(totals.ok, at),
                per_second(totals.rejections_from(at), elapsed.saturating_sub(at)),
            ),
            _ => (
                per_second(totals.ok, elapsed),
                per_second(totals.rejected, elapsed),
            ),
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        let check_ok = verdict.problems.is_empty();
        let check = if !check_ok {
            format!("FAILED: {}", verdict.problems.join("; "))
        } else if writes_orders {
            "ok: not oversold, ledger consistent".to_owned()
        } else {
            "ok: not oversold (available = start - ok)".to_owned()
        };
        Self {
            strategy: strategy.to_owned(),
            scenario: plan.name.clone(),
            mode: mode.to_string(),
            clients: plan.clients,
            connections,
            elapsed_s: elapsed.as_secs_f64(),
            ok: totals.ok,
            rejected: totals.rejected,
            errors: totals.errors,
            shed: totals.shed,
            ok_per_s,
            rejected_per_s,
            sold_out_after_s: sold_out_at.map(|at| at.as_secs_f64()),
            p50_ms: ms(totals.latency.value_at_quantile(0.5)),
            p95_ms: ms(totals.latency.value_at_quantile(0.95)),
            p99_ms: ms(totals.latency.value_at_quantile(0.99)),
            max_ms: ms(totals.latency.max()),
            check_ok,
            check,
            profile: Some(profile),
            saga,
        }
    }
}

/// The table's header line.
#[must_use]
pub fn header() -> String {
    format!(
        "{:<23} {:<15} {:<10} {:>7} {:>5} {:>10} {:>11} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>25}  check",
        "strategy",
        "scenario",
        "mode",
        "clients",
        "conns",
        "ok/s",
        "rejected/s",
        "errors",
        "shed",
        "sold out",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "wtx/s",
        "ord/tx",
        "cores pg/redis/self/other"
    )
}

/// `row` as a line of the table.
#[must_use]
pub fn line(row: &Row) -> String {
    let sold_out = row
        .sold_out_after_s
        .map_or_else(|| "-".to_owned(), |s| format!("{s:.2}s"));
    let none = || "-".to_owned();
    let profile = row.profile.as_ref();
    let tx_per_s = profile.map_or_else(none, |p| format!("{:.0}", p.write_tx_per_s));
    let per_tx = profile.map_or_else(none, |p| format!("{:.1}", p.orders_per_tx));
    let cores = profile.and_then(|p| p.cpu).map_or_else(none, |c| {
        format!(
            "{:.2}/{:.2}/{:.2}/{:.2}",
            c.postgres, c.redis, c.harness, c.other
        )
    });
    format!(
        "{:<23} {:<15} {:<10} {:>7} {:>5} {:>10.1} {:>11.1} {:>7} {:>7} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>25}  {}",
        row.strategy,
        row.scenario,
        row.mode,
        row.clients,
        row.connections,
        row.ok_per_s,
        row.rejected_per_s,
        row.errors,
        row.shed,
        sold_out,
        row.p50_ms,
        row.p95_ms,
        row.p99_ms,
        row.max_ms,
        tx_per_s,
        per_tx,
        cores,
        row.check
    )
}

/// The saga's line under an HTTP row (`None` for a row without one): paid orders per
/// second, the CREATED backlog when the load stopped and how long it took to drain, and,
/// given the crate API's row of the same strategy and scenario from the same run, the ratio
/// of orders per second over HTTP to those through the crate.
#[must_use]
pub fn saga_line(row: &Row, through_crate: Option<&Row>) -> Option<String> {
    let saga = row.saga?;
    let drained = saga.drained_after_s.map_or_else(
        || "not drained".to_owned(),
        |s| format!("drained in {s:.2} s"),
    );
    let ratio = through_crate
        .filter(|c| c.ok_per_s > 0.0)
        .map_or_else(String::new, |c| {
            format!(
                "; ok/s over HTTP / through the crate: {:.2}x, paid/s / crate ok/s: {:.2}x",
                row.ok_per_s / c.ok_per_s,
                saga.paid_per_s / c.ok_per_s
            )
        });
    let cost = through_crate
        .and_then(|c| cost_line(row, c))
        .map_or_else(String::new, |line| format!("\n{line}"));
    Some(format!(
        "  saga: {:.1} paid/s, {} CREATED when the load stopped, {drained}{ratio}{cost}",
        saga.paid_per_s, saga.created_at_stop
    ))
}

/// What an order costs the machine over HTTP and through the crate, and what half the
/// crate's rate would allow: the machine's cores divided by half the crate row's orders a
/// second.
///
/// `None` without both rows' CPU figures, for a row that turned orders away (its CPU went to
/// refusals too), and for one whose saga fell behind (at least a tenth of its orders unpaid
/// during the load: their payment's CPU came after the window).
fn cost_line(http: &Row, through_crate: &Row) -> Option<String> {
    let (over_http, by_crate) = (
        http.profile.as_ref()?.cpu?,
        through_crate.profile.as_ref()?.cpu?,
    );
    let kept_pace = http
        .saga
        .is_some_and(|saga| saga.paid_per_s >= 0.9 * http.ok_per_s);
    if http.ok_per_s <= 0.0
        || through_crate.ok_per_s <= 0.0
        || http.rejected_per_s > 0.0
        || through_crate.rejected_per_s > 0.0
        || !kept_pace
    {
        return None;
    }
    // The run's own cores: Postgres, Redis and this process (clients and code under test).
    let per_order =
        |cpu: CpuSplit, rate: f64| (cpu.postgres + cpu.redis + cpu.harness) / rate * 1e6;
    let cores = by_crate.cores();
    Some(format!(
        "  cost: {:.0} µs of CPU per order over HTTP (Postgres {:.0}, this process {:.0}), {:.0} \
         through the crate; half the crate's rate on these {cores:.0} cores allows {:.0} µs per order",
        per_order(over_http, http.ok_per_s),
        over_http.postgres / http.ok_per_s * 1e6,
        over_http.harness / http.ok_per_s * 1e6,
        per_order(by_crate, through_crate.ok_per_s),
        cores / (0.5 * through_crate.ok_per_s) * 1e6,
    ))
}

/// Writes `rows` to `path` as a pretty-printed [`Report`].
///
/// # Errors
/// When the file cannot be written.
pub fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let report = Report {
        rows: rows.to_vec(),
    };
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: &str, ok_per_s: f64, cpu: Option<CpuSplit>, saga: Option<SagaPace>) -> Row {
        Row {
            strategy: strategy.to_owned(),
            scenario: "hot".to_owned(),
            mode: "closed".to_owned(),
            clients: 32,
            connections: 32,
            elapsed_s: 10.0,
            ok: 0,
            rejected: 0,
            errors: 0,
            shed: 0,
            ok_per_s,
            rejected_per_s: 0.0,
            sold_out_after_s: None,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            check_ok: true,
            check: "ok".to_owned(),
            profile: Some(Profile {
                write_tx_per_s: 0.0,
                orders_per_tx: 0.0,
                cpu,
            }),
            saga,
        }
    }

    fn cpu(postgres: f64, harness: f64, other: f64) -> Option<CpuSplit> {
        Some(CpuSplit {
            postgres,
            redis: 0.0,
            harness,
            other,
            idle: 2.0 - postgres - harness - other,
        })
    }

    const PACE: Option<SagaPace> = Some(SagaPace {
        paid_per_s: 2_523.3,
        created_at_stop: 233,
        drained_after_s: Some(0.07),
    });

    #[test]
    fn the_saga_line_prices_an_order_against_half_the_crates_rate() {
        // The figures of a run of the hot row (2026-12-07, 07:33 UTC).
        let http = row("batching+http", 2_546.5, cpu(1.13, 0.62, 0.01), PACE);
        let by_crate = row("batching", 13_403.6, cpu(0.78, 0.12, 0.04), None);
        let line = saga_line(&http, Some(&by_crate)).unwrap();
        assert!(
            line.contains("ok/s over HTTP / through the crate: 0.19x"),
            "{line}"
        );
        // (1.13 + 0.62) / 2,546.5 = 687 µs; 0.90 / 13,403.6 = 67 µs; 2 / 6,701.8 = 298 µs.
        assert!(
            line.contains(
                "cost: 687 µs of CPU per order over HTTP (Postgres 444, this process 243), 67 \
                 through the crate; half the crate's rate on these 2 cores allows 298 µs per order"
            ),
            "{line}"
        );
    }

    #[test]
    fn without_cpu_figures_or_a_crate_row_the_saga_line_has_no_cost() {
        let http = row("batching+http", 2_546.5, None, PACE);
        let by_crate = row("batching", 13_403.6, cpu(0.78, 0.12, 0.04), None);
        let line = saga_line(&http, Some(&by_crate)).unwrap();
        assert!(line.contains("0.19x") && !line.contains("cost:"), "{line}");
        let line = saga_line(
            &row("batching+http", 2_546.5, cpu(1.13, 0.62, 0.0), PACE),
            None,
        )
        .unwrap();
        assert!(!line.contains("x,") && !line.contains("cost:"), "{line}");
        assert!(
            saga_line(&by_crate, None).is_none(),
            "a crate row has no saga"
        );
        // A saga that fell behind: the window's CPU does not hold its orders' payments.
        let behind = Some(SagaPace {
            paid_per_s: 858.4,
            created_at_stop: 15_256,
            drained_after_s: Some(3.42),
        });
        let line = saga_line(
            &row("batching+http", 5_210.9, cpu(0.99, 0.90, 0.0), behind),
            Some(&by_crate),
        )
        .unwrap();
        assert!(!line.contains("cost:"), "{line}");
        // A sell-out: most of the CPU answered refusals.
        let mut sold_out = row("batching+http", 1_752.4, cpu(0.16, 1.75, 0.07), PACE);
        sold_out.rejected_per_s = 16_974.8;
        let line = saga_line(&sold_out, Some(&by_crate)).unwrap();
        assert!(!line.contains("cost:"), "{line}");
    }
}
