//! A Server-Sent Events reader for the order event streams: each event with its id, read
//! one at a time with a bound on the wait.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use super::{Answer, TestApp};

/// One event of a stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:` field.
    pub id: Option<String>,
    /// Its `data:` field, as JSON.
    pub data: Value,
}

impl SseEvent {
    /// The order status the event carries.
    pub fn status(&self) -> &str {
        self.data["status"].as_str().unwrap_or("<no status>")
    }
}

/// What came next on a stream.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(SseEvent),
    /// The server ended the stream.
    Ended,
    /// Nothing within the wait (keep-alive comments do not count).
    Silent,
}

/// An open event stream of one order.
pub struct EventStream {
    chunks: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
}

impl EventStream {
    /// Opens the stream of `order` for `token`, resuming after `last_event_id` if given;
    /// `Err` with the answer when the server does not answer 200.
    pub async fn open(
        app: &TestApp,
        order: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, Answer> {
        let mut request = app
            .raw
            .get(format!("{}/api/v1/orders/{order}/events", app.url))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream request sent");
        if response.status() != StatusCode::OK {
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.unwrap_or_default();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            return Err(Answer {
                status,
                headers,
                body,
            });
        }
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Ok(Self {
            chunks: response
                .bytes_stream()
                .map(|chunk| chunk.map(|bytes| bytes.to_vec()))
                .boxed(),
            buffer: String::new(),
        })
    }

    /// The next event, the end of the stream, or silence for `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim()).expect("JSON data"));
                    }
                }
                if let Some(data) = data {
                    return Next::Event(SseEvent { id, data });
                }
            }
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => return Next::Ended,
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                Err(_) => return Next::Silent,
            }
        }
    }

    /// The next event; panics with what came instead.
    pub async fn event(&mut self, within: Duration) -> SseEvent {
        match self.next(within).await {
            Next::Event(event) => event,
            other => panic!("expected an event within {within:?}, got {other:?}"),
        }
    }

    /// Every event until the stream ends; panics if it does not end within `within`.
    pub async fn until_end(&mut self, within: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Next::Event(event) => events.push(event),
                Next::Ended => return events,
                Next::Silent => panic!("the stream did not end within {within:?}: {events:?}"),
            }
        }
    }
}
