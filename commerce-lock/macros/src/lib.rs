//! Attribute macros for commerce-lock (work in progress).
