//! The status stream of an order (`GET /api/v1/orders/{id}/events`, Server-Sent Events) as a
//! [`Stream`] of typed events.

use std::pin::Pin;
use std::task::{Context, Poll};

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};

use crate::error::{Error, Result};
use crate::order::HistoryView;

/// The SSE event name of a status change.
pub const STATUS_EVENT: &str = "status";

/// One event of an order's status stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// The SSE `id:` of the event, if the server gave one.
    pub id: Option<String>,
    /// The status entered, when and why.
    pub change: HistoryView,
}

/// The events of an order's status stream: its current status first, then one per change;
/// the stream ends after a final status (`DELIVERED`, `CANCELLED`) or when the server shuts
/// down. Made by [`ApiClient::order_events`](crate::ApiClient::order_events).
#[must_use = "a stream does nothing unless polled"]
pub struct StatusStream {
    inner: Pin<Box<dyn Stream<Item = Result<StatusEvent>> + Send>>,
}

impl std::fmt::Debug for StatusStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusStream")
    }
}

impl StatusStream {
    /// The status events of an SSE body given as a stream of byte chunks. Events of other
    /// names are skipped; a `status` event whose data is not a [`HistoryView`] is an error.
    pub fn from_bytes<S, B>(bytes: S) -> Self
    where
        S: Stream<Item = std::result::Result<B, reqwest::Error>> + Send + 'static,
        B: AsRef<[u8]> + Send + 'static,
    {
        let events = bytes.eventsource().filter_map(|event| async move {
            match event {
                Ok(event) if event.event == STATUS_EVENT => Some(
                    serde_json::from_str::<HistoryView>(&event.data)
                        .map(|change| StatusEvent {
                            id: (!event.id.is_empty()).then_some(event.id),
                            change,
                        })
                        .map_err(|e| Error::Stream(format!("status event data: {e}"))),
                ),
                Ok(_) => None,
                Err(EventStreamError::Transport(e)) => Some(Err(Error::Transport(e))),
                Err(e) => Some(Err(Error::Stream(e.to_string()))),
            }
        });
        Self {
            inner: Box::pin(events),
        }
    }
}

impl Stream for StatusStream {
    type Item = Result<StatusEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::order::OrderStatus;

    fn stream(chunks: &[&'static str]) -> StatusStream {
        let chunks: Vec<std::result::Result<&'static [u8], reqwest::Error>> =
            chunks.iter().map(|c| Ok(c.as_bytes())).collect();
        StatusStream::from_bytes(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn events_split_across_chunks_are_parsed_and_others_skipped() {
        let events: Vec<_> = stream(&[
            ": keep-alive\n\n",
            "event: status\nid: 1\ndata: {\"status\":\"CREA",
            "TED\",\"at\":\"2026-01-01T00:00:00Z\",\"reason\":\"placed\"}\n\n",
            "event: other\ndata: {}\n\n",
            "event: status\r\ndata: {\"status\":\"PROCESSING\",",
            "\"at\":\"2026-01-01T00:00:01Z\",\"reason\":\"payment approved\"}\r\n\r\n",
        ])
        .collect()
        .await;
        let events: Vec<StatusEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].id.as_deref(), Some("1"));
        assert_eq!(events[0].change.status, OrderStatus::Created);
        assert_eq!(events[1].change.status, OrderStatus::Processing);
        assert_eq!(events[1].change.reason, "payment approved");
    }

    #[tokio::test]
    async fn a_status_event_that_is_not_a_status_is_an_error() {
        let mut events = stream(&["event: status\ndata: {\"status\": \"LOST\"}\n\n"]);
        let first = events.next().await.unwrap();
        assert!(matches!(first, Err(Error::Stream(_))), "{first:?}");
    }
}
