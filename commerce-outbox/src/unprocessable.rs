//! How a handler says "this event can never be applied": [`UnprocessableEvent`].
//!
//! A plain handler error means "not now" (the database is down, a row is locked): the runner
//! retries the event and holds the events behind it, which is right for trouble that passes.
//! An event that no retry can fix (a payload that does not parse, input the domain refuses
//! for good) would hold them forever, so the handler returns this error instead and the
//! runner sets the event aside as a consumer dead letter (see [`crate::dead_letter`]).

use std::error::Error as StdError;
use std::fmt;

use crate::consumer::HandlerError;

/// A handler's verdict that an event can never be applied, whatever the retries: the runner
/// records it as a consumer dead letter and moves on to the events behind it.
///
/// Return it (boxed, as any [`HandlerError`]: `?` does it) from
/// [`crate::EventHandler::handle`] for data that will never apply: a payload that does not
/// deserialize ([`crate::Envelope::decode_payload`]), a reference to something that cannot exist, a
/// value the domain rejects for good. Do **not** use it for trouble that passes (database
/// down, lock timeout, a service not answering): a plain error is retried, this one is not.
/// The runner finds it anywhere in the error's [`source`](StdError::source) chain.
///
/// ```
/// use commerce_outbox::{HandlerError, UnprocessableEvent};
///
/// fn check_amount(cents: i64) -> Result<(), HandlerError> {
///     if cents < 0 {
///         return Err(UnprocessableEvent::new(format!("negative amount {cents}")).into());
///     }
///     Ok(())
/// }
/// let error = check_amount(-5).unwrap_err();
/// assert!(UnprocessableEvent::find(error.as_ref()).is_some());
/// ```
#[derive(Debug)]
pub struct UnprocessableEvent {
    reason: String,
    cause: Option<HandlerError>,
}

impl UnprocessableEvent {
    /// An unprocessable event, for `reason` (kept in the dead letter).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            cause: None,
        }
    }

    /// An unprocessable event because of `cause` (e.g. a deserialization error): the reason
    /// is the cause's message, and the cause stays reachable as the error's source.
    pub fn because(cause: impl Into<HandlerError>) -> Self {
        let cause = cause.into();
        Self {
            reason: cause.to_string(),
            cause: Some(cause),
        }
    }

    /// An unprocessable event for `reason`, caused by `cause`.
    pub(crate) fn with_cause(reason: String, cause: HandlerError) -> Self {
        Self {
            reason,
            cause: Some(cause),
        }
    }

    /// Why the event can never be applied.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The [`UnprocessableEvent`] in `error` or in its chain of sources, if any: how the
    /// runner tells a permanent failure from a transient one.
    #[must_use]
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            current = error.source();
        }
        None
    }
}

impl fmt::Display for UnprocessableEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unprocessable event: {}", self.reason)
    }
}

impl StdError for UnprocessableEvent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn StdError + 'static))
    }
}

/// Marks a failure as permanent: `result.unprocessable()?` in a handler turns its error into
/// an [`UnprocessableEvent`], so the event becomes a consumer dead letter instead of being
/// retried.
///
/// ```
/// use commerce_outbox::{HandlerError, UnprocessableEvent, UnprocessableExt};
///
/// fn quantity(text: &str) -> Result<u32, HandlerError> {
///     Ok(text.parse::<u32>().unprocessable()?)
/// }
/// let error = quantity("many").unwrap_err();
/// assert!(UnprocessableEvent::find(error.as_ref()).is_some());
/// ```
pub trait UnprocessableExt<T> {
    /// The value, or the error wrapped in an [`UnprocessableEvent`].
    ///
    /// # Errors
    /// [`UnprocessableEvent::because`] the original error.
    fn unprocessable(self) -> Result<T, UnprocessableEvent>;
}

impl<T, E: Into<HandlerError>> UnprocessableExt<T> for Result<T, E> {
    fn unprocessable(self) -> Result<T, UnprocessableEvent> {
        self.map_err(UnprocessableEvent::because)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::event::{Envelope, EventId};

    /// Wraps another error, as an application's own error type would.
    #[derive(Debug)]
    struct Wrapped(HandlerError);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "while applying the payment: {}", self.0)
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.0.as_ref())
        }
    }

    fn envelope(payload: serde_json::Value) -> Envelope {
        Envelope {
            id: EventId::new_v7(),
            event_type: "payment.failed".into(),
            aggregate_type: "payment".into(),
            aggregate_id: "p-1".into(),
            aggregate_seq: 1,
            occurred_at: Utc::now(),
            schema_version: 1,
            payload,
            traceparent: None,
        }
    }

    #[test]
    fn find_sees_it_directly_or_anywhere_in_the_source_chain_and_nothing_else() {
        let cases: Vec<(&str, HandlerError, Option<&str>)> = vec![
            ("direct", UnprocessableEvent::new("bad").into(), Some("bad")),
            (
                "wrapped",
                Box::new(Wrapped(UnprocessableEvent::new("deep").into())),
                Some("deep"),
            ),
            ("plain string", "database down".into(), None),
            ("wrapped plain", Box::new(Wrapped("timeout".into())), None),
        ];
        for (case, error, expected) in cases {
            assert_eq!(
                UnprocessableEvent::find(error.as_ref()).map(UnprocessableEvent::reason),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn unprocessable_keeps_the_cause_as_reason_and_source() {
        let error = "x".parse::<u32>().unprocessable().unwrap_err();
        assert_eq!(error.reason(), "invalid digit found in string");
        assert_eq!(
            error.to_string(),
            "unprocessable event: invalid digit found in string"
        );
        assert!(error.source().is_some());
        assert_eq!(Ok::<_, String>(7).unprocessable().unwrap(), 7);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outcome {
        order_id: i64,
    }

    #[test]
    fn decode_payload_maps_a_mismatch_to_unprocessable() {
        let good = envelope(json!({"order_id": 42}));
        assert_eq!(
            good.decode_payload::<Outcome>().unwrap(),
            Outcome { order_id: 42 }
        );
        let bad = envelope(json!({"order_id": "forty-two"}));
        let error = bad.decode_payload::<Outcome>().unwrap_err();
        assert!(
            error.reason().starts_with(&format!(
                "the payload of payment.failed {} (schema v1) does not decode as",
                bad.id
            )),
            "{error}"
        );
        assert!(error.reason().contains("invalid type"), "{error}");
        let boxed: HandlerError = error.into();
        assert!(UnprocessableEvent::find(boxed.as_ref()).is_some());
    }
}
