//! commerce-cache (work in progress).
