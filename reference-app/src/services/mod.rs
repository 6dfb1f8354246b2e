//! The services of the order system. Each is a module with its own router, state and
//! consumers; they talk only through events ([`contracts`]) and HTTP, so the all-in-one
//! binary can later run each in a process of its own behind a gateway.

pub mod admin;
pub mod contracts;
pub mod ops;
pub mod order;
pub mod payment;
pub mod statistics;
pub mod store;
