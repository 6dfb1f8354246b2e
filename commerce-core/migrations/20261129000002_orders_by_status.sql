-- Finding orders that have waited too long in a status (a saga's timeout sweep) without
-- scanning the table: only the statuses an order waits in are indexed.
CREATE INDEX orders_waiting ON commerce.orders (status, updated_at)
    WHERE status IN ('BACKORDERED', 'CREATED', 'PROCESSING');
