//! What bounded a run: the database server's write transactions and the CPU time of Postgres,
//! Redis, this process and everything else, sampled before and after the load.
//!
//! Write transactions are counted by the transaction ids the server handed out (the next id,
//! read without taking one): every transaction that wrote takes exactly one, committed or
//! rolled back, and read-only ones take none. The count is cluster-wide, so other writers on
//! the same server are counted too (on the benchmark machine there are none).
//!
//! CPU time comes from `/proc` (Linux): `utime + stime` of every process named `postgres`
//! (the server and all its backends), `redis-server`, and this process (all its threads, the
//! reference app included when it runs in-process), against the machine's total from
//! `/proc/stat`. A backend that exits during the window takes its time with it, so Postgres'
//! share is a lower bound when connections come and go (the load pools keep theirs open).

use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::report::per_second;

/// What the server and the machine did during one run, per second of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Transactions that wrote (committed or rolled back), per second.
    pub write_tx_per_s: f64,
    /// Successful orders per write transaction (0 when nothing was written).
    pub orders_per_tx: f64,
    /// CPU in use on average, in cores, when `/proc` could be read.
    pub cpu: Option<CpuSplit>,
}

/// Average cores in use during a run, by whom. The five add up to the machine's core count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    /// The Postgres server and its backends.
    pub postgres: f64,
    /// The Redis server.
    pub redis: f64,
    /// This process: the load clients and the code under test (crate or in-process app).
    pub harness: f64,
    /// Everything else: other processes, the kernel's own work, and processes that exited
    /// during the window.
    pub other: f64,
    /// Not in use.
    pub idle: f64,
}

impl CpuSplit {
    /// The machine's cores: the five shares added up.
    #[must_use]
    pub fn cores(&self) -> f64 {
        self.postgres + self.redis + self.harness + self.other + self.idle
    }
}

/// A reading taken before or after the load.
#[derive(Debug)]
pub(crate) struct Sample {
    at: Instant,
    next_xid: i64,
    ticks: Option<Ticks>,
}

/// Clock ticks so far (the unit of `/proc/stat` and `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ticks {
    /// Every CPU, busy or idle.
    total: u64,
    /// Every CPU, idle (idle + iowait).
    idle: u64,
    cores: u32,
    postgres: u64,
    redis: u64,
    harness: u64,
}

impl Sample {
    /// Reads the server's next transaction id and the CPU counters.
    ///
    /// # Errors
    /// When the server cannot be asked.
    pub(crate) async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let next_xid: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .fetch_one(pool)
                .await
                .context("read the next transaction id")?;
        Ok(Self {
            at: Instant::now(),
            next_xid,
            ticks: read_ticks(),
        })
    }

    /// What happened between `self` and `later`, with `ok` successful orders in between.
    pub(crate) fn profile(&self, later: &Self, ok: u64) -> Profile {
        let window = later.at.saturating_duration_since(self.at);
        let written = u64::try_from(later.next_xid - self.next_xid).unwrap_or(0);
        let cpu = match (self.ticks, later.ticks) {
            (Some(before), Some(after)) => split(before, after),
            _ => None,
        };
        Profile {
            write_tx_per_s: per_second(written, window),
            orders_per_tx: if written == 0 {
                0.0
            } else {
                ok as f64 / written as f64
            },
            cpu,
        }
    }
}

/// The split of the ticks between two readings, in cores.
fn split(before: Ticks, after: Ticks) -> Option<CpuSplit> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let cores = f64::from(after.cores.max(1));
    let share = |ticks: u64| ticks as f64 / total as f64 * cores;
    let delta = |f: fn(&Ticks) -> u64| f(&after).saturating_sub(f(&before));
    let (postgres, redis, harness) = (
        delta(|t| t.postgres),
        delta(|t| t.redis),
        delta(|t| t.harness),
    );
    let watched = postgres + redis + harness;
    // The counters are read one after the other and tick separately, so over a short window
    // the watched processes can show a few more ticks than the machine was busy: the excess
    // comes off idle, so that the parts always add up to the whole.
    let busy = (total - delta(|t| t.idle).min(total))
        .max(watched)
        .min(total);
    let (idle, other) = (total - busy, busy - watched.min(busy));
    Some(CpuSplit {
        postgres: share(postgres),
        redis: share(redis),
        harness: share(harness),
        other: share(other),
        idle: share(idle),
    })
}

/// The machine's and the watched processes' ticks, or `None` without a readable `/proc`.
fn read_ticks() -> Option<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut ticks = machine_ticks(&stat)?;
    let own = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: it is simply not counted.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name, used)) = process_ticks(&text) else {
            continue;
        };
        match name {
            _ if pid == own => ticks.harness = used,
            "postgres" => ticks.postgres += used,
            "redis-server" => ticks.redis += used,
            _ => {}
        }
    }
    Some(ticks)
}

/// Total and idle ticks of every CPU, and the CPU count, from the text of `/proc/stat`.
fn machine_ticks(stat: &str) -> Option<Ticks> {
    let mut lines = stat.lines();
    let first = lines.next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = first
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already inside user and nice.
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    let cores = lines
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(Ticks {
        total,
        idle,
        cores: u32::try_from(cores).ok()?,
        ..Ticks::default()
    })
}

/// A process's name and `utime + stime` from the text of its `/proc/<pid>/stat`.
fn process_ticks(stat: &str) -> Option<(&str, u64)> {
    // "pid (name) state ...": the name may hold spaces and parentheses, so it ends at the
    // last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_process_line_gives_its_name_and_cpu_ticks() {
        let line = "1234 (postgres) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 \
                    100 1000 10 18446744073709551615";
        assert_eq!(process_ticks(line), Some(("postgres", 325)));
        let odd = "99 (a (b) c) R 1 2 3 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 1 1 1";
        assert_eq!(process_ticks(odd), Some(("a (b) c", 10)));
        assert_eq!(process_ticks("99 (cut short) R 1 2"), None);
        assert_eq!(process_ticks("garbage"), None);
    }

    #[test]
    fn the_machine_line_gives_total_idle_and_cores() {
        let stat = "cpu  100 5 50 800 20 1 4 0 0 0\ncpu0 50 2 25 400 10 1 2 0 0 0\n\
                    cpu1 50 3 25 400 10 0 2 0 0 0\nintr 1 2 3\n";
        let ticks = machine_ticks(stat).unwrap();
        assert_eq!((ticks.total, ticks.idle, ticks.cores), (980, 820, 2));
        assert_eq!(machine_ticks("intr 1 2"), None);
    }

    #[test]
    fn the_split_adds_up_to_the_cores() {
        let before = Ticks {
            total: 1_000,
            idle: 500,
            cores: 2,
            postgres: 100,
            redis: 10,
            harness: 50,
        };
        let after = Ticks {
            total: 1_200,
            idle: 520,
            postgres: 200,
            redis: 12,
            harness: 80,
            ..before
        };
        let cpu = split(before, after).unwrap();
        assert!((cpu.postgres - 1.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.idle - 0.2).abs() < 1e-9, "{cpu:?}");
        let sum = cpu.cores();
        assert!((sum - 2.0).abs() < 1e-9, "{cpu:?}");
        // A counter that went backwards (a reboot between readings) gives no split.
        assert_eq!(split(after, before), None);
        // Processes that ticked more than the machine was busy: still adds up.
        let over = Ticks {
            idle: 690,
            postgres: 250,
            ..after
        };
        let cpu = split(before, over).unwrap();
        let sum = cpu.cores();
        assert!((sum - 2.0).abs() < 1e-9 && cpu.other == 0.0, "{cpu:?}");
    }

    #[test]
    fn orders_per_transaction_are_measured_over_the_window() {
        let before = Sample {
            at: Instant::now(),
            next_xid: 1_000,
            ticks: None,
        };
        let after = Sample {
            at: before.at + Duration::from_secs(2),
            next_xid: 1_100,
            ticks: None,
        };
        let profile = before.profile(&after, 5_000);
        assert!((profile.write_tx_per_s - 50.0).abs() < 1e-9);
        assert!((profile.orders_per_tx - 50.0).abs() < 1e-9);
        assert_eq!(profile.cpu, None);
        assert_eq!(after.profile(&after, 0).orders_per_tx, 0.0);
    }
}
