//! Attribute macros for commerce-cache (work in progress).
