-- The highest fencing token that wrote a product's stock under a distributed lock. A holder
-- whose lease expired (token older than the newest) is refused: see DistributedLockStrategy.
ALTER TABLE commerce.products ADD COLUMN lock_fence BIGINT NOT NULL DEFAULT 0;
