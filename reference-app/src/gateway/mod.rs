//! The gateway (`serve --service gateway`): the only public entry of the distributed mode.
//!
//! It answers the same routes as the all-in-one process and sends each to an instance of the
//! service that owns it (orders and the admin routes to the order service, products to the
//! store), balanced by tower's p2c over peak-EWMA load (decision 0015), with:
//! - active health checks (the `pool` module): an instance whose `/ready` fails is out of the balancer
//!   until it answers again; a request whose connection fails takes it out at once;
//! - one retry on another instance for a request that may be repeated (a GET, or a POST
//!   with an `Idempotency-Key`) whose connection failed; never for any other;
//! - per-method timeouts until the answer begins (event streams then flow unbounded);
//! - the token checked at the edge (and again by the service), a per-user request rate, a
//!   bound on requests in flight, and per service an adaptive bound that follows how fast its
//!   instances answer (the `admission` module): what it cannot take is answered at once, 429
//!   or 503 with `Retry-After` and the JSON error body, never queued without bound;
//! - the request id and a W3C `traceparent` passed downstream (made here when the client sent
//!   none), so the log lines of one request share them across processes.

mod admission;
mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::header;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{bearer_token, Auth, TokenError};
use crate::config::GatewayConfig;
use crate::http::{layered, ApiError, Limits};
use crate::services::ops::{self, ProbeState, ReadinessCheck};
use crate::services::order::PlacementRate;
use admission::{Admission, Outcome};
use pool::{Pool, UpstreamError};

/// Which service answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The order service (orders, the admin routes, the API document).
    Order,
    /// The store service (products, stock, the ledger).
    Store,
}

/// Every API route the services answer, with its methods and its service: the gateway
/// answers exactly these (a test compares them with the API document), every other path
/// 404 and every other method 405, as the services do.
pub const ROUTES: &[(&str, &[Method], Upstream)] = &[
    (
        "/api/v1/orders",
        &[Method::GET, Method::POST],
        Upstream::Order,
    ),
    ("/api/v1/orders/{id}", &[Method::GET], Upstream::Order),
    (
        "/api/v1/orders/{id}/events",
        &[Method::GET],
        Upstream::Order,
    ),
    (
        "/api/v1/orders/{id}/cancel",
        &[Method::POST],
        Upstream::Order,
    ),
    ("/api/v1/orders/{id}/ship", &[Method::POST], Upstream::Order),
    (
        "/api/v1/orders/{id}/deliver",
        &[Method::POST],
        Upstream::Order,
    ),
    ("/api/v1/products", &[Method::POST], Upstream::Store),
    (
        "/api/v1/products/{id}",
        &[Method::GET, Method::PATCH],
        Upstream::Store,
    ),
    (
        "/api/v1/products/{id}/stock",
        &[Method::GET],
        Upstream::Store,
    ),
    (
        "/api/v1/products/{id}/inbound",
        &[Method::POST],
        Upstream::Store,
    ),
    (
        "/api/v1/products/{id}/movements",
        &[Method::GET],
        Upstream::Store,
    ),
    (
        "/api/v1/admin/dead-letters",
        &[Method::GET],
        Upstream::Order,
    ),
    (
        "/api/v1/admin/dead-letters/{id}/replay",
        &[Method::POST],
        Upstream::Order,
    ),
    ("/api/v1/admin/audit", &[Method::GET], Upstream::Order),
    (
        "/api/v1/admin/consumer-dead-letters",
        &[Method::GET],
        Upstream::Order,
    ),
    (
        "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}/replay",
        &[Method::POST],
        Upstream::Order,
    ),
    (
        "/api/v1/admin/consumer-dead-letters/{consumer}/{event_id}",
        &[Method::DELETE],
        Upstream::Order,
    ),
];

/// The routes without a token (the API document and its viewer), all to the order service.
const OPEN_ROUTES: [&str; 4] = ["/api-docs/openapi.json", "/docs", "/docs/", "/docs/{*rest}"];

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers of one hop only (RFC 9110 §7.6.1), never passed on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What every request of the gateway shares.
struct Shared {
    order: Pool,
    store: Pool,
    /// Each service's adaptive admission (none when `GATEWAY_LATENCY_TARGET_MS` is 0).
    admission: Option<[Arc<Admission>; 2]>,
    auth: Auth,
    rate: PlacementRate,
    read_timeout: Duration,
    write_timeout: Duration,
    body_limit: usize,
    /// Cancelled when the gateway starts shutting down: the event streams it passes through
    /// end then (otherwise each would hold the shutdown open until its instance ends it).
    shutdown: CancellationToken,
}

impl Shared {
    fn pool(&self, upstream: Upstream) -> &Pool {
        match upstream {
            Upstream::Order => &self.order,
            Upstream::Store => &self.store,
        }
    }

    fn admission(&self, upstream: Upstream) -> Option<&Arc<Admission>> {
        let [order, store] = self.admission.as_ref()?;
        Some(match upstream {
            Upstream::Order => order,
            Upstream::Store => store,
        })
    }
}

/// The gateway, bound and ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Gateway {
    /// Binds the listener and starts the health checks of every configured instance.
    ///
    /// # Errors
    /// When the address cannot be bound, or the token key cannot be used.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        // The recorder first: the health checks set gauges from their first round.
        crate::telemetry::prometheus();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let client = pool::http_client();
        let start = |name, urls: &[String]| {
            Pool::start(
                name,
                urls,
                &client,
                config.health_interval,
                &shutdown,
                &tasks,
            )
        };
        let shared = Arc::new(Shared {
            order: start("order", &config.order),
            store: start("store", &config.store),
            admission: config.latency_target.map(|target| {
                [
                    Admission::new("order", target, config.max_in_flight),
                    Admission::new("store", target, config.max_in_flight),
                ]
            }),
            auth: Auth::new(&config.auth.jwt_secret).context("COMMERCE_JWT_SECRET")?,
            rate: PlacementRate::per_minute(
                config.user_rate_per_minute,
                config.user_burst,
                governor::clock::DefaultClock::default(),
            ),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            body_limit: config.body_limit,
            shutdown: shutdown.clone(),
        });
        shared.rate.spawn_forgetting(shutdown.clone(), &tasks);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("bind the gateway on {}", config.listen))?;
        let limits = Limits {
            // The outer bound; each route's own is shorter.
            request_timeout: config.read_timeout.max(config.write_timeout) + Duration::from_secs(1),
            body_limit: config.body_limit,
            max_in_flight: config.max_in_flight,
        };
        let router = router(&shared, shutdown.clone(), limits);
        Ok(Self {
            listener,
            router,
            shutdown,
            tasks,
        })
    }

    /// `http://<bound address>`.
    ///
    /// # Panics
    /// Never in practice: a bound listener has an address.
    #[must_use]
    pub fn base_url(&self) -> String {
        let address = self
            .listener
            .local_addr()
            .expect("a bound listener has an address");
        format!("http://{address}")
    }

    /// Serves until Ctrl-C or SIGTERM, then lets the requests in flight finish.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run(crate::shutdown_signal()).await
    }

    /// Serves in a task of its own until [`RunningGateway::stop`] (for tests).
    #[must_use]
    pub fn spawn(self) -> RunningGateway {
        let base_url = self.base_url();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(self.run(async move { signal.cancelled().await }));
        RunningGateway {
            base_url,
            stop,
            task,
        }
    }

    async fn run(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            shutdown,
            tasks,
        } = self;
        let draining = shutdown.clone();
        let served = axum::serve(
            listener.tap_io(crate::http::no_delay),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            signal.await;
            // `/ready` answers 503 and event streams end; requests in flight finish.
            draining.cancel();
        })
        .await;
        shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        served.context("gateway HTTP server")
    }
}

/// A gateway serving in the background.
#[derive(Debug)]
pub struct RunningGateway {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    /// Stops it and waits for it.
    ///
    /// # Errors
    /// When the server failed, or its task panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("gateway task")?
    }
}

fn router(shared: &Arc<Shared>, draining: CancellationToken, limits: Limits) -> Router {
    let mut api = Router::new();
    for &(path, methods, upstream) in ROUTES {
        let filter = methods
            .iter()
            .map(|m| MethodFilter::try_from(m.clone()).expect("the table's methods are standard"))
            .reduce(MethodFilter::or)
            .expect("every route has a method");
        api = api.route(
            path,
            on(filter, move |State(shared), request| {
                forward(shared, upstream, request)
            }),
        );
    }
    // Identity and the per-user rate on the API routes only (unknown routes get 404 as from
    // the services, whatever the token).
    let mut api = api.route_layer(middleware::from_fn_with_state(shared.clone(), admit));
    for path in OPEN_ROUTES {
        api = api.route(
            path,
            get(|State(shared), request| forward(shared, Upstream::Order, request)),
        );
    }
    let api = api
        .route("/metrics", get(metrics))
        .with_state(shared.clone());
    let pools = [shared.order.clone(), shared.store.clone()];
    let checks = pools
        .into_iter()
        .map(|pool| {
            ReadinessCheck::new(pool.name, move || {
                let up = pool.up();
                let name = pool.name;
                async move {
                    if up > 0 {
                        Ok(())
                    } else {
                        Err(format!("no {name} instance is up"))
                    }
                }
            })
        })
        .collect();
    let probes = ops::probes(ProbeState { checks, draining });
    layered(api, probes, limits)
}

async fn metrics() -> String {
    crate::telemetry::prometheus().render()
}

/// The edge's admission on the API routes: the per-user rate (the token's subject, or the
/// client's address without a valid token), then the token itself, as the services check it.
async fn admit(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let claims = bearer_token(request.headers())
        .map_or(Err(TokenError::Missing), |token| shared.auth.verify(token));
    let key = match &claims {
        Ok(claims) => format!("user:{}", claims.sub),
        Err(_) => format!("address:{}", client_address(&request)),
    };
    if let Err(wait) = shared.rate.check(&key) {
        metrics::counter!("gateway_refused_total", "reason" => "rate_limited").increment(1);
        return ApiError::rate_limited("requests", wait).into_response();
    }
    match claims {
        Ok(_) => next.run(request).await,
        Err(refused) => ApiError::from(refused).into_response(),
    }
}

fn client_address(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.ip().to_string())
}

/// Whether a request may be sent twice: it changes nothing, or its key makes a repeat
/// return the first answer.
fn repeatable(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::GET
        || *method == Method::HEAD
        || (*method == Method::POST && headers.contains_key(IDEMPOTENCY_KEY))
}

/// Sends `request` to an instance of `upstream` and streams its answer back.
async fn forward(shared: Arc<Shared>, upstream: Upstream, request: Request) -> Response {
    let mut ticket = None;
    if let Some(admission) = shared.admission(upstream) {
        let Some(admitted) = admission.admit() else {
            metrics::counter!("gateway_refused_total", "reason" => "admission").increment(1);
            return ApiError::overloaded().into_response();
        };
        ticket = Some(admitted);
    }
    // A caller that gives up drops the ticket: its place is freed, the bound not moved.
    let (response, outcome) = relay(&shared, upstream, request).await;
    if let Some(ticket) = ticket {
        ticket.finish(outcome);
    }
    response
}

/// [`forward`]'s work once admitted: the answer, and what it says of the service's load.
async fn relay(shared: &Shared, upstream: Upstream, request: Request) -> (Response, Outcome) {
    let pool = shared.pool(upstream).clone();
    let client = client_address(&request);
    let (parts, body) = request.into_parts();
    let repeat = repeatable(&parts.method, &parts.headers);
    let timeout = if parts.method == Method::GET || parts.method == Method::HEAD {
        shared.read_timeout
    } else {
        shared.write_timeout
    };
    let headers = downstream_headers(&parts.headers, &client);
    // A request that may be sent again is held; any other streams through once.
    let (mut held, mut once) = (None, None);
    if repeat {
        match axum::body::to_bytes(body, shared.body_limit).await {
            Ok(bytes) => held = Some(bytes),
            Err(_) => {
                let refused = ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than the server accepts",
                );
                return (refused.into_response(), Outcome::Unknown);
            }
        }
    } else {
        once = Some(body);
    }
    // A request that may be repeated is sent again once after a failure that may have
    // reached an instance; a refused connection reached none, so it is tried on each other
    // instance (at most once each). Any other request is sent once, whatever happens.
    let (mut resent, mut refused) = (false, 0);
    loop {
        if pool.up() == 0 {
            metrics::counter!("gateway_refused_total", "reason" => "no_instance").increment(1);
            let refused = ApiError::unavailable_briefly(format!("no {} instance is up", pool.name));
            return (refused.into_response(), Outcome::Unknown);
        }
        let body = match (&held, once.take()) {
            (Some(bytes), _) => Body::from(bytes.clone()),
            (None, Some(body)) => body,
            (None, None) => Body::empty(),
        };
        let mut outgoing = Request::new(body);
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = parts.uri.clone();
        *outgoing.headers_mut() = headers.clone();
        let failure = match tokio::time::timeout(timeout, pool.send(outgoing)).await {
            Ok(Ok(answer)) => {
                let outcome = match answer.status() {
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                        Outcome::Overloaded
                    }
                    _ => Outcome::Answered,
                };
                return (upstream_answer(answer, &shared.shutdown), outcome);
            }
            Err(_) => {
                metrics::counter!("gateway_refused_total", "reason" => "timeout").increment(1);
                return (ApiError::timeout().into_response(), Outcome::Overloaded);
            }
            Ok(Err(failure)) => failure,
        };
        let Some(failed) = failure.downcast_ref::<UpstreamError>() else {
            return (
                ApiError::unavailable(failure).into_response(),
                Outcome::Unknown,
            );
        };
        if failed.connect {
            // Gone (or not there yet): out of the balancer until its check passes again.
            pool.take_out(&failed.instance, &failed.to_string());
            refused += 1;
        }
        let again = repeat
            && if failed.connect {
                refused < pool.size()
            } else {
                !std::mem::replace(&mut resent, true)
            };
        if again {
            metrics::counter!("gateway_retries_total", "service" => pool.name).increment(1);
            tracing::info!(error = %failed, "sending it again, to another instance");
            continue;
        }
        if failed.connect {
            // Nothing reached an instance: the client may send it again.
            let refused = ApiError::unavailable_briefly(failed);
            return (refused.into_response(), Outcome::Unknown);
        }
        let failed = ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            "the instance failed before answering: the request may or may not have taken \
             effect; send it again with an Idempotency-Key to find out",
        )
        .cause(failed);
        return (failed.into_response(), Outcome::Unknown);
    }
}

/// The headers passed downstream: the client's, without one-hop ones and `Host`, with the
/// client's address appended to `X-Forwarded-For` (the `traceparent` is there already: the
/// shared layers make one when the client sent none, or one that is not W3C's).
fn downstream_headers(incoming: &HeaderMap, client: &str) -> HeaderMap {
    let mut headers = incoming.clone();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    let forwarded = match incoming.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(FORWARDED_FOR, value);
    }
    headers
}

/// The instance's answer, its body streamed through, without one-hop headers; an event
/// stream ends when `shutdown` is cancelled.
fn upstream_answer(
    answer: axum::http::Response<hyper::body::Incoming>,
    shutdown: &CancellationToken,
) -> Response {
    let streams = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut response = if streams {
        let until = shutdown.clone().cancelled_owned();
        answer.map(|body| {
            Body::from_stream(futures::StreamExt::take_until(
                Body::new(body).into_data_stream(),
                until,
            ))
        })
    } else {
        answer.map(Body::new)
    };
    for name in &HOP_BY_HOP {
        response.headers_mut().remove(name);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_answers_exactly_the_routes_of_the_api_document() {
        use utoipa::OpenApi;
        let document = crate::openapi::ApiDoc::openapi();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &document.paths.paths {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            let methods = [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PATCH", item.patch.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PUT", item.put.is_some()),
            ];
            for (method, present) in methods {
                if present {
                    documented.push((path.clone(), method.to_owned()));
                }
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, methods, _)| {
                methods
                    .iter()
                    .map(move |m| ((*path).to_owned(), m.as_str().to_owned()))
            })
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(routed, documented);
    }

    #[test]
    fn only_requests_that_may_be_repeated_are_retried() {
        let mut keyed = HeaderMap::new();
        keyed.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        let plain = HeaderMap::new();
        assert!(repeatable(&Method::GET, &plain));
        assert!(repeatable(&Method::POST, &keyed));
        assert!(!repeatable(&Method::POST, &plain));
        assert!(!repeatable(&Method::PATCH, &keyed));
        assert!(!repeatable(&Method::DELETE, &plain));
    }

    #[test]
    fn the_trace_context_goes_downstream_and_one_hop_headers_do_not() {
        use commerce_outbox::trace;
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut incoming = HeaderMap::new();
        incoming.insert(trace::TRACEPARENT, HeaderValue::from_static(good));
        incoming.insert(header::CONNECTION, HeaderValue::from_static("close"));
        incoming.insert(header::HOST, HeaderValue::from_static("shop.example"));
        let kept = downstream_headers(&incoming, "10.0.0.7");
        assert_eq!(kept.get(trace::TRACEPARENT).unwrap(), good);
        assert!(kept.get(header::CONNECTION).is_none());
        assert!(kept.get(header::HOST).is_none());
        assert_eq!(kept.get(&FORWARDED_FOR).unwrap(), "10.0.0.7");
    }
}
