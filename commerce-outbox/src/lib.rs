//! commerce-outbox (work in progress).
