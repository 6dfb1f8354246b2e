//! Shared by the integration tests: nodes on the shared Redis, and private Redis servers.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commerce_cache::{CacheBuilder, TwoLevelCache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
}

impl Product {
    pub fn new(id: i64, name: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct LoadFailed;

impl std::fmt::Display for LoadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("load failed")
    }
}

impl std::error::Error for LoadFailed {}

/// A builder for one node of the cache `prefix` on the shared Redis.
pub fn node_builder(prefix: &str) -> CacheBuilder<Product> {
    let client = redis::Client::open(commerce_testkit::redis_url()).expect("REDIS_URL");
    TwoLevelCache::<Product>::builder("products")
        .key_prefix(format!("{prefix}:"))
        .redis(client)
        .l2_ttl_jitter(Duration::ZERO)
}

pub async fn node(prefix: &str) -> TwoLevelCache<Product> {
    node_builder(prefix).build().await.expect("build cache")
}

/// Counts loader calls.
#[derive(Clone, Default)]
pub struct Loads(Arc<AtomicUsize>);

impl Loads {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `condition` every 5 ms until it holds or `within` passed; returns whether it held.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `redis-server` owned by one test, on a port of its own; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server on the same port (after [`PrivateRedis::stop`]) and waits for it.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        for _ in 0..200 {
            if client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("private redis-server on port {} did not start", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
