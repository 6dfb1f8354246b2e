//! The payment service: the payment side of the saga, in one module with one vocabulary.
//!
//! - [`gateway`]: what the service asks of the external payment gateway and what it answers
//!   (one set of types), the resilient client that asks it, and the outcome rules;
//! - `store`: the `payment.payments` table and its [`PaymentStatus`] state machine (the only
//!   module with SQL on it);
//! - the consumer ([`OrderEvents`]) records a payment for every start of the saga (an
//!   `order.placed` of an order placed CREATED, or an `order.created`; exactly once,
//!   through the inbox; an amount of 0 is settled at once) and reacts to `order.cancelled`;
//! - the worker ([`PaymentWorker`]) charges from outside any database transaction and answers
//!   with `payment.approved` or `payment.failed` through the outbox, in the transaction that
//!   records the outcome, and refunds (`payment.refunded`);
//! - [`stand_in`]: a stand-in gateway for local runs and tests.
//!
//! When the gateway's answer settles nothing (unavailable, throttled, still working, an
//! answer that cannot be read) the charge is **parked** and asked again later with the same
//! idempotency key, rather than failed (decision 0009): a short outage costs a delay, not the
//! customer's order. The saga still ends: the order service cancels an order whose payment
//! has not answered within the saga timeout. A cancelled order's payment is voided only when
//! no call can have taken the money; otherwise the gateway is asked again and what it approved
//! is refunded (decision 0011). The money rule: a payment is kept only for a live order.

mod consumer;
pub mod gateway;
pub mod stand_in;
mod store;
mod worker;

pub use consumer::OrderEvents;
pub use store::PaymentStatus;
pub use worker::{PaymentWorker, WorkerSettings};
