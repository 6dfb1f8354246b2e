-- The reference app's own tables, in schemas of their own (commerce-core's and
-- commerce-outbox's migrations create theirs).

-- The store service hands out product ids.
CREATE SCHEMA IF NOT EXISTS store;
CREATE SEQUENCE store.product_ids;

-- The payment service: one payment per order, moved by its worker.
--   pending -> charging -> approved | declined | failed      (charge)
--   pending -> voided                                         (order cancelled first)
--   approved -> refund_pending -> refunding -> refunded       (order cancelled after)
-- `charging` / `refunding` rows carry a lease in next_attempt_at: a worker that died
-- mid-call leaves them claimable again, and the gateway's idempotency key makes the repeat
-- safe.
CREATE SCHEMA IF NOT EXISTS payment;
CREATE TABLE payment.payments (
    order_id         UUID PRIMARY KEY,
    amount           BIGINT NOT NULL CHECK (amount >= 0),
    currency         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'charging', 'approved',
                     'declined', 'failed', 'voided', 'refund_pending', 'refunding', 'refunded')),
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    charge_id        TEXT,
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_due ON payment.payments (next_attempt_at)
    WHERE status IN ('pending', 'charging', 'refund_pending', 'refunding');
