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
