-- Idempotency keys can be forgotten: `Commerce::forget_idempotency_keys` clears the key of
-- orders older than a retention. The uniqueness of (user, key) becomes a partial unique index
-- over the keys still kept, under the constraint's old name (a violation is mapped to "a
-- racing repeat holds the key" by that name), so a forgotten key leaves the index and orders
-- placed without a key never enter it. A second partial index finds the oldest kept keys
-- without scanning the orders; it too holds only kept keys.
-- Both indexes are built in the migration's transaction, with the table locked against
-- writes: on a large table run the migration in a quiet moment.
ALTER TABLE commerce.orders DROP CONSTRAINT orders_user_idempotency_key;
CREATE UNIQUE INDEX orders_user_idempotency_key ON commerce.orders (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX orders_kept_keys_by_age ON commerce.orders (created_at)
    WHERE idempotency_key IS NOT NULL;
