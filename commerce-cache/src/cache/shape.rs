//! What a caller's loader returns, seen from the cache: `Option<V>` (absence is cached) or
//! plain `V` (a cached absence, written by another caller of the same key, is a miss).

/// A loader result the cache can store and give back.
pub(crate) trait Shape<V>: Sized {
    /// The value as the cache stores it; `None` is a cached "not found".
    fn cached(&self) -> Option<&V>;
    /// Turns a cached value back into this shape; `None` when this shape cannot hold it.
    fn from_cached(cached: Option<V>) -> Option<Self>;
    /// Whether [`Shape::from_cached`] would accept `cached`.
    fn accepts(cached: &Option<V>) -> bool;
}

/// Absence is a value.
pub(crate) struct Maybe<V>(pub(crate) Option<V>);

/// Absence is not expected; a cached one is ignored.
pub(crate) struct Always<V>(pub(crate) V);

impl<V> Shape<V> for Maybe<V> {
    fn cached(&self) -> Option<&V> {
        self.0.as_ref()
    }

    fn from_cached(cached: Option<V>) -> Option<Self> {
        Some(Self(cached))
    }

    fn accepts(_cached: &Option<V>) -> bool {
        true
    }
}

impl<V> Shape<V> for Always<V> {
    fn cached(&self) -> Option<&V> {
        Some(&self.0)
    }

    fn from_cached(cached: Option<V>) -> Option<Self> {
        cached.map(Self)
    }

    fn accepts(cached: &Option<V>) -> bool {
        cached.is_some()
    }
}
