//! The distributed deployment as real processes: the `reference-app` binary started once per
//! instance (`serve --service order|store|payment|gateway`) on one database, Redis and broker
//! (the machine's shared servers with a fresh database, or servers a test owns), the payment
//! gateway scripted in the test process. Processes can be killed (SIGKILL) and started again
//! on the same port, so the gateway's list of instances stays true.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use commerce_client::{ApiClient, RetryPolicy};
use commerce_testkit::{eventually, kafka_brokers, redis_url, unique_name, TestDb};
use reference_app::auth::{Auth, Role};
use reference_app::config::Secret;
use reqwest::StatusCode;
use tokio::process::{Child, Command};

use super::gateway::ScriptedGateway;
use super::SECRET;

/// One process of the deployment, killed (SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    pub service: String,
    pub url: String,
    pub port: u16,
    pub log: PathBuf,
    /// The settings it was started with beyond the deployment's (for a restart).
    pub extra: Vec<(String, String)>,
    pub child: Child,
}

impl Process {
    /// Kills it with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "{} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

/// Where the processes find Postgres, Redis and the broker.
#[derive(Debug, Clone)]
pub struct Servers {
    pub database: String,
    pub redis: String,
    pub brokers: String,
}

/// The processes of one deployment and what they share.
pub struct Deployment {
    pub servers: Servers,
    /// The fresh database on the shared server, when the deployment made one.
    pub db: Option<TestDb>,
    pub prefix: String,
    pub payments: ScriptedGateway,
    pub logs: PathBuf,
    pub auth: Auth,
    /// `STOCK_STRATEGY` of every instance it starts (default `batching`).
    pub strategy: String,
}

/// A port free now (the process binds it a moment later).
pub fn free_port() -> u16 {
    commerce_testkit::free_port()
}

impl Deployment {
    /// A deployment on the machine's shared Redis and broker and a fresh database.
    pub async fn new() -> Self {
        let db = TestDb::with_pool_size(&[], 2).await;
        let servers = Servers {
            database: db.url(),
            redis: redis_url(),
            brokers: kafka_brokers(),
        };
        let mut deployment = Self::on(servers).await;
        deployment.db = Some(db);
        deployment
    }

    /// A deployment on `servers` (which the caller owns).
    pub async fn on(servers: Servers) -> Self {
        let prefix = unique_name("dist");
        let logs = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&logs).expect("log directory");
        Self {
            servers,
            db: None,
            prefix,
            payments: ScriptedGateway::start().await,
            logs,
            auth: Auth::new(&Secret::new(SECRET)).unwrap(),
            strategy: "batching".to_owned(),
        }
    }

    /// Its database's URL.
    pub fn database_url(&self) -> &str {
        &self.servers.database
    }

    /// Starts the gateway in front of `order` and `store` instances, with `extra` settings.
    pub async fn start_gateway(
        &self,
        order: &[&Process],
        store: &[&Process],
        extra: &[(&str, String)],
    ) -> Process {
        let urls = |instances: &[&Process]| {
            instances
                .iter()
                .map(|p| p.url.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut settings = vec![
            ("GATEWAY_ORDER_URLS", urls(order)),
            ("GATEWAY_STORE_URLS", urls(store)),
        ];
        settings.extend(extra.iter().cloned());
        self.start("gateway", "gateway", &settings).await
    }

    /// Starts `reference-app serve` as `service` with `extra` settings (which win over the
    /// deployment's) and waits for its `/ready`.
    pub async fn start(&self, name: &str, service: &str, extra: &[(&str, String)]) -> Process {
        let extra = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let process = self.spawn(name, service, free_port(), extra);
        self.await_ready(&process, Duration::from_secs(90)).await;
        process
    }

    /// Kills `process` with SIGKILL, leaves it down for `down`, starts it again on its port
    /// with its settings and waits for its `/ready` (up to `within`). Returns whether it
    /// became ready.
    pub async fn crash_and_restart(
        &self,
        process: &mut Process,
        down: Duration,
        within: Duration,
    ) -> bool {
        process.kill().await;
        tokio::time::sleep(down).await;
        let again = self.spawn(
            &process.name,
            &process.service,
            process.port,
            process.extra.clone(),
        );
        *process = again;
        self.ready(process, within).await
    }

    /// Starts the process without waiting for it.
    fn spawn(&self, name: &str, service: &str, port: u16, extra: Vec<(String, String)>) -> Process {
        let log = self.logs.join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_reference-app"));
        command
            .arg("serve")
            .env("SERVICE", service)
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("COMMERCE_JWT_SECRET", SECRET)
            .env("DATABASE_URL", &self.servers.database)
            .env("REDIS_URL", &self.servers.redis)
            .env("KAFKA_BROKERS", &self.servers.brokers)
            .env("EVENT_PREFIX", &self.prefix)
            .env("PAYMENT_GATEWAY_URL", self.payments.url())
            .env("STOCK_STRATEGY", &self.strategy)
            .env("ORDER_RATE_PER_MINUTE", "0")
            .env("SHUTDOWN_DRAIN_SECS", "0")
            .env("DB_MAX_CONNECTIONS", "8")
            .env("RUST_LOG", "warn,reference_app=info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            )
            .kill_on_drop(true);
        for (key, value) in &extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("start reference-app");
        Process {
            name: name.to_owned(),
            service: service.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
            extra,
            child,
        }
    }

    /// Whether `process` answers 200 on `/ready` within `within`.
    pub async fn ready(&self, process: &Process, within: Duration) -> bool {
        let http = reqwest::Client::new();
        eventually(within, || async {
            http.get(format!("{}/ready", process.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await
    }

    async fn await_ready(&self, process: &Process, within: Duration) {
        let ready = self.ready(process, within).await;
        assert!(ready, "not ready within {within:?}: {}", process.log_tail());
    }

    /// A client of `url` as `user` in `role`, without retries (a test sees each answer).
    pub fn client(&self, url: &str, user: &str, role: Role) -> ApiClient {
        self.client_retrying(url, user, role, RetryPolicy::none())
    }

    /// As [`Deployment::client`], retrying as `policy` says.
    pub fn client_retrying(
        &self,
        url: &str,
        user: &str,
        role: Role,
        policy: RetryPolicy,
    ) -> ApiClient {
        let token = self
            .auth
            .issue(user, role, Duration::from_secs(3600))
            .unwrap();
        ApiClient::builder(url)
            .bearer_token(&token)
            .timeout(Duration::from_secs(30))
            .retry(policy)
            .build()
            .unwrap()
    }
}

/// When the gateway's log says `instance` went out of its balancer (the first time).
pub fn taken_out_at(gateway: &Process, instance: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let log = std::fs::read_to_string(&gateway.log).ok()?;
    let line = log
        .lines()
        .find(|l| l.contains("instance down") && l.contains(instance))?;
    // Without the colour codes the line starts with its RFC 3339 time.
    let plain: String = strip_ansi(line);
    let stamp = plain.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The instances the gateway counts as up for `service`, from its `/metrics`.
pub async fn instances_up(gateway: &str, service: &str) -> Option<u32> {
    let text = reqwest::get(format!("{gateway}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let wanted = format!("gateway_instances_up{{service=\"{service}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(wanted.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u32)
}

/// Resident memory (KiB) and open file descriptors of process `pid`.
pub fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}
