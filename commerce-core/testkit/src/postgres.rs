//! A PostgreSQL server of a test's own: `initdb` into a temporary folder, `postgres` on a free
//! port, which the test may kill (SIGKILL, as a crash), start again (crash recovery) or cut
//! off from its clients (`pg_terminate_backend`), without touching the machine's server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::servers::free_port;

/// A `postgres` server owned by one test (trust authentication, user `postgres`), its data in
/// a temporary folder removed on drop; the server and its backends are killed on drop.
///
/// As root (Postgres refuses to run as root) the server runs as the `postgres` user.
#[derive(Debug)]
pub struct PrivatePostgres {
    port: u16,
    root: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

impl PrivatePostgres {
    /// Creates a cluster (`initdb`), starts it and waits until it accepts connections.
    ///
    /// # Panics
    /// When the PostgreSQL server binaries are not found (`PG_BIN`, else the newest
    /// `/usr/lib/postgresql/<version>/bin`), `initdb` fails, or the server does not start.
    pub async fn start() -> Self {
        let bin = server_binaries();
        let root = std::env::temp_dir().join(crate::unique_name("private-pg"));
        std::fs::create_dir_all(root.join("socket")).expect("private postgres folder");
        let user = running_as_root().then(postgres_user);
        if let Some((uid, gid)) = user {
            chown(&root, uid, gid);
            chown(&root.join("socket"), uid, gid);
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = tokio::task::spawn_blocking(move || initdb.output())
            .await
            .expect("initdb task")
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut postgres = Self {
            port: free_port(),
            root,
            bin,
            user,
            server: None,
        };
        postgres.restart().await;
        postgres
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on it.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (again, after [`PrivatePostgres::kill`]: it recovers from its WAL
    /// first) on the same port and waits until it accepts connections.
    ///
    /// # Panics
    /// When it is running already, or does not accept connections within 60 s.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "private postgres already running");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.root.join("socket").display()
            ))
            // A crash of the process, not of the machine: the page cache survives it, so
            // flushing to disk would only slow the tests.
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.root.join("server.log"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            );
        // Its own process group: a kill reaches the backends too, as a crash of the server.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        as_user(&mut command, self.user);
        self.server = Some(command.spawn().expect("start postgres"));
        let url = self.url("postgres");
        let up = crate::eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move { PgConnection::connect(&url).await.is_ok() }
        })
        .await;
        assert!(
            up,
            "private postgres on port {} did not start: {}",
            self.port,
            self.log_tail()
        );
    }

    /// Kills the server and every backend with SIGKILL, as a crash would; a
    /// [`restart`](PrivatePostgres::restart) then runs crash recovery.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let group = format!("-{}", server.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = server.kill();
            let _ = server.wait();
            // The backends are gone once nothing answers on the port.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Ends every client connection with `pg_terminate_backend` (the server stays up):
    /// returns how many it ended.
    ///
    /// # Panics
    /// When the server does not answer.
    pub async fn terminate_connections(&self) -> i64 {
        let mut admin = PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the private postgres");
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_one(&mut admin)
        .await
        .expect("pg_terminate_backend");
        let _ = admin.close().await;
        ended
    }

    /// The last lines of the server's log, for a failure message.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn server_binaries() -> PathBuf {
    if let Ok(bin) = std::env::var("PG_BIN") {
        return PathBuf::from(bin);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL server binaries: set PG_BIN, or install postgresql")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("as root, a private postgres runs as the `postgres` user, which must exist")
    };
    (id("-u"), id("-g"))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .expect("chown the private postgres folder");
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(command, uid);
        std::os::unix::process::CommandExt::gid(command, gid);
    }
}
