//! The PG's HTTP API, one attempt at a time.
//!
//! `POST /v1/charges` (JSON `{order_id, amount, currency}`, header `Idempotency-Key`) answers
//! 201 `{charge_id, status: "approved"}` or 402 `{status: "declined", reason}`;
//! `POST /v1/charges/{id}/refunds` (header `Idempotency-Key`) answers 201
//! `{refund_id, charge_id, status: "refunded"}`; errors carry `{code, message}`.

use reqwest::{Response, StatusCode, Url};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ConfigError, GatewayTransport, TransportError, UnavailableCause};
use crate::payment::{ChargeId, ChargeOutcome, ChargeRequest, RefundReceipt, RefundRequest};

/// The header that makes a repeated request a replay instead of a second charge.
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

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
    ) -> Result<(StatusCode, Vec<u8>), TransportError> {
        let mut request = self.http.post(url).header(IDEMPOTENCY_KEY, idempotency_key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response: Response = request
            .send()
            .await
            .map_err(|e| UnavailableCause::Connection(describe(&e)))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(UnavailableCause::ServerError {
                status: status.as_u16(),
            }
            .into());
        }
        // A body cut off in transit: the PG's answer is unknown, so a retry (same key) asks again.
        let body = response
            .bytes()
            .await
            .map_err(|e| UnavailableCause::Connection(describe(&e)))?;
        Ok((status, body.to_vec()))
    }
}

impl GatewayTransport for HttpTransport {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, TransportError> {
        let body = ChargeBody {
            order_id: request.order_id,
            amount: request.amount,
            currency: &request.currency,
        };
        let (status, body) = self
            .post(
                self.url(&["v1", "charges"]),
                &request.idempotency_key,
                Some(&body),
            )
            .await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => {
                let approved: Approved = parse(&body)?;
                expect_status(&approved.status, "approved")?;
                Ok(ChargeOutcome::Approved {
                    charge_id: approved.charge_id,
                })
            }
            StatusCode::PAYMENT_REQUIRED => {
                let declined: Declined = parse(&body)?;
                expect_status(&declined.status, "declined")?;
                Ok(ChargeOutcome::Declined {
                    reason: declined.reason,
                })
            }
            _ => Err(unexpected(status, &body)),
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<RefundReceipt, TransportError> {
        let url = self.url(&["v1", "charges", &request.charge_id.0, "refunds"]);
        let (status, body) = self.post(url, &request.idempotency_key, None).await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => {
                let refunded: Refunded = parse(&body)?;
                expect_status(&refunded.status, "refunded")?;
                Ok(RefundReceipt {
                    refund_id: refunded.refund_id,
                    charge_id: refunded.charge_id,
                })
            }
            _ => Err(unexpected(status, &body)),
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
    status: String,
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

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, TransportError> {
    serde_json::from_slice(body).map_err(|e| TransportError::InvalidResponse(e.to_string()))
}

fn expect_status(actual: &str, expected: &str) -> Result<(), TransportError> {
    if actual == expected {
        Ok(())
    } else {
        Err(TransportError::InvalidResponse(format!(
            "status {actual:?} where {expected:?} was expected"
        )))
    }
}

/// Any answer but the expected ones: 4xx are rejections, the rest unreadable.
fn unexpected(status: StatusCode, body: &[u8]) -> TransportError {
    if status.is_client_error() {
        let message = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error) => format!("{}: {}", error.code, error.message),
            Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
        };
        TransportError::Rejected {
            status: status.as_u16(),
            message,
        }
    } else {
        TransportError::InvalidResponse(format!("unexpected status {status}"))
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
