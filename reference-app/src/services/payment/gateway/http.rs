//! The PG's HTTP API, one attempt at a time.
//!
//! `POST /v1/charges` (JSON `{order_id, amount, currency}`, header `Idempotency-Key`) answers
//! 201 `{charge_id, status: "approved"}` or 402 `{status: "declined", reason}`;
//! `POST /v1/charges/{id}/refunds` (header `Idempotency-Key`) answers 201
//! `{refund_id, charge_id, status: "refunded"}`; errors carry `{code, message}`.
//!
//! Every other answer is classified here, once, by the rules of the [module
//! docs](super#outcomes-decision-0011): a permanent refusal ([`PERMANENT_REFUSALS`]) or an
//! unknown outcome ([`UnavailableCause`]).

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::client::ConfigError;
use super::{
    raw_text, ChargeId, ChargeOutcome, ChargeRequest, GatewayTransport, RefundReceipt,
    RefundRequest, TransportError, UnavailableCause,
};

/// The header that makes a repeated request a replay instead of a second charge.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The statuses that refuse a request for good: the request itself is wrong (malformed,
/// unauthorised, not found, too large, of a type or content the PG does not take), so the PG
/// did nothing and asking again cannot help. 408, 409, 425 and 429 are not among them: those
/// say "not now" or "still working", and their request is asked again.
pub const PERMANENT_REFUSALS: [u16; 12] =
    [400, 401, 403, 404, 405, 406, 410, 411, 413, 414, 415, 422];

/// The error code a PG answers 409 with while the first request of a key is still running.
const KEY_IN_USE: &str = "idempotency_key_in_use";

/// The error code a PG answers a refund with, 409, when the charge is refunded already.
const ALREADY_REFUNDED: &str = "charge_already_refunded";

/// The longest `Retry-After` honoured: a PG asking for more is asked again after this.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// An answer the transport read in full.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The PG's HTTP API over reqwest (plain HTTP; no TLS backend is compiled in).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
    base: Url,
}

impl HttpTransport {
    /// A transport to the PG at `base_url` (scheme, host, port and an optional path prefix).
    ///
    /// # Errors
    /// [`ConfigError::InvalidUrl`] when `base_url` is not an `http(s)` URL;
    /// [`ConfigError::Http`] when the HTTP client cannot be built.
    pub fn new(base_url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let base = Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        let http = reqwest::Client::builder()
            // A redirected POST would turn into a GET: a redirect is an unreadable answer.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Http(describe(&e)))?;
        Ok(Self { http, base })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Each segment is percent-encoded, so a charge id cannot reach another path.
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn post(
        &self,
        url: Url,
        idempotency_key: &str,
        body: Option<&ChargeBody<'_>>,
    ) -> Result<Answer, TransportError> {
        let mut request = self.http.post(url).header(IDEMPOTENCY_KEY, idempotency_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response: Response = request.send().await.map_err(|e| {
            UnavailableCause::Connection {
                detail: describe(&e),
                // A connection that never opened sent nothing; any later failure may have
                // reached the PG.
                sent: !e.is_connect(),
            }
        })?;
        let (status, headers) = (response.status(), response.headers().clone());
        // A body cut off in transit: the PG's answer is unknown, so a retry (same key) asks again.
        let body = response
            .bytes()
            .await
            .map_err(|e| UnavailableCause::Connection {
                detail: describe(&e),
                sent: true,
            })?;
        Ok(Answer {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}

impl GatewayTransport for HttpTransport {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, TransportError> {
        let body = ChargeBody {
            order_id: request.order_id,
            amount: request.amount,
            currency: &request.currency,
        };
        let answer = self
            .post(
                self.url(&["v1", "charges"]),
                &request.idempotency_key,
                Some(&body),
            )
            .await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                let approved: Approved = parse(&answer)?;
                expect_status(&answer, &approved.status, "approved")?;
                Ok(ChargeOutcome::Approved {
                    charge_id: approved.charge_id,
                })
            }
            // An explicit decline, whatever its body says: the PG took nothing.
            StatusCode::PAYMENT_REQUIRED => Ok(ChargeOutcome::Declined {
                reason: match serde_json::from_slice::<Declined>(&answer.body) {
                    Ok(declined) => raw_text(&declined.reason),
                    Err(_) => "declined (the gateway gave no readable reason)".to_owned(),
                },
            }),
            // The charge's first request (abandoned by our attempt timeout) is still running.
            StatusCode::CONFLICT => Err(UnavailableCause::InProgress.into()),
            _ => Err(unexpected(&answer)),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, TransportError> {
        let url = self.url(&["v1", "charges", &request.charge_id.0, "refunds"]);
        let answer = self.post(url, &request.idempotency_key, None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => {
                let refunded: Refunded = parse(&answer)?;
                expect_status(&answer, &refunded.status, "refunded")?;
                Ok(RefundReceipt {
                    refund_id: refunded.refund_id,
                    charge_id: refunded.charge_id,
                })
            }
            // A 409 ends a refund only when the PG says the charge is refunded already
            // (under another key: the money is back, and a person looks at why). Any other
            // 409 says "not now", as for a charge: asked again with the same key.
            StatusCode::CONFLICT => match error_code(&answer.body).as_deref() {
                Some(ALREADY_REFUNDED) => Err(refused(&answer)),
                Some(KEY_IN_USE) => Err(UnavailableCause::InProgress.into()),
                _ => Err(unexpected(&answer)),
            },
            _ => Err(unexpected(&answer)),
        }
    }
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    order_id: Uuid,
    amount: i64,
    currency: &'a str,
}

#[derive(Deserialize)]
struct Approved {
    charge_id: ChargeId,
    status: String,
}

#[derive(Deserialize)]
struct Declined {
    reason: String,
}

#[derive(Deserialize)]
struct Refunded {
    refund_id: String,
    charge_id: ChargeId,
    status: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

fn unreadable(answer: &Answer, detail: String) -> TransportError {
    UnavailableCause::UnreadableAnswer {
        status: answer.status.as_u16(),
        detail,
    }
    .into()
}

/// The body of a 2xx answer: one that does not parse may still mean the money moved.
fn parse<'a, T: Deserialize<'a>>(answer: &'a Answer) -> Result<T, TransportError> {
    serde_json::from_slice(&answer.body).map_err(|e| unreadable(answer, e.to_string()))
}

fn expect_status(answer: &Answer, actual: &str, expected: &str) -> Result<(), TransportError> {
    if actual == expected {
        Ok(())
    } else {
        Err(unreadable(
            answer,
            format!("status {actual:?} where {expected:?} was expected"),
        ))
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|error| error.code)
}

fn refused(answer: &Answer) -> TransportError {
    let message = match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(error) => format!("{}: {}", error.code, error.message),
        // Whatever a proxy or firewall put there (an HTML page, say): kept raw for the saga log.
        Err(_) => String::from_utf8_lossy(&answer.body).into_owned(),
    };
    TransportError::Refused {
        status: answer.status.as_u16(),
        message: raw_text(&message),
    }
}

/// `Retry-After` in whole seconds (an HTTP date is not honoured: asked again at the usual
/// pace), at most [`LONGEST_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(LONGEST_RETRY_AFTER))
}

/// Any answer but the expected ones of its operation: a permanent refusal, or an unknown
/// outcome to ask about again.
fn unexpected(answer: &Answer) -> TransportError {
    let status = answer.status.as_u16();
    if PERMANENT_REFUSALS.contains(&status) {
        return refused(answer);
    }
    let retry_after = retry_after(&answer.headers);
    match status {
        408 | 425 | 429 => UnavailableCause::Throttled {
            status,
            retry_after,
        }
        .into(),
        500..=599 => UnavailableCause::ServerError {
            status,
            retry_after,
        }
        .into(),
        _ => unreadable(answer, format!("unexpected status {}", answer.status)),
    }
}

/// The error with its chain of causes: reqwest's own text rarely names the root cause.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
