//! A scripted payment gateway over HTTP, and the truth about money it keeps.
//!
//! It speaks the gateway API the app's client calls (`POST /v1/charges` with JSON
//! `{order_id, amount, currency}` and an `Idempotency-Key`; `POST /v1/charges/{id}/refunds`),
//! served by axum on a free loopback port inside the test process. What it answers is scripted
//! **per amount**: each scenario sells a product at its own price, so the amount picks the
//! script. A charge request with a key it has not seen takes the next [`Step`] of its amount's
//! script; once the script is empty it behaves as a normal idempotent gateway (a new key takes
//! the money and answers 201; a repeated key gets the first answer again; a refund is made once
//! per charge and replayed for its key). A key it has seen is answered from its record whatever
//! the script says: 409 `idempotency_key_in_use` while the first request is still running (as
//! Stripe answers), its answer afterwards. A charge of 0 or less is refused with 400 before
//! any script, as real gateways do. An amount can also be switched off
//! ([`ScriptedGateway::go_down`]): its requests are then never answered.
//!
//! Whatever the app believes, [`ScriptedGateway::money_kept`] says whether the gateway holds an
//! order's money: a charge taken and not refunded.
//!
//! ```ignore
//! let gateway = ScriptedGateway::start().await;
//! gateway.script(1_234, [Step::Take { delay: Duration::from_secs(2), then: Then::Approve }]);
//! // ... configure the app with gateway.url(), order a product priced 1_234 ...
//! assert!(gateway.money_kept(order));
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

/// What the gateway does with one charge request under a new key.
#[derive(Debug, Clone)]
pub enum Step {
    /// The money is taken at once; the answer follows after `delay`, as `then` says. Until
    /// the answer is due, a repeat of the key gets 409 `idempotency_key_in_use`.
    Take { delay: Duration, then: Then },
    /// The money is taken; the answer is a 201 whose body cannot be read (JSON cut off). A
    /// repeat of the key gets the proper approval.
    TakeWithGarbage,
    /// This answer, verbatim, and nothing taken or recorded (a repeat of the key is a new
    /// request): a proxy's 403 page, a 429 with `Retry-After`, a 408, a 425.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 402 `{"status": "declined", "reason": ...}`, nothing taken; replayed for the key.
    Decline(String),
}

impl Step {
    /// An [`Answer`](Step::Answer) with a JSON error body `{code, message}`.
    pub fn error(status: u16, headers: &[(&str, &str)], code: &str) -> Self {
        Self::Answer {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            body: json!({ "code": code, "message": format!("scripted {status}") }).to_string(),
        }
    }
}

/// How a [`Step::Take`] answers once its delay has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// 201 `{charge_id, status: "approved"}`.
    Approve,
    /// No answer: the gateway becomes unreachable for this amount, this request included
    /// (see [`ScriptedGateway::go_down`]), until [`ScriptedGateway::come_back`].
    GoDown,
}

/// What the gateway does to every new request (a charge under a key it has not seen, a
/// refund) whose amount has no script left: its weather, for fault suites that disturb the
/// whole gateway for a while rather than one amount's requests.
#[derive(Debug, Clone, Default)]
pub enum Weather {
    /// Served normally.
    #[default]
    Fine,
    /// Never answered, nothing taken (the client times out).
    Hang,
    /// Every other request answered 503 with nothing taken, the rest served.
    FailHalf,
    /// This status with a JSON error body (and `Retry-After: 1` for a 429), nothing taken.
    Refuse(u16),
}

/// One request the gateway received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `charge` or `refund`.
    pub kind: &'static str,
    pub idempotency_key: String,
    /// The charge's amount (for a refund, the refunded charge's, when known).
    pub amount: Option<i64>,
    pub order_id: Option<Uuid>,
    /// The status answered; `None` while unanswered (a request that hung stays so).
    pub answer: Option<u16>,
}

/// A charge the gateway took.
#[derive(Debug, Clone)]
pub struct Charge {
    pub charge_id: String,
    pub order_id: Uuid,
    pub amount: i64,
    /// The refund's id, once refunded.
    pub refund: Option<String>,
}

/// The scripted gateway, serving until dropped.
pub struct ScriptedGateway {
    url: String,
    pg: Arc<Pg>,
    server: JoinHandle<()>,
}

impl Drop for ScriptedGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ScriptedGateway {
    /// Serves a gateway with empty scripts on 127.0.0.1, on a free port.
    pub async fn start() -> Self {
        let pg = Arc::new(Pg {
            book: Mutex::default(),
        });
        let router = Router::new()
            .route("/v1/charges", post(charge))
            .route("/v1/charges/{charge_id}/refunds", post(refund))
            .with_state(Arc::clone(&pg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the scripted gateway");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("scripted gateway serving");
        });
        Self { url, pg, server }
    }

    /// Its base URL, for `PAYMENT_GATEWAY_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Appends `steps` to the script of charges of `amount`.
    pub fn script(&self, amount: i64, steps: impl IntoIterator<Item = Step>) {
        self.pg
            .book()
            .scripts
            .entry(amount)
            .or_default()
            .extend(steps);
    }

    /// From now on every request about `amount` (a charge of it, a refund of a charge of it)
    /// changes nothing and is never answered: the client gives up on it.
    pub fn go_down(&self, amount: i64) {
        self.pg.book().down.insert(amount);
    }

    /// Requests about `amount` are served again; those that arrived while it was down stay
    /// unanswered, as if lost on the way.
    pub fn come_back(&self, amount: i64) {
        self.pg.book().down.remove(&amount);
    }

    /// From now on new requests get `weather` (see [`Weather`]).
    pub fn set_weather(&self, weather: Weather) {
        self.pg.book().weather = weather;
    }

    /// Whether the gateway holds money of `order`: a charge taken and not refunded.
    pub fn money_kept(&self, order: Uuid) -> bool {
        self.charges_of(order).iter().any(|c| c.refund.is_none())
    }

    /// The charges taken for `order`, refunded or not.
    pub fn charges_of(&self, order: Uuid) -> Vec<Charge> {
        let book = self.pg.book();
        book.charges
            .iter()
            .filter(|c| c.order_id == order)
            .cloned()
            .collect()
    }

    /// Charges taken so far (money moved), refunded or not.
    pub fn charges_taken(&self) -> usize {
        self.pg.book().charges.len()
    }

    /// Refunds made so far.
    pub fn refunds(&self) -> usize {
        let book = self.pg.book();
        book.charges.iter().filter(|c| c.refund.is_some()).count()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.pg.book().requests.clone()
    }

    /// The statuses answered to charge requests of `amount`, in order (`None`: hung).
    pub fn charge_answers(&self, amount: i64) -> Vec<Option<u16>> {
        self.requests()
            .iter()
            .filter(|r| r.kind == "charge" && r.amount == Some(amount))
            .map(|r| r.answer)
            .collect()
    }

    /// What the gateway did for `order`: its charges and the requests about it, for reports.
    pub fn describe(&self, order: Uuid) -> String {
        let mut text = String::new();
        for charge in self.charges_of(order) {
            let _ = write!(
                text,
                "charge {} of {} {}; ",
                charge.charge_id,
                charge.amount,
                charge.refund.as_ref().map_or_else(
                    || "KEPT (not refunded)".to_owned(),
                    |r| format!("refunded ({r})")
                )
            );
        }
        let requests: Vec<String> = self
            .requests()
            .iter()
            .filter(|r| r.order_id == Some(order))
            .map(|r| {
                let answer = r
                    .answer
                    .map_or_else(|| "hung".to_owned(), |s| s.to_string());
                format!("{} {}", r.kind, answer)
            })
            .collect();
        let _ = write!(text, "requests: [{}]", requests.join(", "));
        text
    }
}

/// The gateway's state, shared with its handlers.
struct Pg {
    book: Mutex<Book>,
}

impl Pg {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs a request as it arrives (unanswered); returns its place in the log.
    fn received(&self, request: Received) -> usize {
        let mut book = self.book();
        book.requests.push(request);
        book.requests.len() - 1
    }

    fn is_down(&self, amount: Option<i64>) -> bool {
        amount.is_some_and(|a| self.book().down.contains(&a))
    }
}

/// Everything the gateway remembers, under one lock: a request decides and records its answer
/// at once, so a concurrent repeat of its key sees it.
#[derive(Default)]
struct Book {
    scripts: HashMap<i64, VecDeque<Step>>,
    down: HashSet<i64>,
    weather: Weather,
    /// New requests met under [`Weather::FailHalf`].
    disturbed: u64,
    /// Idempotency key -> what a repeat of the key gets.
    charge_keys: HashMap<String, KeyRecord>,
    /// Refund idempotency key -> (charge id, answer).
    refund_keys: HashMap<String, (String, Reply)>,
    /// In the order taken.
    charges: Vec<Charge>,
    requests: Vec<Received>,
}

struct KeyRecord {
    /// Until then the first request is still running: repeats get 409.
    answer_due: Instant,
    replay: Reply,
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, &json!({ "code": code, "message": message }))
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = Response::builder().status(self.status);
        for (name, value) in &self.headers {
            response = response.header(name, value);
        }
        response
            .body(Body::from(self.body))
            .expect("a scripted answer is a valid response")
    }
}

/// What a charge request leads to, decided under the lock.
enum Decision {
    Answer(Reply),
    AnswerAt(Instant, Reply),
    Hang,
}

#[derive(Deserialize)]
struct ChargeBody {
    order_id: Uuid,
    amount: i64,
}

/// An unreachable gateway's answer: none, ever (the client gives up and drops the request).
async fn unreachable() -> Response {
    std::future::pending().await
}

fn idempotency_key(headers: &HeaderMap) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn charge(State(pg): State<Arc<Pg>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = idempotency_key(&headers);
    let parsed: Option<ChargeBody> = serde_json::from_slice(&body).ok();
    let amount = parsed.as_ref().map(|b| b.amount);
    let index = pg.received(Received {
        kind: "charge",
        idempotency_key: key.clone(),
        amount,
        order_id: parsed.as_ref().map(|b| b.order_id),
        answer: None,
    });
    if pg.is_down(amount) {
        return unreachable().await;
    }
    let decision = {
        let mut book = pg.book();
        let decision = match (parsed, key.is_empty()) {
            (Some(charge), false) => book.decide_charge(&key, &charge),
            (_, true) => Decision::Answer(Reply::error(
                400,
                "missing_idempotency_key",
                "the Idempotency-Key header is missing",
            )),
            (None, false) => Decision::Answer(Reply::error(400, "invalid_json", "bad body")),
        };
        book.requests[index].answer = match &decision {
            Decision::Answer(reply) | Decision::AnswerAt(_, reply) => Some(reply.status),
            Decision::Hang => None,
        };
        decision
    };
    match decision {
        Decision::Answer(reply) => reply.into_response(),
        Decision::AnswerAt(due, reply) => {
            tokio::time::sleep_until(due).await;
            reply.into_response()
        }
        Decision::Hang => unreachable().await,
    }
}

impl Book {
    fn decide_charge(&mut self, key: &str, charge: &ChargeBody) -> Decision {
        let now = Instant::now();
        if let Some(record) = self.charge_keys.get(key) {
            return if now < record.answer_due {
                Decision::Answer(Reply::error(
                    409,
                    "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being processed; retry later",
                ))
            } else {
                Decision::Answer(record.replay.clone())
            };
        }
        // A real gateway refuses a charge of nothing before anything else.
        if charge.amount <= 0 {
            return Decision::Answer(Reply::error(
                400,
                "invalid_request",
                "amount must be positive",
            ));
        }
        let step = self
            .scripts
            .get_mut(&charge.amount)
            .and_then(VecDeque::pop_front);
        if step.is_none() {
            if let Some(disturbed) = self.weathered() {
                return disturbed;
            }
        }
        match step {
            None => Decision::Answer(self.take(key, charge, now)),
            Some(Step::Take {
                delay,
                then: Then::Approve,
            }) => Decision::AnswerAt(now + delay, self.take(key, charge, now + delay)),
            Some(Step::Take {
                delay: _,
                then: Then::GoDown,
            }) => {
                self.take(key, charge, now);
                self.down.insert(charge.amount);
                Decision::Hang
            }
            Some(Step::TakeWithGarbage) => {
                self.take(key, charge, now);
                Decision::Answer(Reply {
                    status: 201,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: r#"{"charge_id":"#.into(),
                })
            }
            Some(Step::Answer {
                status,
                headers,
                body,
            }) => Decision::Answer(Reply {
                status,
                headers,
                body,
            }),
            Some(Step::Decline(reason)) => {
                let reply = Reply::json(402, &json!({ "status": "declined", "reason": reason }));
                self.charge_keys.insert(
                    key.to_owned(),
                    KeyRecord {
                        answer_due: now,
                        replay: reply.clone(),
                    },
                );
                Decision::Answer(reply)
            }
        }
    }

    /// What the weather does to a new request, if anything: nothing is taken or recorded.
    fn weathered(&mut self) -> Option<Decision> {
        match self.weather {
            Weather::Fine => None,
            Weather::Hang => Some(Decision::Hang),
            Weather::FailHalf => {
                self.disturbed += 1;
                (self.disturbed % 2 == 0).then(|| {
                    Decision::Answer(Reply::error(503, "unavailable", "failing half the calls"))
                })
            }
            Weather::Refuse(status) => {
                let mut reply = Reply::error(status, "refused", "the weather refuses it");
                if status == 429 {
                    reply.headers.push(("retry-after".into(), "1".into()));
                }
                Some(Decision::Answer(reply))
            }
        }
    }

    /// Takes the money under `key`; repeats of the key get 409 until `answer_due`, then the
    /// approval. Returns the approval.
    fn take(&mut self, key: &str, charge: &ChargeBody, answer_due: Instant) -> Reply {
        let charge_id = format!("ch_{}", Uuid::new_v4().simple());
        self.charges.push(Charge {
            charge_id: charge_id.clone(),
            order_id: charge.order_id,
            amount: charge.amount,
            refund: None,
        });
        let reply = Reply::json(
            201,
            &json!({ "charge_id": charge_id, "status": "approved" }),
        );
        self.charge_keys.insert(
            key.to_owned(),
            KeyRecord {
                answer_due,
                replay: reply.clone(),
            },
        );
        reply
    }

    fn refund(&mut self, key: &str, charge_id: &str) -> Reply {
        if let Some((first, reply)) = self.refund_keys.get(key) {
            return if first == charge_id {
                reply.clone()
            } else {
                Reply::error(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request",
                )
            };
        }
        let Some(charge) = self.charges.iter_mut().find(|c| c.charge_id == charge_id) else {
            return Reply::error(404, "charge_not_found", "no such charge");
        };
        if charge.refund.is_some() {
            return Reply::error(409, "charge_already_refunded", "already refunded");
        }
        let refund_id = format!("re_{}", Uuid::new_v4().simple());
        charge.refund = Some(refund_id.clone());
        let reply = Reply::json(
            201,
            &json!({ "refund_id": refund_id, "charge_id": charge_id, "status": "refunded" }),
        );
        self.refund_keys
            .insert(key.to_owned(), (charge_id.to_owned(), reply.clone()));
        reply
    }
}

async fn refund(
    State(pg): State<Arc<Pg>>,
    Path(charge_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = idempotency_key(&headers);
    let (amount, order_id) = pg
        .book()
        .charges
        .iter()
        .find(|c| c.charge_id == charge_id)
        .map_or((None, None), |c| (Some(c.amount), Some(c.order_id)));
    let index = pg.received(Received {
        kind: "refund",
        idempotency_key: key.clone(),
        amount,
        order_id,
        answer: None,
    });
    if pg.is_down(amount) {
        return unreachable().await;
    }
    let weathered = pg.book().weathered();
    let disturbed = match weathered {
        Some(Decision::Hang) => return unreachable().await,
        Some(Decision::Answer(reply) | Decision::AnswerAt(_, reply)) => Some(reply),
        None => None,
    };
    let mut book = pg.book();
    let reply = if let Some(reply) = disturbed {
        reply
    } else if key.is_empty() {
        Reply::error(
            400,
            "missing_idempotency_key",
            "the Idempotency-Key header is missing",
        )
    } else {
        book.refund(&key, &charge_id)
    };
    book.requests[index].answer = Some(reply.status);
    drop(book);
    reply.into_response()
}
