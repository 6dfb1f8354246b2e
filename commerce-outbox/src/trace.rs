//! Trace context across the outbox: the W3C `traceparent` of the work that writes an event
//! travels with it (the outbox row, the envelope, the message's `traceparent` header) to the
//! consumers, which handle it under the same trace id (their log lines, and the events they
//! write in turn).
//!
//! The context is task-local: [`scope`] runs a future under a `traceparent` (an HTTP
//! middleware for a request, the consumer for an event), and every [`crate::NewEvent`] made
//! inside it carries that value. Work that another task does on behalf of many callers (a
//! batch writer) runs outside their scopes: its events carry none unless set with
//! [`crate::NewEvent::with_traceparent`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use commerce_outbox::{trace, NewEvent};
//! let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let event = trace::scope(Some(parent.to_owned()), async {
//!     NewEvent::new("orders", "order.placed", "order", "o-1", serde_json::json!({}))
//! })
//! .await;
//! assert_eq!(event.traceparent.as_deref(), Some(parent));
//! assert_eq!(trace::trace_id(parent), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;

/// The message header (and HTTP header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: Option<String>;
    static BY_AGGREGATE: HashMap<String, String>;
}

/// Runs `work` with `traceparent` as the current trace context (a value that is not W3C's
/// counts as none).
pub async fn scope<F: Future>(traceparent: Option<String>, work: F) -> F::Output {
    CURRENT
        .scope(traceparent.filter(|t| is_traceparent(t)), work)
        .await
}

/// The current trace context, when the task runs inside [`scope`] with one.
#[must_use]
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Runs `work` with a trace context per aggregate id: for one task writing the events of
/// many requests at once (a batch writer), each event of aggregate `id` travels under
/// `traces[id]` (values that are not W3C's are dropped). Outside it, and for other
/// aggregates, [`current`] applies.
pub async fn scope_by_aggregate<F: Future>(traces: HashMap<String, String>, work: F) -> F::Output {
    let traces = traces
        .into_iter()
        .filter(|(_, t)| is_traceparent(t))
        .collect();
    BY_AGGREGATE.scope(traces, work).await
}

/// The trace context an event of aggregate `aggregate_id` made now travels under: its own
/// ([`scope_by_aggregate`]), else the current one.
#[must_use]
pub fn current_for(aggregate_id: &str) -> Option<String> {
    BY_AGGREGATE
        .try_with(|traces| traces.get(aggregate_id).cloned())
        .ok()
        .flatten()
        .or_else(current)
}

/// Whether `value` is a W3C trace context of version 00: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lower case, neither id all zeros.
#[must_use]
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2)
            && nonzero(trace) && nonzero(span))
}

/// The trace id of a W3C trace context (its 32 hex digits), for log lines.
#[must_use]
pub fn trace_id(traceparent: &str) -> Option<&str> {
    if is_traceparent(traceparent) {
        traceparent.get(3..35)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_w3c_trace_contexts_are_accepted() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
            assert_eq!(trace_id(bad), None);
        }
    }

    #[tokio::test]
    async fn the_context_holds_inside_its_scope_only() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        assert_eq!(current(), None);
        let inside = scope(Some(parent.clone()), async { current() }).await;
        assert_eq!(inside, Some(parent));
        assert_eq!(
            scope(Some("garbage".into()), async { current() }).await,
            None
        );
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn each_aggregate_of_a_batch_travels_under_its_own_context() {
        let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let outer = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
        let traces = HashMap::from([
            ("o-1".to_owned(), a.clone()),
            ("o-2".to_owned(), "garbage".to_owned()),
        ]);
        let seen = scope(
            Some(outer.clone()),
            scope_by_aggregate(traces, async {
                (current_for("o-1"), current_for("o-2"), current_for("o-3"))
            }),
        )
        .await;
        assert_eq!(seen, (Some(a), Some(outer.clone()), Some(outer)));
        assert_eq!(current_for("o-1"), None);
    }
}
