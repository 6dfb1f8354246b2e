//! commerce-lock (work in progress).
