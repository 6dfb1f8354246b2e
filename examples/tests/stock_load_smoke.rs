//! Smoke test of the `stock-load` harness (not a benchmark): tiny runs, closed and open loop,
//! must exit cleanly with every consistency check passing and write their JSON and SVG.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use commerce_examples::load::Report;
use sqlx::{ConnectOptions, Connection};

/// A run that has not finished by then is killed and the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the harness with `args`, killed after [`RUN_TIMEOUT`].
async fn stock_load(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_stock-load"))
        .args(args)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(RUN_TIMEOUT, run).await {
        Ok(output) => output.expect("start stock-load"),
        Err(_) => panic!("stock-load {args:?} still running after {RUN_TIMEOUT:?}; killed"),
    }
}

/// Asserts a clean exit and returns the rows of the JSON it wrote.
fn rows_of(output: &Output, json: &Path) -> Report {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stock-load failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let text = std::fs::read_to_string(json).expect("read the JSON");
    let report: Report = serde_json::from_str(&text).expect("the JSON parses as a Report");
    for row in &report.rows {
        assert!(row.check_ok, "check failed: {row:?}\n{stdout}");
        assert!(row.check.starts_with("ok"), "{row:?}");
        assert!(
            stdout.contains(&row.check),
            "the table shows the check:\n{stdout}"
        );
        assert!(row.p50_ms <= row.p95_ms && row.p95_ms <= row.p99_ms && row.p99_ms <= row.max_ms);
        assert_eq!(row.errors - row.shed, 0, "no request failed: {row:?}");
    }
    report
}

async fn drop_database(name: &str) {
    let options: sqlx::postgres::PgConnectOptions = commerce_testkit::database_url()
        .parse()
        .expect("DATABASE_URL");
    let mut conn = options
        .disable_statement_logging()
        .connect()
        .await
        .expect("connect to Postgres");
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop the smoke test's database");
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_closed_and_open_loop_and_checks_out() {
    // `ctest_<secs>_...`: a database left by a killed run is swept by the test kit later.
    let database = commerce_testkit::unique_name("ctest").replace('-', "_");
    let dir = std::env::temp_dir().join(commerce_testkit::unique_name("stock-load-smoke"));
    std::fs::create_dir_all(&dir).expect("create the temp dir");
    let (json, svg, open_json) = (
        dir.join("rows.json"),
        dir.join("rows.svg"),
        dir.join("open.json"),
    );
    let common = [
        "--duration",
        "1",
        "--clients",
        "8",
        "--strategies",
        "conditional-update,batching,bare-update",
        "--scenarios",
        "hot,flash",
        "--flash-clients",
        "200",
        "--flash-stock",
        "100",
        "--database",
        &database,
    ];

    let json_arg = json.to_string_lossy();
    let svg_arg = svg.to_string_lossy();
    let mut closed = common.to_vec();
    closed.extend(["--json", &json_arg, "--plot", &svg_arg]);
    let report = rows_of(&stock_load(&closed).await, &json);
    let names: Vec<(&str, &str, &str)> = report
        .rows
        .iter()
        .map(|r| (r.strategy.as_str(), r.scenario.as_str(), r.mode.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("conditional-update", "hot", "closed"),
            ("conditional-update", "flash-100", "closed"),
            ("batching", "hot", "closed"),
            ("batching", "flash-100", "closed"),
            ("bare-update", "hot", "closed"),
            ("bare-update", "flash-100", "closed"),
        ]
    );
    for row in &report.rows {
        assert!(row.ok > 0, "something was sold: {row:?}");
        assert_eq!(row.shed, 0, "a closed loop sheds nothing: {row:?}");
        if row.scenario == "flash-100" {
            assert!(row.ok <= 100, "not oversold: {row:?}");
            assert_eq!(row.clients, 200);
            assert_eq!(row.sold_out_after_s.is_some(), row.ok == 100, "{row:?}");
        } else {
            assert_eq!(row.clients, 8);
        }
        // The profile: every row wrote (orders, or the bare update), and on Linux the CPU
        // split covers the machine's cores.
        let profile = row.profile.as_ref().expect("a profile per row");
        assert!(profile.write_tx_per_s > 0.0, "{row:?}");
        assert!(profile.orders_per_tx > 0.0, "{row:?}");
        if cfg!(target_os = "linux") {
            let cpu = profile.cpu.expect("/proc is readable on Linux");
            let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
            let sum = cpu.postgres + cpu.redis + cpu.harness + cpu.other + cpu.idle;
            // (In `flash-100` batching may turn the whole second away from memory.)
            if row.scenario == "hot" {
                assert!(cpu.postgres > 0.0, "Postgres did the writing: {cpu:?}");
            }
            assert!(cpu.harness > 0.0, "{cpu:?}");
            assert!(sum > 0.0 && sum <= cores + 0.01, "{cpu:?} on {cores} cores");
        }
    }
    let svg_text = std::fs::read_to_string(&svg).expect("the SVG exists");
    assert!(svg_text.starts_with("<svg") && svg_text.contains("bare-update"));

    let open_arg = open_json.to_string_lossy();
    let mut open = common.to_vec();
    open.extend(["--rate", "200", "--json", &open_arg]);
    let report = rows_of(&stock_load(&open).await, &open_json);
    assert_eq!(report.rows.len(), 6);
    for row in &report.rows {
        assert_eq!(row.mode, "open@200");
        // 200 arrivals per second for a second: every one is answered or shed.
        let arrivals = row.ok + row.rejected + row.errors;
        assert!(
            (150..=210).contains(&arrivals),
            "{arrivals} arrivals: {row:?}"
        );
    }

    // Over HTTP through the reference app (bare-update stays direct).
    let http_json = dir.join("http.json");
    let http_arg = http_json.to_string_lossy();
    let mut http = common.to_vec();
    http[5] = "batching,bare-update";
    http.extend(["--http", "--json", &http_arg]);
    let report = rows_of(&stock_load(&http).await, &http_json);
    let names: Vec<&str> = report.rows.iter().map(|r| r.strategy.as_str()).collect();
    assert_eq!(
        names,
        [
            "batching+http",
            "batching+http",
            "bare-update",
            "bare-update"
        ]
    );
    for row in &report.rows {
        assert!(row.ok > 0 && row.errors == 0, "{row:?}");
    }

    drop_database(&database).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_flags_fail_with_a_message() {
    for args in [
        &["--strategies", "nope"][..],
        &["--clients", "0"],
        &["--rate", "0"],
        &["--flash-stock", "0", "--scenarios", "flash"],
        &["--database", "a;b"],
        &["--duration", "x"],
        &["--batch-in-flight", "0"],
        &["--batch-max", "0"],
        &["--http", "--batch-max", "50"],
    ] {
        let output = stock_load(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains("rror"),
            "{args:?}: no error message: {stderr}"
        );
    }
}
