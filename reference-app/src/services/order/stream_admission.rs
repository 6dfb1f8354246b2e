//! How many order event streams may be open: per user and in all. Each open stream holds a
//! [`StreamPermit`]; dropping the stream (the client left, the stream ended) gives it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefused {
    /// The user holds as many streams as one user may.
    PerUser {
        /// The cap.
        max: usize,
    },
    /// The process holds as many streams as it may.
    Overall {
        /// The cap.
        max: usize,
    },
}

impl StreamRefused {
    /// `per_user` or `overall` (a metric label and the error's detail).
    #[must_use]
    pub fn limit(self) -> &'static str {
        match self {
            Self::PerUser { .. } => "per_user",
            Self::Overall { .. } => "overall",
        }
    }

    /// The cap reached.
    #[must_use]
    pub fn max(self) -> usize {
        match self {
            Self::PerUser { max } | Self::Overall { max } => max,
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_user: HashMap<String, usize>,
}

#[derive(Debug)]
struct Caps {
    max_per_user: usize,
    max_total: usize,
    open: Mutex<Open>,
}

/// Admits event streams up to a cap per user and a cap overall. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StreamAdmission {
    caps: Arc<Caps>,
}

/// One open stream's place; given back on drop.
#[derive(Debug)]
pub struct StreamPermit {
    caps: Arc<Caps>,
    user: String,
}

impl StreamAdmission {
    /// At most `max_per_user` streams per user and `max_total` in all.
    #[must_use]
    pub fn new(max_per_user: usize, max_total: usize) -> Self {
        Self {
            caps: Arc::new(Caps {
                max_per_user,
                max_total,
                open: Mutex::new(Open::default()),
            }),
        }
    }

    /// A place for one more stream of `user`'s.
    ///
    /// # Errors
    /// [`StreamRefused`] when a cap is reached (counted in `sse_streams_refused_total`).
    pub fn admit(&self, user: &str) -> Result<StreamPermit, StreamRefused> {
        let caps = &self.caps;
        let mut open = caps.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.per_user.get(user).copied().unwrap_or(0);
        let refused = if mine >= caps.max_per_user {
            Some(StreamRefused::PerUser {
                max: caps.max_per_user,
            })
        } else if open.total >= caps.max_total {
            Some(StreamRefused::Overall {
                max: caps.max_total,
            })
        } else {
            None
        };
        if let Some(refused) = refused {
            metrics::counter!("sse_streams_refused_total", "limit" => refused.limit()).increment(1);
            return Err(refused);
        }
        open.total += 1;
        *open.per_user.entry(user.to_owned()).or_default() += 1;
        metrics::gauge!("sse_streams_open").increment(1.0);
        Ok(StreamPermit {
            caps: Arc::clone(caps),
            user: user.to_owned(),
        })
    }

    /// Streams open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self
            .caps
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(mine) = open.per_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                open.per_user.remove(&self.user);
            }
        }
        metrics::gauge!("sse_streams_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_overall_and_places_come_back_on_drop() {
        let admission = StreamAdmission::new(2, 3);
        let a1 = admission.admit("alice").unwrap();
        let _a2 = admission.admit("alice").unwrap();
        assert_eq!(
            admission.admit("alice").unwrap_err(),
            StreamRefused::PerUser { max: 2 }
        );
        let _b1 = admission.admit("bob").unwrap();
        assert_eq!(
            admission.admit("carol").unwrap_err(),
            StreamRefused::Overall { max: 3 }
        );
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _a3 = admission.admit("alice").unwrap();
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn a_user_whose_streams_all_closed_leaves_no_entry() {
        let admission = StreamAdmission::new(5, 10);
        let permits: Vec<_> = (0..5).map(|_| admission.admit("alice").unwrap()).collect();
        drop(permits);
        assert_eq!(admission.open(), 0);
        assert!(admission.caps.open.lock().unwrap().per_user.is_empty());
    }
}
