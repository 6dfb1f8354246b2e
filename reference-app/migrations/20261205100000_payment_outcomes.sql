-- The payment outcome rules (decision 0011):
-- - a call whose outcome is unknown is remembered (may_have_charged), so a cancelled order's
--   payment is voided only when no call can have taken the money; otherwise it is asked
--   about again (void_pending -> voiding) and what the gateway approved is refunded;
-- - a refund the gateway refuses for good ends in refund_failed (a person must look);
-- - the refund's id at the gateway is kept.
ALTER TABLE payment.payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payment.payments ADD CONSTRAINT payments_status_check CHECK (status IN (
    'pending', 'charging', 'approved', 'declined', 'failed', 'voided',
    'void_pending', 'voiding', 'refund_pending', 'refunding', 'refunded', 'refund_failed'));
ALTER TABLE payment.payments ADD COLUMN may_have_charged BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE payment.payments ADD COLUMN refund_id TEXT;
DROP INDEX payment.payments_due;
CREATE INDEX payments_due ON payment.payments (next_attempt_at)
    WHERE status IN ('pending', 'charging', 'void_pending', 'voiding', 'refund_pending', 'refunding');
