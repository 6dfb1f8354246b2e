//! The production [`Gateway`]: the payment gateway's HTTP API through
//! [`crate::payment::client::GatewayClient`] (overall timeout, breaker, retries, attempt
//! timeout).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Charge, ChargeAnswer, Gateway, GatewayFailure};
use crate::payment::client::{
    BreakerState, ConfigError, GatewayClient, GatewayClientConfig, GatewayError, HttpTransport,
};
use crate::payment::{ChargeId, ChargeOutcome, ChargeRequest};

/// A [`Gateway`] over the payment gateway's HTTP API at `base_url`, with `config`'s resilience
/// settings.
///
/// # Errors
/// When the URL does not parse or a setting is out of range.
pub fn http_gateway(
    base_url: &str,
    config: GatewayClientConfig,
) -> Result<Arc<dyn Gateway>, ConfigError> {
    let client = GatewayClient::http(base_url, config)?;
    Ok(Arc::new(HttpGateway(client)))
}

struct HttpGateway(GatewayClient<HttpTransport>);

fn failure(error: &GatewayError) -> GatewayFailure {
    match error {
        GatewayError::BreakerOpen { .. } => GatewayFailure::BreakerOpen,
        GatewayError::Unavailable { .. } => GatewayFailure::Unavailable(error.to_string()),
        GatewayError::Rejected { .. } | GatewayError::InvalidResponse(_) => {
            GatewayFailure::Refused(error.to_string())
        }
    }
}

#[async_trait]
impl Gateway for HttpGateway {
    async fn charge(&self, charge: &Charge) -> Result<ChargeAnswer, GatewayFailure> {
        let request = ChargeRequest {
            order_id: charge.order_id,
            amount: charge.amount,
            currency: charge.currency.clone(),
            idempotency_key: charge.idempotency_key.clone(),
        };
        match self.0.charge(&request).await.map_err(|e| failure(&e))? {
            ChargeOutcome::Approved { charge_id } => Ok(ChargeAnswer::Approved {
                charge_id: charge_id.0,
            }),
            ChargeOutcome::Declined { reason } => Ok(ChargeAnswer::Declined { reason }),
        }
    }

    async fn refund(&self, charge_id: &str, idempotency_key: &str) -> Result<(), GatewayFailure> {
        self.0
            .refund(&ChargeId(charge_id.to_owned()), idempotency_key)
            .await
            .map(drop)
            .map_err(|e| failure(&e))
    }

    fn breaker_state(&self) -> &'static str {
        match self.0.breaker_state() {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}
