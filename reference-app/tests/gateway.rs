//! The gateway in front of fake service instances, no database: balancing, health checks,
//! retries on a refused connection, the limits at the edge, timeouts, and the ids passed
//! downstream.
//!
//! Each fake instance is a small axum server of the test's own; killing it closes its
//! listening socket and its connections for real, so the gateway meets a refused connection.
//! An instance answers `/ready` (200, or 503 when the test says so), streams
//! `/api/v1/orders/{id}/events`, and answers every other path with the instance's name and
//! the headers it received; a request may ask it to answer late (`x-test-delay-ms`), to
//! hold until the test releases it (`x-test-hold`), or to take its turn at a server of fixed
//! capacity (`x-test-work-ms`: [`CAPACITY`] at a time, that long each).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use commerce_testkit::{eventually, within};
use futures::StreamExt;
use reference_app::auth::{Auth, Role};
use reference_app::config::{GatewayConfig, Secret};
use reference_app::gateway::{Gateway, RunningGateway};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The surge test measures what the instances serve against their capacity, so it runs
/// alone; the others (each with gateways and instances of its own) run together, as before.
/// Among them, on a fresh machine of two cores, the surge was served 67 – 98 answers a second
/// of the 100 it asks for, in 8 of 9 runs of this file (before and after the change that
/// found it); alone, it passes.
static MACHINE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn together() -> tokio::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

const SECRET: &str = "gateway-tests-token-key-of-at-least-32-bytes";

/// Events an instance's order stream sends, and the gap between two of them.
const STREAM_EVENTS: u32 = 6;
const STREAM_GAP: Duration = Duration::from_millis(200);

/// How long any wait of these tests may take before it counts as failed.
const WAIT: Duration = Duration::from_secs(3);

/// Requests sent at once by [`burst`].
const BURST: usize = 16;

// ---------------------------------------------------------------------------------------
// Fake service instances
// ---------------------------------------------------------------------------------------

/// Requests an instance works on at once when asked to work (`x-test-work-ms`); the others
/// wait in its queue.
const CAPACITY: usize = 4;

/// One API request an instance received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an instance's handlers share with the test.
#[derive(Debug)]
struct InstanceState {
    name: &'static str,
    ready: AtomicBool,
    /// Every `/ready` answer given, in order: whether it was 200.
    checks: Mutex<Vec<bool>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests with `x-test-hold` wait for this.
    release: CancellationToken,
    /// Requests with `x-test-work-ms` take one for that long.
    workers: tokio::sync::Semaphore,
}

impl InstanceState {
    fn record(&self, request: &Request) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Seen {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                headers: request.headers().clone(),
            });
    }
}

/// A fake instance of a service, reachable at its `url` until [`Instance::kill`].
struct Instance {
    state: Arc<InstanceState>,
    url: String,
    address: SocketAddr,
    stop: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Instance {
    async fn start(name: &'static str) -> Self {
        let state = Arc::new(InstanceState {
            name,
            ready: AtomicBool::new(true),
            checks: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            release: CancellationToken::new(),
            workers: tokio::sync::Semaphore::new(CAPACITY),
        });
        let router = Router::new()
            .route("/ready", get(ready))
            .route("/api/v1/orders/{id}/events", get(order_events))
            .fallback(echo)
            .with_state(state.clone())
            .layer(axum::middleware::map_response(close_after_answer));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Self {
            state,
            url: format!("http://{address}"),
            address,
            stop,
            server: Mutex::new(Some(server)),
        }
    }

    fn name(&self) -> &'static str {
        self.state.name
    }

    /// Makes `/ready` answer 200 (`true`) or 503.
    fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::SeqCst);
    }

    /// `/ready` answers given so far that were 200 (`ok`) or not.
    fn checks(&self, ok: bool) -> usize {
        let checks = self
            .state
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        checks.iter().filter(|&&c| c == ok).count()
    }

    /// The API requests it received.
    fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it received a request with `x-test-marker: marker`.
    fn saw(&self, marker: &str) -> bool {
        self.seen()
            .iter()
            .any(|s| s.header("x-test-marker") == Some(marker))
    }

    /// Lets every held request answer.
    fn release(&self) {
        self.state.release.cancel();
    }

    /// Closes its listening socket and every connection (none is busy when a test kills):
    /// from now on a connection to it is refused.
    async fn kill(&self) {
        self.stop.cancel();
        let server = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the instance is alive");
        within(WAIT, server).await.expect("the server task");
        assert!(
            TcpStream::connect(self.address).await.is_err(),
            "{} still accepts connections after the kill",
            self.address
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.release();
        self.stop.cancel();
        if let Some(server) = self
            .server
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            server.abort();
        }
    }
}

/// Every answer closes its connection, so the gateway keeps no idle connection to an
/// instance: after [`Instance::kill`] its next request meets a refused connection, never a
/// pooled one the kill closed a moment ago (that race is real, but it is a different failure:
/// not a refused connection). The instances are not behind the testkit's `TcpProxy` for the
/// same reason: it loses a reply whose server closes the connection right after sending it.
async fn close_after_answer(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn ready(State(state): State<Arc<InstanceState>>) -> StatusCode {
    let ready = state.ready.load(Ordering::SeqCst);
    state
        .checks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(ready);
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// An order's event stream: its headers at once, then an event every [`STREAM_GAP`],
/// [`STREAM_EVENTS`] of them (or `x-test-events`).
async fn order_events(State(state): State<Arc<InstanceState>>, request: Request) -> Response {
    state.record(&request);
    let name = state.name;
    let count: u32 = request
        .headers()
        .get("x-test-events")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(STREAM_EVENTS);
    let events = futures::stream::unfold(0, move |n| async move {
        if n == count {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(STREAM_GAP).await;
        }
        let event = format!("data: {{\"n\":{n},\"instance\":\"{name}\"}}\n\n");
        Some((Ok::<_, Infallible>(event), n + 1))
    });
    (
        [(CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    )
        .into_response()
}

/// Any other API request: 201 for a POST, 200 otherwise, with the instance's name and the
/// headers it received; late or held when the request asks.
async fn echo(State(state): State<Arc<InstanceState>>, request: Request) -> Response {
    state.record(&request);
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let delay = request
        .headers()
        .get("x-test-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(millis) = delay {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    if request.headers().contains_key("x-test-hold") {
        state.release.cancelled().await;
    }
    let work = request
        .headers()
        .get("x-test-work-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(millis) = work {
        let _worker = state.workers.acquire().await.expect("never closed");
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let status = if request.method() == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "instance": state.name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": headers,
    });
    (status, Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------
// The gateway and its client
// ---------------------------------------------------------------------------------------

/// A gateway on a free port over `order` and `store`, with `settings` (environment names)
/// over the tests' defaults: health checks every 100 ms, no per-user rate.
async fn gateway(
    order: &[&Instance],
    store: &[&Instance],
    settings: &[(&str, &str)],
) -> RunningGateway {
    let urls = |instances: &[&Instance]| {
        instances
            .iter()
            .map(|i| i.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut env: HashMap<String, String> = [
        ("BIND", "127.0.0.1"),
        ("PORT", "0"),
        ("COMMERCE_JWT_SECRET", SECRET),
        ("GATEWAY_HEALTH_INTERVAL_MS", "100"),
        ("GATEWAY_USER_RATE_PER_MINUTE", "0"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    env.insert("GATEWAY_ORDER_URLS".to_owned(), urls(order));
    env.insert("GATEWAY_STORE_URLS".to_owned(), urls(store));
    for (name, value) in settings {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    let config =
        GatewayConfig::from_lookup(|name| env.get(name).cloned()).expect("gateway settings");
    Gateway::build(config).await.expect("gateway").spawn()
}

/// A token of ours for `user`.
fn token(user: &str) -> String {
    Auth::new(&Secret::new(SECRET))
        .expect("key")
        .issue(user, Role::Customer, Duration::from_secs(3600))
        .expect("token")
}

/// An answer of the gateway, its body as JSON (`Null` when it is not).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    took: Duration,
}

impl Answer {
    /// The instance that served it (`""` when none did).
    fn instance(&self) -> &str {
        self.body["instance"].as_str().unwrap_or("")
    }

    /// A header the instance received, as it echoed it.
    fn echoed(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the API's error answer: `status`, the JSON error body with `code` and a
    /// message, and for 429 and 503 a `Retry-After` of whole seconds.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{self:#?}");
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "{self:#?}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:#?}"
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            let wait: u64 = self
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Retry-After in seconds: {self:#?}"));
            assert!(wait >= 1, "{self:#?}");
        }
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(gateway: &RunningGateway) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self {
            http,
            base: gateway.base_url.clone(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::POST, path)
    }

    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let started = Instant::now();
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("the body");
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            took: started.elapsed(),
        }
    }

    /// Waits until the gateway's `/ready` answers `status`; returns its last answer.
    async fn wait_ready(&self, status: StatusCode) -> Answer {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = Self::send(self.get("/ready")).await;
            if answer.status == status || Instant::now() > deadline {
                assert_eq!(answer.status, status, "gateway /ready: {answer:#?}");
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends bursts of GETs to `path` until each of `instances` served one: they are all in
    /// rotation.
    async fn wait_serving(&self, path: &str, instances: &[&Instance]) {
        let deadline = Instant::now() + WAIT;
        let warm_up = token("warm-up");
        let mut served = BTreeSet::new();
        while instances.iter().any(|i| !served.contains(i.name())) {
            assert!(
                Instant::now() < deadline,
                "not every instance served within {WAIT:?}: only {served:?}"
            );
            for answer in burst(|_| self.get(path).bearer_auth(&warm_up)).await {
                if answer.status.is_success() {
                    served.insert(answer.instance().to_owned());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends [`BURST`] requests at once (`request` makes the n-th) and returns their answers in
/// that order. Tests that need the balancer to pick every instance send bursts: p2c over
/// peak-EWMA sends requests one after another to whichever instance answered fastest lately,
/// for seconds at a time, and spreads them only when requests are in flight together.
async fn burst(request: impl Fn(usize) -> reqwest::RequestBuilder) -> Vec<Answer> {
    futures::future::join_all((0..BURST).map(|n| Client::send(request(n)))).await
}

/// The gateway's count of retries for `service`, from the process's Prometheus recorder
/// (installed by the first call, so call it before the retry under test). Only the retry
/// tests kill an instance in rotation: one for `store`, one for `order`.
fn retries(service: &str) -> u64 {
    let text = reference_app::telemetry::prometheus().render();
    let series = format!("gateway_retries_total{{service=\"{service}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// An event stream read one event at a time, each with its arrival since it was opened.
struct EventReader {
    chunks: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buffer: String,
    opened: Instant,
}

impl EventReader {
    fn new(response: reqwest::Response, opened: Instant) -> Self {
        Self {
            chunks: response.bytes_stream().boxed(),
            buffer: String::new(),
            opened,
        }
    }

    /// The next event and when it arrived; `None` when the stream ended.
    async fn next(&mut self) -> Option<(Duration, String)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                return Some((self.opened.elapsed(), event.trim().to_owned()));
            }
            let chunk = self.chunks.next().await?.expect("the stream flows");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// `data` as unpadded base64url (what a JWT's parts are).
fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A W3C `traceparent` of version 00 with ids not all zero, checked independently of the
/// gateway's own parser.
fn is_w3c_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };
    parts.len() == 4
        && parts[0] == "00"
        && lower_hex(parts[1], 32)
        && lower_hex(parts[2], 16)
        && lower_hex(parts[3], 2)
        && parts[1].chars().any(|c| c != '0')
        && parts[2].chars().any(|c| c != '0')
}

// ---------------------------------------------------------------------------------------
// Balancing and health
// ---------------------------------------------------------------------------------------

/// Two healthy instances both serve a fair share of 200 GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_over_two_healthy_instances() {
    let _machine = together().await;
    let (order, a, b) = (
        Instance::start("order-1").await,
        Instance::start("store-a").await,
        Instance::start("store-b").await,
    );
    let gateway = gateway(&[&order], &[&a, &b], &[]).await;
    let client = Client::new(&gateway);
    client.wait_serving("/api/v1/products/1", &[&a, &b]).await;

    let alice = token("alice");
    let answers: Vec<Answer> = futures::stream::iter(0..200)
        .map(|_| Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)))
        .buffer_unordered(8)
        .collect()
        .await;

    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        *served.entry(answer.instance()).or_default() += 1;
    }
    for instance in [&a, &b] {
        let share = served.get(instance.name()).copied().unwrap_or(0);
        assert!(share >= 40, "a fair share for each instance: {served:?}");
    }
    gateway.stop().await.expect("stop");
}

/// An instance whose `/ready` turns 503 is out of rotation within 2 s, and back when it
/// answers 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_its_readiness_check_leaves_the_rotation_and_comes_back() {
    let _machine = together().await;
    let (order, a, b) = (
        Instance::start("order-1").await,
        Instance::start("store-a").await,
        Instance::start("store-b").await,
    );
    let gateway = gateway(
        &[&order],
        &[&a, &b],
        &[("GATEWAY_HEALTH_INTERVAL_MS", "200")],
    )
    .await;
    let client = Client::new(&gateway);
    let path = "/api/v1/products/1";
    client.wait_serving(path, &[&a, &b]).await;
    let alice = token("alice");

    // Out: after a failing check has been answered and acted on (the next check starts only
    // after the gateway handled the previous one), nothing goes to it.
    let failed_before = a.checks(false);
    let flipped = Instant::now();
    a.set_ready(false);
    let seen = eventually(Duration::from_secs(2), || {
        std::future::ready(a.checks(false) >= failed_before + 2)
    })
    .await;
    assert!(seen, "the gateway stopped asking /ready");
    for _ in 0..40 {
        let answer = Client::send(client.get(path).bearer_auth(&alice)).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        assert_eq!(answer.instance(), b.name(), "{answer:#?}");
    }
    let out_after = flipped.elapsed();
    assert!(
        out_after < Duration::from_secs(2),
        "out after {out_after:?}"
    );

    // Back: once it answers 200 again, it serves again.
    let back = Instant::now();
    a.set_ready(true);
    let mut served_by_a = false;
    while !served_by_a && back.elapsed() < Duration::from_secs(2) {
        for answer in burst(|_| client.get(path).bearer_auth(&alice)).await {
            assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
            served_by_a |= answer.instance() == a.name();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served_by_a,
        "not back in rotation 2 s after /ready answered 200"
    );
    gateway.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Retries on a refused connection
// ---------------------------------------------------------------------------------------

/// A GET to a killed instance is retried once on the other: the client sees no failure, and
/// the dead instance is out after that one try (the long health interval cannot notice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_to_a_killed_instance_is_retried_on_the_other() {
    let _machine = together().await;
    let (order, a, b) = (
        Instance::start("order-1").await,
        Instance::start("store-a").await,
        Instance::start("store-b").await,
    );
    let gateway = gateway(
        &[&order],
        &[&a, &b],
        &[("GATEWAY_HEALTH_INTERVAL_MS", "60000")],
    )
    .await;
    let client = Client::new(&gateway);
    client.wait_serving("/api/v1/products/1", &[&a, &b]).await;
    let alice = token("alice");

    let retried_before = retries("store");
    a.kill().await;
    let served_before = b.seen().len();
    let deadline = Instant::now() + WAIT;
    let (mut sent, mut failures) = (0, Vec::new());
    let get = |n: usize| {
        client
            .get(&format!("/api/v1/products/{n}"))
            .bearer_auth(&alice)
    };
    // Until the balancer has picked the dead instance once.
    while retries("store") == retried_before {
        assert!(
            Instant::now() < deadline,
            "the killed instance was never picked in {sent} GETs"
        );
        for answer in burst(get).await {
            sent += 1;
            if answer.status != StatusCode::OK || answer.instance() != b.name() {
                failures.push(answer);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "client-visible failures: {failures:#?}"
    );
    let retried = retries("store") - retried_before;
    assert!(
        retried <= BURST as u64,
        "{retried} retries: more than the GETs in flight when it was picked"
    );

    // It is out at once: the next GETs all go to the survivor, none retried.
    for answer in burst(get).await {
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        assert_eq!(answer.instance(), b.name(), "{answer:#?}");
    }
    assert_eq!(
        retries("store") - retried_before,
        retried,
        "retried after it was out"
    );
    assert_eq!(
        b.seen().len() - served_before,
        sent + BURST,
        "each GET served once"
    );
    gateway.stop().await.expect("stop");
}

/// A POST with an `Idempotency-Key` to a killed instance is retried on the other, each key
/// reaching it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_post_to_a_killed_instance_is_retried_on_the_other() {
    let _machine = together().await;
    let (a, b, store) = (
        Instance::start("order-a").await,
        Instance::start("order-b").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(
        &[&a, &b],
        &[&store],
        &[("GATEWAY_HEALTH_INTERVAL_MS", "60000")],
    )
    .await;
    let client = Client::new(&gateway);
    client.wait_serving("/api/v1/orders/o-1", &[&a, &b]).await;
    let alice = token("alice");

    let retried_before = retries("order");
    a.kill().await;
    let deadline = Instant::now() + WAIT;
    let mut keys: Vec<String> = Vec::new();
    while retries("order") == retried_before {
        assert!(
            Instant::now() < deadline,
            "the killed instance was never picked in {} POSTs",
            keys.len()
        );
        let round: Vec<String> = (0..BURST)
            .map(|n| format!("key-{}", keys.len() + n))
            .collect();
        let answers = burst(|n| {
            client
                .post("/api/v1/orders")
                .bearer_auth(&alice)
                .header("idempotency-key", &round[n])
                .json(&json!({"lines": [{"product_id": 1, "quantity": 1}]}))
        })
        .await;
        for answer in answers {
            assert_eq!(answer.status, StatusCode::CREATED, "{answer:#?}");
            assert_eq!(answer.instance(), b.name(), "{answer:#?}");
        }
        keys.extend(round);
    }
    let seen = b.seen();
    for key in &keys {
        let times = seen
            .iter()
            .filter(|s| {
                s.method == Method::POST
                    && s.path == "/api/v1/orders"
                    && s.header("idempotency-key") == Some(key)
            })
            .count();
        assert_eq!(times, 1, "{key} reached the survivor {times} times");
    }
    let retried = retries("order") - retried_before;
    assert!(
        retried <= BURST as u64,
        "{retried} retries: more than the POSTs in flight when it was picked"
    );
    gateway.stop().await.expect("stop");
}

/// A POST without an `Idempotency-Key` whose instance refuses the connection is not retried:
/// the client gets 503 with `Retry-After`, and the surviving instance never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_a_key_to_a_killed_instance_is_not_retried() {
    let _machine = together().await;
    let (a, b, store) = (
        Instance::start("order-a").await,
        Instance::start("order-b").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(
        &[&a, &b],
        &[&store],
        &[("GATEWAY_HEALTH_INTERVAL_MS", "60000")],
    )
    .await;
    let client = Client::new(&gateway);
    client.wait_serving("/api/v1/orders/o-1", &[&a, &b]).await;
    let alice = token("alice");

    a.kill().await;
    let deadline = Instant::now() + WAIT;
    let post = |marker: &str| {
        client
            .post("/api/v1/orders")
            .bearer_auth(&alice)
            .header("x-test-marker", marker)
            .json(&json!({"lines": [{"product_id": 1, "quantity": 1}]}))
    };
    // Until the balancer has picked the dead instance; the survivor serves the others.
    let mut refused = Vec::new();
    for round in 0.. {
        assert!(
            Instant::now() < deadline,
            "the killed instance was never picked in {round} bursts"
        );
        let markers: Vec<String> = (0..BURST).map(|n| format!("post-{round}-{n}")).collect();
        let answers = burst(|n| post(&markers[n])).await;
        for (marker, answer) in markers.into_iter().zip(answers) {
            if answer.status == StatusCode::CREATED {
                assert_eq!(answer.instance(), b.name(), "{answer:#?}");
            } else {
                refused.push((marker, answer));
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    for (marker, answer) in &refused {
        answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(answer.took < Duration::from_millis(500), "{answer:#?}");
        assert!(!b.saw(marker), "the POST without a key was sent again");
    }

    // And the dead instance is out: the next POSTs go to the survivor.
    let after: Vec<String> = (0..BURST).map(|n| format!("after-{n}")).collect();
    for answer in burst(|n| post(&after[n])).await {
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:#?}");
        assert_eq!(answer.instance(), b.name(), "{answer:#?}");
    }
    gateway.stop().await.expect("stop");
}

/// With every instance of a service down its requests get 503 at once with `Retry-After`;
/// the gateway's `/ready` answers 503 naming the service, `/health` 200, and the other
/// service still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_of_a_service_down_its_requests_get_503_at_once() {
    let _machine = together().await;
    let (a, b, store) = (
        Instance::start("order-a").await,
        Instance::start("order-b").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&a, &b], &[&store], &[]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;
    a.kill().await;
    b.kill().await;

    let ready = client.wait_ready(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready.body["status"], "unavailable", "{ready:#?}");
    assert_eq!(ready.body["checks"]["order"], "unavailable", "{ready:#?}");
    assert_eq!(ready.body["checks"]["store"], "ok", "{ready:#?}");
    let health = Client::send(client.get("/health")).await;
    assert_eq!(health.status, StatusCode::OK, "{health:#?}");

    let alice = token("alice");
    for request in [
        client.get("/api/v1/orders/o-1"),
        client
            .post("/api/v1/orders")
            .header("idempotency-key", "k-1")
            .json(&json!({"lines": []})),
        client.post("/api/v1/orders").json(&json!({"lines": []})),
    ] {
        let answer = Client::send(request.bearer_auth(&alice)).await;
        answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(answer.took < Duration::from_millis(250), "{answer:#?}");
    }
    let product = Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)).await;
    assert_eq!(product.status, StatusCode::OK, "{product:#?}");
    gateway.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// The edge: tokens, routes, rate and load
// ---------------------------------------------------------------------------------------

/// Requests without a valid token get 401 with the services' JSON error body and never reach
/// an instance; a valid token reaches it intact. Unknown paths get 404 and wrong methods 405,
/// token or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_bad_tokens_unknown_routes_and_wrong_methods_itself() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&order], &[&store], &[]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;

    let foreign = Auth::new(&Secret::new("another-service-s-key-of-at-least-32-bytes"))
        .expect("key")
        .issue("alice", Role::Admin, Duration::from_secs(3600))
        .expect("token");
    let expired = Auth::new(&Secret::new(SECRET))
        .expect("key")
        .issue("alice", Role::Customer, Duration::ZERO)
        .expect("token");
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(br#"{"sub":"alice","role":"admin","exp":4102444800}"#),
    );
    assert!(unsigned.starts_with("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."));
    let refused: [(&str, Option<String>); 6] = [
        ("no token", None),
        ("signed with another key", Some(format!("Bearer {foreign}"))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        ("not a JWT", Some("Bearer not-a-token".to_owned())),
        ("not bearer", Some("Basic YWxpY2U6cHc=".to_owned())),
    ];
    for (case, authorization) in refused {
        for request in [
            client.get("/api/v1/products/7"),
            client.post("/api/v1/orders").json(&json!({"lines": []})),
        ] {
            let request = match &authorization {
                Some(value) => request.header("authorization", value),
                None => request,
            };
            let answer = Client::send(request).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{case}: {answer:#?}"
            );
            answer.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    assert!(store.seen().is_empty(), "{:#?}", store.seen());
    assert!(order.seen().is_empty(), "{:#?}", order.seen());

    let alice = token("alice");
    let answer = Client::send(client.get("/api/v1/products/7").bearer_auth(&alice)).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
    let bearer = format!("Bearer {alice}");
    assert_eq!(answer.echoed("authorization"), Some(bearer.as_str()));

    let routes = [
        (
            Method::GET,
            "/api/v1/nowhere",
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
        (
            Method::GET,
            "/nowhere",
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
        (
            Method::DELETE,
            "/api/v1/products/7",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/api/v1/orders",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in routes {
        for authorization in [None, Some(&bearer)] {
            let mut request = client.request(method.clone(), path);
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            Client::send(request).await.assert_error(status, code);
        }
    }
    assert_eq!(
        store.seen().len(),
        1,
        "only the valid request reached an instance"
    );
    assert!(order.seen().is_empty(), "{:#?}", order.seen());
    gateway.stop().await.expect("stop");
}

/// One user's requests beyond the burst get 429 with `Retry-After` while another user still
/// gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_beyond_the_burst_gets_429_while_another_gets_through() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(
        &[&order],
        &[&store],
        &[
            ("GATEWAY_USER_RATE_PER_MINUTE", "1"),
            ("GATEWAY_USER_BURST", "5"),
        ],
    )
    .await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;
    let (alice, bob) = (token("alice"), token("bob"));

    for n in 0..5 {
        let answer = Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)).await;
        assert_eq!(answer.status, StatusCode::OK, "request {n}: {answer:#?}");
    }
    let limited = Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)).await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{limited:#?}");
    // The same body as the order service's own per-user limit.
    assert_eq!(
        limited.body["error"]["details"]["retry_after_seconds"], wait,
        "{limited:#?}"
    );

    let other = Client::send(client.get("/api/v1/products/1").bearer_auth(&bob)).await;
    assert_eq!(other.status, StatusCode::OK, "{other:#?}");
    assert_eq!(
        store.seen().len(),
        6,
        "the refused request reached an instance"
    );
    gateway.stop().await.expect("stop");
}

/// With `max_in_flight` requests held open, one more gets 429 at once with `Retry-After`
/// (the probes still answer), and capacity returns when they finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_requests_in_flight_bound_the_gateway_answers_429_at_once() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&order], &[&store], &[("GATEWAY_MAX_IN_FLIGHT", "2")]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;
    let alice = token("alice");

    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = client
                .get("/api/v1/products/1")
                .bearer_auth(&alice)
                .header("x-test-hold", "1");
            tokio::spawn(Client::send(request))
        })
        .collect();
    let arrived = eventually(WAIT, || std::future::ready(store.seen().len() == 2)).await;
    assert!(arrived, "the held requests did not reach the instance");

    let shed = Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)).await;
    shed.assert_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    assert!(shed.took < Duration::from_millis(250), "{shed:#?}");
    assert_eq!(
        store.seen().len(),
        2,
        "the shed request reached an instance"
    );
    let health = Client::send(client.get("/health")).await;
    assert_eq!(health.status, StatusCode::OK, "{health:#?}");

    store.release();
    for request in held {
        let answer = request.await.expect("held request");
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
    }
    let after = Client::send(client.get("/api/v1/products/1").bearer_auth(&alice)).await;
    assert_eq!(after.status, StatusCode::OK, "{after:#?}");
    gateway.stop().await.expect("stop");
}

/// What [`surge`] saw: the latencies of the answers served after its first second, how many
/// were served in all, and how many refused (429 or 503 with the error body and
/// `Retry-After`).
#[derive(Debug)]
struct Surge {
    served: usize,
    refused: usize,
    latencies: Vec<Duration>,
}

impl Surge {
    /// The `q` quantile of the served answers' latencies.
    fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let at = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(at).copied().unwrap_or_default()
    }
}

/// `clients` clients sending GETs back to back for `length` through `gateway`, each of which
/// works [`CAPACITY`] at a time for `work` on the store instance; a refused one waits 50 ms.
async fn surge(
    gateway: &RunningGateway,
    clients: usize,
    work: Duration,
    length: Duration,
) -> Surge {
    let client = Client::new(gateway);
    let started = Instant::now();
    let warm = started + Duration::from_secs(1);
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let client = client.clone();
            let user = token(&format!("surge-{n}"));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while started.elapsed() < length {
                    let request = client
                        .get("/api/v1/products/1")
                        .bearer_auth(&user)
                        .header("x-test-work-ms", work.as_millis().to_string());
                    let sent = Instant::now();
                    let answer = Client::send(request).await;
                    if answer.status == StatusCode::TOO_MANY_REQUESTS {
                        answer.assert_error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
                        // A quarter of the Retry-After (still 800 asks a second against a
                        // capacity of 200). At 50 ms the refusals (1,800 a second) took the
                        // CPU this one process shares with the instance on two cores, and
                        // the instance served 67 - 98 answers a second of 200.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                        // The instance taken out for a moment (its `/ready` answering late on
                        // a test process this busy): refused too, with the error body.
                        answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else {
                        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
                    }
                    seen.push((sent, answer.status, answer.took));
                }
                seen
            })
        })
        .collect();
    let mut surge = Surge {
        served: 0,
        refused: 0,
        latencies: Vec::new(),
    };
    for task in tasks {
        for (sent, status, took) in task.await.expect("a surge client") {
            if status == StatusCode::OK {
                surge.served += 1;
                if sent >= warm {
                    surge.latencies.push(took);
                }
            } else {
                surge.refused += 1;
            }
        }
    }
    surge
}

/// A surge of twice as many clients as the instances serve within the latency target: the
/// gateway's adaptive admission refuses the excess at once and the answers it admits begin
/// within a few targets, while the instances stay busy; with the adaptive admission off (only
/// the fixed bound of 4,096), the same surge is all admitted and every answer waits in the
/// instance's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_is_refused_at_the_edge_and_the_admitted_answers_stay_near_the_latency_target() {
    let _machine = alone().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    // The store serves CAPACITY (4) at a time, 20 ms each: 200 answers a second; 200 clients
    // back to back queue a second's worth in it. The target: 100 ms.
    let (clients, work, length) = (200, Duration::from_millis(20), Duration::from_secs(4));
    let capacity = 1000.0 / 20.0 * 4.0;
    let adaptive = gateway(
        &[&order],
        &[&store],
        &[("GATEWAY_LATENCY_TARGET_MS", "100")],
    )
    .await;
    Client::new(&adaptive).wait_ready(StatusCode::OK).await;
    let with = surge(&adaptive, clients, work, length).await;
    adaptive.stop().await.expect("stop");
    let fixed = gateway(&[&order], &[&store], &[("GATEWAY_LATENCY_TARGET_MS", "0")]).await;
    Client::new(&fixed).wait_ready(StatusCode::OK).await;
    let without = surge(&fixed, clients, work, length).await;
    fixed.stop().await.expect("stop");

    let summary = |s: &Surge| {
        format!(
            "served {} ({:.0}/s), refused {}, p50 {:?}, p90 {:?}",
            s.served,
            s.served as f64 / length.as_secs_f64(),
            s.refused,
            s.quantile(0.5),
            s.quantile(0.9)
        )
    };
    println!(
        "adaptive: {}
fixed bound only: {}",
        summary(&with),
        summary(&without)
    );
    assert!(
        without.quantile(0.5) > Duration::from_millis(500),
        "the surge did not queue in the instance without the adaptive admission: {}",
        summary(&without)
    );
    assert!(with.refused > 0, "nothing refused: {}", summary(&with));
    assert!(
        with.quantile(0.9) < Duration::from_millis(400),
        "admitted answers waited: {}",
        summary(&with)
    );
    assert!(
        with.served as f64 / length.as_secs_f64() > capacity / 2.0,
        "the instance was starved: {}",
        summary(&with)
    );
}

// ---------------------------------------------------------------------------------------
// Timeouts and streams
// ---------------------------------------------------------------------------------------

/// A GET whose answer does not begin within the read timeout gets 503 `timeout` at about
/// that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_answer_does_not_begin_in_time_gets_503_timeout() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&order], &[&store], &[("GATEWAY_READ_TIMEOUT_MS", "400")]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;

    let answer = Client::send(
        client
            .get("/api/v1/products/1")
            .bearer_auth(token("alice"))
            .header("x-test-delay-ms", "3000"),
    )
    .await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(
        answer.took >= Duration::from_millis(400) && answer.took < Duration::from_millis(900),
        "answered after {:?}",
        answer.took
    );
    gateway.stop().await.expect("stop");
}

/// An event stream whose headers come at once keeps flowing long past the read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_flows_past_the_read_timeout() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let read_timeout = Duration::from_millis(300);
    let gateway = gateway(
        &[&order],
        &[&store],
        &[
            ("GATEWAY_READ_TIMEOUT_MS", "300"),
            ("GATEWAY_WRITE_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;

    let opened = Instant::now();
    let response = client
        .get("/api/v1/orders/o-1/events")
        .bearer_auth(token("alice"))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CONTENT_TYPE.as_str()],
        "text/event-stream"
    );
    let mut reader = EventReader::new(response, opened);
    let mut events = Vec::new();
    while let Some(event) = reader.next().await {
        events.push(event);
    }

    let arrivals: Vec<Duration> = events.iter().map(|(at, _)| *at).collect();
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(
        events[5]
            .1
            .contains(&format!("\"n\":{}", STREAM_EVENTS - 1)),
        "{events:?}"
    );
    // Passed through as they come, not held until the end: the first long before the last,
    // the last long after the read timeout.
    assert!(arrivals[0] < STREAM_GAP, "{arrivals:?}");
    assert!(arrivals[5] - arrivals[0] > STREAM_GAP * 4, "{arrivals:?}");
    assert!(arrivals[5] > read_timeout * 3, "{arrivals:?}");
    gateway.stop().await.expect("stop");
}

/// Stopping the gateway ends the event streams it passes through, so `stop()` returns
/// promptly (as `Gateway::run` says: "`/ready` answers 503 and event streams end").
///
/// Found by this file (failed before the fix): nothing ended a proxied stream on shutdown, so
/// `stop()` (and SIGTERM) waited until every upstream ended its streams on its own, up to the
/// services' `SSE_MAX_LIFETIME_SECS` (5 minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_gateway_ends_the_event_streams_it_passes_through() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&order], &[&store], &[]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;

    // A stream of 1,000 events, 200 s long unless the gateway ends it.
    let response = client
        .get("/api/v1/orders/o-1/events")
        .bearer_auth(token("alice"))
        .header("x-test-events", "1000")
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    let mut reader = EventReader::new(response, Instant::now());
    reader.next().await.expect("the first event");

    let stopped = Instant::now();
    let stopping = tokio::spawn(gateway.stop());
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        let mut more = 0;
        while reader.next().await.is_some() {
            more += 1;
        }
        more
    })
    .await;
    let returned = tokio::time::timeout(Duration::from_secs(1), stopping).await;
    assert!(
        ended.is_ok() && returned.is_ok(),
        "{:?} after stop(): the stream {}, stop() {}",
        stopped.elapsed(),
        if ended.is_ok() {
            "ended"
        } else {
            "still flows"
        },
        if returned.is_ok() {
            "returned"
        } else {
            "still waits"
        },
    );
    returned
        .expect("stop() returned")
        .expect("gateway task")
        .expect("stop");
}

// ---------------------------------------------------------------------------------------
// Request ids and trace context
// ---------------------------------------------------------------------------------------

/// What a client sends for the trace test, and what the instance must receive.
#[derive(Debug)]
struct TraceCase {
    traceparent: Option<&'static str>,
    request_id: Option<&'static str>,
    forwarded_for: Option<&'static str>,
    /// The instance receives the client's `traceparent` (else one the gateway made).
    kept: bool,
    expected_forwarded_for: &'static str,
}

/// The instance receives a W3C `traceparent` (the client's own when valid, else one made by
/// the gateway), the request id (the client's or a new one, also on the answer) and the
/// client's address in `X-Forwarded-For`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_receives_trace_context_request_id_and_forwarded_for() {
    let _machine = together().await;
    let (order, store) = (
        Instance::start("order-1").await,
        Instance::start("store-1").await,
    );
    let gateway = gateway(&[&order], &[&store], &[]).await;
    let client = Client::new(&gateway);
    client.wait_ready(StatusCode::OK).await;
    let alice = token("alice");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let cases = [
        TraceCase {
            traceparent: None,
            request_id: None,
            forwarded_for: None,
            kept: false,
            expected_forwarded_for: "127.0.0.1",
        },
        TraceCase {
            traceparent: Some(valid),
            request_id: Some("req-42"),
            forwarded_for: None,
            kept: true,
            expected_forwarded_for: "127.0.0.1",
        },
        TraceCase {
            traceparent: Some("00-not-a-trace-01"),
            request_id: Some("req-43"),
            forwarded_for: Some("203.0.113.9"),
            kept: false,
            expected_forwarded_for: "203.0.113.9, 127.0.0.1",
        },
        TraceCase {
            traceparent: Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            request_id: None,
            forwarded_for: None,
            kept: false,
            expected_forwarded_for: "127.0.0.1",
        },
        TraceCase {
            traceparent: Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
            request_id: None,
            forwarded_for: None,
            kept: false,
            expected_forwarded_for: "127.0.0.1",
        },
    ];
    let mut made = BTreeSet::new();
    for case in cases {
        let mut request = client.get("/api/v1/products/1").bearer_auth(&alice);
        for (name, value) in [
            ("traceparent", case.traceparent),
            ("x-request-id", case.request_id),
            ("x-forwarded-for", case.forwarded_for),
        ] {
            if let Some(value) = value {
                request = request.header(name, value);
            }
        }
        let answer = Client::send(request).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");

        let received = answer.echoed("traceparent").unwrap_or_default();
        assert!(is_w3c_traceparent(received), "{case:?}: {answer:#?}");
        assert_eq!(received == valid, case.kept, "{case:?}: {answer:#?}");
        if !case.kept {
            assert!(made.insert(received.to_owned()), "a trace id made twice");
        }

        let id = answer.echoed("x-request-id").unwrap_or_default();
        assert!(!id.is_empty(), "{answer:#?}");
        if let Some(sent) = case.request_id {
            assert_eq!(id, sent, "{answer:#?}");
        }
        assert_eq!(answer.header("x-request-id"), Some(id), "{answer:#?}");
        assert_eq!(
            answer.echoed("x-forwarded-for"),
            Some(case.expected_forwarded_for),
            "{case:?}: {answer:#?}"
        );
    }
    gateway.stop().await.expect("stop");
}
