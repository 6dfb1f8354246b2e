//! One service's instances behind the gateway: tower's power-of-two-choices balancer over
//! peak-EWMA load (as linkerd balances), fed by this module's health checks.
//!
//! The balancer learns its endpoints from a channel of [`Change`]s: an instance goes in when
//! its `/ready` answers 200 and out when it does not (or when a request to it fails on the
//! connection, without waiting for the next check). The balancer sits behind a [`Buffer`], so
//! every request task shares it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri};
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxService;
use tower::{BoxError, Service, ServiceExt};

/// How long an instance's `/ready` may take before the check counts as slow.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Slow checks in a row that take an instance out (a hung one): a busy instance answers
/// late under a surge, and steering load away from a slow instance is the balancer's work
/// (peak-EWMA), not the health check's.
const SLOW_CHECKS_OUT: u32 = 4;

/// The RTT an instance is assumed to have before its first answer: low, so that one coming
/// back (or new) gets requests at once rather than after the others' estimates decay.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// How fast the peak-EWMA estimate forgets a slow answer.
const EWMA_DECAY: Duration = Duration::from_secs(5);

/// Requests waiting for the balancer (each task's request passes through the buffer).
const BUFFER: usize = 4096;

/// The upstream HTTP client: pooled keep-alive connections, plain HTTP/1.1.
pub(crate) type HttpClient = Client<HttpConnector, Body>;

/// A new upstream client (one per gateway; cheap to clone).
pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector())
}

/// The health checks' client: a new connection for every check, so a refused connection
/// means what it says (a kept-alive one can be closed by the instance in the same instant a
/// check reuses it, which says nothing about the instance).
fn check_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector())
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CHECK_TIMEOUT));
    connector
}

/// A request to an instance failed before its answer began.
#[derive(Debug, thiserror::Error)]
#[error("{instance}: {source}")]
pub(crate) struct UpstreamError {
    /// The instance's base URL.
    pub instance: Arc<str>,
    /// No connection could be made: the request never reached the instance.
    pub connect: bool,
    #[source]
    source: BoxError,
}

/// One instance, as the balancer calls it.
#[derive(Clone)]
struct Instance {
    base: Arc<str>,
    client: HttpClient,
}

impl Service<Request<Body>> for Instance {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The client's pool opens connections as needed.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let (base, client) = (self.base.clone(), self.client.clone());
        Box::pin(async move {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri: Uri = format!("{base}{path}").parse().map_err(|e| UpstreamError {
                instance: base.clone(),
                connect: true,
                source: Box::new(e),
            })?;
            *request.uri_mut() = uri;
            client.request(request).await.map_err(|e| UpstreamError {
                instance: base,
                connect: e.is_connect(),
                source: Box::new(e),
            })
        })
    }
}

type Balancer = Buffer<Request<Body>, BoxFuture<'static, Result<Response<Incoming>, BoxError>>>;

/// The instances of one service, balanced.
#[derive(Clone)]
pub(crate) struct Pool {
    /// The service's name (`order`, `store`).
    pub name: &'static str,
    balancer: Balancer,
    members: Arc<Members>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("up", &self.up())
            .finish_non_exhaustive()
    }
}

/// What a check or a request found out about an instance.
#[derive(Debug)]
enum Verdict {
    /// `/ready` answered 200.
    Ready,
    /// No connection, or it broke: the instance is gone (out at once).
    Unreachable(String),
    /// `/ready` answered something else (draining, a dependency down): out at once, unless
    /// it is the last instance in (a balancer with none refuses everything).
    Unready(String),
    /// `/ready` did not answer in time: out after [`SLOW_CHECKS_OUT`] in a row, unless last.
    Slow(String),
}

/// One instance's standing.
#[derive(Debug, Default)]
struct Standing {
    up: bool,
    slow: u32,
}

/// Which instances are in the balancer.
struct Members {
    service: &'static str,
    up: Mutex<HashMap<Arc<str>, Standing>>,
    count: AtomicUsize,
    changes: mpsc::UnboundedSender<Change<Arc<str>, Instance>>,
    client: HttpClient,
    checks: HttpClient,
}

impl Members {
    /// Applies what was found out about `instance`: in, out, or left as it is.
    fn judge(&self, instance: &Arc<str>, verdict: Verdict) {
        let mut members = self.up.lock().unwrap_or_else(PoisonError::into_inner);
        let count = self.count.load(Ordering::SeqCst);
        let Some(standing) = members.get_mut(instance) else {
            return;
        };
        let (up, why) = match verdict {
            Verdict::Ready => {
                standing.slow = 0;
                (true, String::new())
            }
            Verdict::Unreachable(why) => (false, why),
            Verdict::Unready(why) if !(standing.up && count == 1) => (false, why),
            Verdict::Slow(why) => {
                standing.slow += 1;
                if standing.slow < SLOW_CHECKS_OUT || (standing.up && count == 1) {
                    return;
                }
                (false, why)
            }
            Verdict::Unready(why) => {
                tracing::debug!(service = self.service, %instance, why, "the last instance up is unready: kept in");
                return;
            }
        };
        if standing.up == up {
            return;
        }
        standing.up = up;
        let why = why.as_str();
        // The change is on the channel before the count says so: a request that sees the
        // count finds the balancer told (it reads the channel before it picks).
        let change = if up {
            Change::Insert(
                instance.clone(),
                Instance {
                    base: instance.clone(),
                    client: self.client.clone(),
                },
            )
        } else {
            Change::Remove(instance.clone())
        };
        // Closed only when the balancer is gone (shutdown): nothing to tell then.
        let _ = self.changes.unbounded_send(change);
        if up {
            self.count.fetch_add(1, Ordering::SeqCst);
            tracing::info!(service = self.service, %instance, "instance up: in the balancer");
        } else {
            self.count.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(service = self.service, %instance, why, "instance down: out of the balancer");
        }
        let gauge = self.count.load(Ordering::SeqCst);
        #[allow(clippy::cast_precision_loss)] // a handful of instances
        metrics::gauge!("gateway_instances_up", "service" => self.service).set(gauge as f64);
    }
}

impl Pool {
    /// The instances at `urls` of `service`, each out of the balancer until its first good
    /// check; their checks run every `interval` until `shutdown`.
    pub(crate) fn start(
        service: &'static str,
        urls: &[String],
        client: &HttpClient,
        interval: Duration,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (changes, discovered) = mpsc::unbounded();
        let discover = PeakEwmaDiscover::new::<Request<Body>>(
            discovered.map(Ok::<_, Infallible>),
            DEFAULT_RTT,
            EWMA_DECAY,
            CompleteOnResponse::default(),
        );
        let balancer = Buffer::new(BoxService::new(Balance::new(discover)), BUFFER);
        let members = Arc::new(Members {
            service,
            up: Mutex::new(
                urls.iter()
                    .map(|u| (Arc::from(u.as_str()), Standing::default()))
                    .collect(),
            ),
            count: AtomicUsize::new(0),
            changes,
            client: client.clone(),
            checks: check_client(),
        });
        for url in urls {
            let instance: Arc<str> = Arc::from(url.as_str());
            let members = members.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    let verdict = check(&members.checks, &instance).await;
                    members.judge(&instance, verdict);
                }
            });
        }
        Self {
            name: service,
            balancer,
            members,
        }
    }

    /// Instances configured, up or not.
    pub(crate) fn size(&self) -> usize {
        self.members
            .up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Instances in the balancer now.
    pub(crate) fn up(&self) -> usize {
        self.members.count.load(Ordering::SeqCst)
    }

    /// Takes `instance` out at once (a connection to it was refused); its next good check
    /// brings it back.
    pub(crate) fn take_out(&self, instance: &Arc<str>, why: &str) {
        self.members
            .judge(instance, Verdict::Unreachable(why.to_owned()));
    }

    /// Sends `request` to the instance the balancer picks.
    pub(crate) fn send(
        &self,
        request: Request<Body>,
    ) -> impl std::future::Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static
    {
        self.balancer.clone().oneshot(request)
    }
}

/// One readiness check: `GET <instance>/ready`.
async fn check(client: &HttpClient, instance: &str) -> Verdict {
    let request = match Request::get(format!("{instance}/ready")).body(Body::empty()) {
        Ok(request) => request,
        Err(e) => return Verdict::Unreachable(e.to_string()),
    };
    match tokio::time::timeout(CHECK_TIMEOUT, client.request(request)).await {
        Err(_) => Verdict::Slow(format!("/ready gave no answer within {CHECK_TIMEOUT:?}")),
        Ok(Err(e)) => Verdict::Unreachable(format!("/ready: {e}")),
        Ok(Ok(response)) if response.status() == StatusCode::OK => Verdict::Ready,
        Ok(Ok(response)) => Verdict::Unready(format!("/ready answered {}", response.status())),
    }
}
