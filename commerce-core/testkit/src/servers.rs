//! Servers of a test's own (`redis-server`, the tansu broker) on free ports, which the test
//! may stop and start again without disturbing the shared servers other tests use.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
///
/// # Panics
/// When no ephemeral port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A child process killed (and reaped) on drop.
#[derive(Debug, Default)]
struct OwnedChild(Option<Child>);

impl OwnedChild {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` owned by one test, on a port of its own, keeping nothing on disk; killed
/// on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: OwnedChild,
}

impl PrivateRedis {
    /// Starts the server and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH` or does not answer within 10 s.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: OwnedChild::default(),
        };
        redis.restart().await;
        redis
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, after [`PrivateRedis::stop`]) on the same port and waits
    /// until it answers.
    ///
    /// # Panics
    /// When it is running already, or does not start.
    pub async fn restart(&mut self) {
        assert!(
            self.child.0.is_none(),
            "private redis-server already running"
        );
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // DEBUG SLEEP and friends, for tests that stall the server.
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it on PATH?)");
        self.child = OwnedChild(Some(child));
        let port = self.port;
        let answered = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if redis_pong(port) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(
            answered,
            "private redis-server on port {port} did not start"
        );
    }

    /// Kills the server now (as a crash would; it keeps nothing, so a restart is empty).
    pub fn stop(&mut self) {
        self.child.kill();
    }
}

/// Whether a Redis server on `port` answers `PING` (plain RESP, no client library needed).
fn redis_pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A tansu broker of the test's own on a free port (memory storage), which the test may
/// stop and start without touching the shared broker; killed on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    port: u16,
    /// What it tells clients to connect to, when not its own address.
    advertised: Option<String>,
    child: OwnedChild,
}

impl PrivateBroker {
    /// Starts the broker and waits until it accepts connections.
    ///
    /// # Panics
    /// When tansu is not installed (`scripts/services.sh up` installs it) or does not start.
    pub async fn start() -> Self {
        let mut broker = Self {
            port: free_port(),
            advertised: None,
            child: OwnedChild::default(),
        };
        broker.restart().await;
        broker
    }

    /// Starts the broker on `port`, telling clients to connect to `advertised` (`host:port`)
    /// instead: a proxy in front of it (a [`TcpProxy`](crate::TcpProxy) to `port`), which every
    /// client then goes through, bootstrap and data alike.
    ///
    /// # Panics
    /// As [`PrivateBroker::start`].
    pub async fn start_advertising(port: u16, advertised: impl Into<String>) -> Self {
        let mut broker = Self {
            port,
            advertised: Some(advertised.into()),
            child: OwnedChild::default(),
        };
        broker.restart().await;
        broker
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its bootstrap address for clients: `127.0.0.1:<port>`, or the advertised one.
    #[must_use]
    pub fn brokers(&self) -> String {
        self.advertised
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.port))
    }

    /// Starts the broker process (again) on the same port and waits until it accepts.
    ///
    /// # Panics
    /// When it is running already, or does not start within 20 s.
    pub async fn restart(&mut self) {
        assert!(self.child.0.is_none(), "private broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://{}", self.brokers());
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu (set TANSU_BIN, or install it: scripts/services.sh up)");
        self.child = OwnedChild(Some(child));
        let address = format!("127.0.0.1:{}", self.port);
        let listening = crate::eventually(Duration::from_secs(20), || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(address).await.is_ok() }
        })
        .await;
        assert!(listening, "private broker on {address} did not start");
    }

    /// Kills the broker process (as a crash would).
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Freezes the broker process (SIGSTOP): its connections stay open and nothing is
    /// answered, as a hung broker or a partition between it and every client. Its memory
    /// storage survives, unlike a [`stop`](PrivateBroker::stop).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](PrivateBroker::pause)d broker run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child.0 {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The tansu binary: `TANSU_BIN`, else `~/.cargo/bin/tansu` when installed, else `tansu`.
#[must_use]
pub fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return path;
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let installed = format!("{home}/bin/tansu");
    if std::path::Path::new(&installed).exists() {
        installed
    } else {
        "tansu".to_owned()
    }
}
