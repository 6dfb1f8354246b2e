//! L1 entries: a value, the L2 version it came from, and how long it may be served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

/// One L1 entry. Cloned on every hit, so it stays small: optional parts are `None` unless the
/// cache enables fail-safe or refresh-ahead, and then the hot path reads no clock.
#[derive(Debug, Clone)]
pub(crate) struct L1Entry<V> {
    /// `None` is a cached "not found".
    pub(crate) value: Option<V>,
    /// The L2 version the value was read or written at; `0` when L2 was unavailable.
    pub(crate) version: u64,
    /// How long moka keeps the entry: its fresh time plus the fail-safe window.
    pub(crate) lifetime: Duration,
    /// End of the fresh time when a fail-safe window follows it.
    pub(crate) fresh_until: Option<Instant>,
    /// When refresh-ahead starts, and whether a caller has claimed that refresh.
    pub(crate) refresh: Option<(Instant, Arc<AtomicBool>)>,
}

/// What a read may do with an entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it, except for the one caller that claimed the refresh: it reloads first.
    RefreshClaimed,
    /// Expired: only for the fail-safe, when the loader fails.
    Stale,
}

impl<V> L1Entry<V> {
    pub(crate) fn freshness(&self) -> Freshness {
        if self.fresh_until.is_none() && self.refresh.is_none() {
            return Freshness::Fresh;
        }
        let now = Instant::now();
        if self.fresh_until.is_some_and(|until| now >= until) {
            return Freshness::Stale;
        }
        match &self.refresh {
            Some((at, claimed)) if now >= *at && !claimed.swap(true, Ordering::AcqRel) => {
                Freshness::RefreshClaimed
            }
            _ => Freshness::Fresh,
        }
    }

    /// Lets a later caller retry a refresh that failed.
    pub(crate) fn release_refresh(&self) {
        if let Some((_, claimed)) = &self.refresh {
            claimed.store(false, Ordering::Release);
        }
    }
}

/// Per-entry lifetimes: an entry lives exactly its own `lifetime`, also when it replaces another.
pub(crate) struct EntryExpiry;

impl<V> Expiry<String, L1Entry<V>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &L1Entry<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &L1Entry<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fresh_until: Option<Instant>, refresh_at: Option<Instant>) -> L1Entry<u8> {
        L1Entry {
            value: Some(1),
            version: 1,
            lifetime: Duration::from_secs(60),
            fresh_until,
            refresh: refresh_at.map(|at| (at, Arc::new(AtomicBool::new(false)))),
        }
    }

    #[test]
    fn plain_entries_are_fresh_for_their_whole_lifetime() {
        assert_eq!(entry(None, None).freshness(), Freshness::Fresh);
    }

    #[test]
    fn past_fresh_time_an_entry_is_only_a_fail_safe() {
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        assert_eq!(entry(past, None).freshness(), Freshness::Stale);
    }

    #[test]
    fn exactly_one_caller_claims_a_due_refresh_until_released() {
        let entry = entry(None, Some(Instant::now()));
        assert_eq!(entry.freshness(), Freshness::RefreshClaimed);
        assert_eq!(
            entry.clone().freshness(),
            Freshness::Fresh,
            "clones share the claim"
        );
        entry.release_refresh();
        assert_eq!(entry.freshness(), Freshness::RefreshClaimed);
    }
}
