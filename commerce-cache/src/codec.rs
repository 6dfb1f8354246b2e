//! The L2 codec: `serde_json`.
//!
//! Chosen over a binary format because values stay readable with `redis-cli` and survive added
//! optional fields; encoding cost is invisible next to a Redis round trip, and L1 holds decoded
//! values, so hits never decode.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Stored;
use crate::Error;

pub(crate) fn encode<V: Serialize>(key: &str, value: Option<&V>) -> Result<Stored, Error> {
    match value {
        Some(value) => serde_json::to_vec(value)
            .map(Stored::Value)
            .map_err(|source| Error::Encode {
                key: key.to_owned(),
                source,
            }),
        None => Ok(Stored::Negative),
    }
}

/// `Err` when the bytes do not decode as `V` (written by an older or newer build).
pub(crate) fn decode<V: DeserializeOwned>(stored: &Stored) -> serde_json::Result<Option<V>> {
    match stored {
        Stored::Value(bytes) => serde_json::from_slice(bytes).map(Some),
        Stored::Negative => Ok(None),
    }
}
