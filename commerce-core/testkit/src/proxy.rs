//! A TCP proxy a test puts between a client and a real server to inject network failures
//! that stopping the server cannot show: a black hole (sockets open, nothing arrives), slow
//! replies, a connection cut right after a given request went through (the reply lost), and
//! the server down as its clients see it (every connection reset, new ones too) while it keeps
//! its state, as a restarted server with durable storage would.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the server side of a cut connection stays open after the cut, so the server
/// reads and executes the request that went through before it sees the client gone.
const CUT_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
struct Faults {
    /// Nothing is forwarded in either direction (bytes wait in the socket buffers).
    black_hole: bool,
    /// Each chunk from the server reaches the client this much later.
    reply_delay: Duration,
    /// The next client chunk containing these bytes is forwarded, then the client's
    /// connection is closed and nothing more is relayed on it (one shot).
    cut_after: Option<Vec<u8>>,
    /// Every new connection is reset as soon as it is accepted.
    down: bool,
}

#[derive(Debug)]
struct Shared {
    faults: watch::Sender<Faults>,
    /// Cancelled by [`TcpProxy::close_all`]; every connection holds a child token.
    connections: Mutex<CancellationToken>,
}

/// A TCP proxy on `127.0.0.1:<free port>` to an upstream server, with injectable faults.
/// Forwards transparently until told otherwise; stops (closing every connection) on drop.
///
/// ```no_run
/// # async fn demo() {
/// let proxy = commerce_testkit::TcpProxy::start("127.0.0.1:6379").await;
/// let url = format!("redis://{}", proxy.address());
/// // ... connect a client to `url`, then:
/// proxy.black_hole();
/// # }
/// ```
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (`host:port`).
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            faults: watch::channel(Faults::default()).0,
            connections: Mutex::new(CancellationToken::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Self {
            port,
            shared,
            accept,
        }
    }

    /// Its port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address, `127.0.0.1:<port>`: give clients this instead of the server's.
    #[must_use]
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops forwarding in both directions on every connection, old and new, while keeping
    /// the sockets open: requests and replies vanish as in a network partition (no reset,
    /// no error until the client's own timeout). [`TcpProxy::forward`] lets the held bytes
    /// through again, as TCP would after the partition heals.
    pub fn black_hole(&self) {
        self.shared.faults.send_modify(|f| f.black_hole = true);
    }

    /// The server down, as its clients see a restart: every open connection is closed now, and
    /// each new one reset as soon as it is accepted (an RST, not a refused connect), until
    /// [`TcpProxy::forward`]. The server itself keeps running with all it holds.
    pub fn down(&self) {
        self.shared.faults.send_modify(|f| f.down = true);
        self.close_all();
    }

    /// Forwards normally again (ends a black hole, a reply delay and a [`TcpProxy::down`]).
    pub fn forward(&self) {
        self.shared.faults.send_modify(|f| {
            f.black_hole = false;
            f.reply_delay = Duration::ZERO;
            f.down = false;
        });
    }

    /// Delays every chunk from the server to the client by `delay` (requests go through at
    /// once, so the server acts before the client hears back).
    pub fn delay_replies(&self, delay: Duration) {
        self.shared.faults.send_modify(|f| f.reply_delay = delay);
    }

    /// Once: the next chunk a client sends that contains `needle` is forwarded to the server,
    /// then that client's connection is closed without relaying the reply, so the client
    /// cannot know whether the request took effect (e.g. `b"COMMIT"` for a lost commit reply).
    pub fn cut_after(&self, needle: &[u8]) {
        let needle = needle.to_vec();
        self.shared
            .faults
            .send_modify(|f| f.cut_after = Some(needle));
    }

    /// Closes every open connection now (new ones are accepted as usual).
    pub fn close_all(&self) {
        let mut token = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_all();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        if shared.faults.borrow().down {
            // An RST on close: the client sees its connection reset, as by a server going down.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let closed = shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .child_token();
        let upstream = upstream.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            relay(client, server, &shared, closed).await;
        });
    }
}

/// Relays one connection until either side closes, a cut, or `closed`.
async fn relay(client: TcpStream, server: TcpStream, shared: &Shared, closed: CancellationToken) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let client_gone = closed.child_token();
    let requests = requests(client_read, server_write, shared, client_gone.clone());
    let replies = replies(server_read, client_write, shared, client_gone.clone());
    tokio::join!(requests, replies);
}

/// Waits until the proxy is not black-holing (or the connection is gone: false).
async fn passable(faults: &mut watch::Receiver<Faults>, gone: &CancellationToken) -> bool {
    tokio::select! {
        ok = faults.wait_for(|f| !f.black_hole) => ok.is_ok(),
        () = gone.cancelled() => false,
    }
}

/// Client to server.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    gone: CancellationToken,
) {
    let mut faults = shared.faults.subscribe();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut faults, &gone).await {
            break;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = gone.cancelled() => break,
        };
        let Ok(n) = read else { break };
        if n == 0 {
            break;
        }
        let chunk = &buffer[..n];
        if !passable(&mut faults, &gone).await {
            break;
        }
        let mut cut = false;
        shared.faults.send_if_modified(|f| {
            let hit = f
                .cut_after
                .as_deref()
                .is_some_and(|needle| contains(chunk, needle));
            if hit {
                f.cut_after = None;
                cut = true;
            }
            hit
        });
        if to.write_all(chunk).await.is_err() {
            break;
        }
        if cut {
            // The request is on its way; the client hears nothing more. The server side stays
            // open a little so the server executes the request rather than seeing a reset.
            gone.cancel();
            tokio::time::sleep(CUT_LINGER).await;
            break;
        }
    }
    gone.cancel();
}

/// Server to client, each chunk delayed by the current reply delay.
async fn replies(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    gone: CancellationToken,
) {
    let (chunks, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = {
        let gone = gone.clone();
        let faults = shared.faults.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let read = tokio::select! {
                    read = from.read(&mut buffer) => read,
                    () = gone.cancelled() => break,
                };
                let Ok(n) = read else { break };
                if n == 0 {
                    break;
                }
                let due = Instant::now() + faults.borrow().reply_delay;
                if chunks.send((due, buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
            // The server's end (or a read error) ends the queue, not the connection: what it
            // sent before closing is still delivered, then the client sees the close.
            drop(chunks);
        }
    };
    let writer = async {
        let mut faults = shared.faults.subscribe();
        while let Some((due, chunk)) = queued.recv().await {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = gone.cancelled() => break,
            }
            if !passable(&mut faults, &gone).await {
                break;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
        gone.cancel();
    };
    tokio::join!(reader, writer);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}
