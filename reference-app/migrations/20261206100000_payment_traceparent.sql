-- The trace context of the order.created event a payment was recorded from: the worker's
-- gateway calls and the answers it writes (payment.approved, ...) travel under it, so one
-- order's lines share a trace id from the gateway to the payment and back.
ALTER TABLE payment.payments ADD COLUMN traceparent text;
