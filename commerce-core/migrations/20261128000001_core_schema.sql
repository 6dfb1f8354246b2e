-- commerce-core: products with stock, orders, the stock ledger and the backorder queue.
-- Everything lives in its own schema so an embedding application keeps its table names.
CREATE SCHEMA IF NOT EXISTS commerce;

CREATE TABLE commerce.products (
    id          BIGINT PRIMARY KEY,
    name        TEXT NOT NULL,
    available   BIGINT NOT NULL DEFAULT 0
                CONSTRAINT products_available_non_negative CHECK (available >= 0),
    backordered BIGINT NOT NULL DEFAULT 0
                CONSTRAINT products_backordered_non_negative CHECK (backordered >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE commerce.orders (
    id              UUID PRIMARY KEY,
    user_id         TEXT NOT NULL,
    idempotency_key TEXT,
    status          TEXT NOT NULL CHECK (status IN
                    ('BACKORDERED', 'CREATED', 'PROCESSING', 'SHIPPED', 'DELIVERED', 'CANCELLED')),
    shortage_policy TEXT NOT NULL CHECK (shortage_policy IN ('reject', 'backorder')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- NULL keys never collide, so orders without a key are unaffected.
    CONSTRAINT orders_user_idempotency_key UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_by_user ON commerce.orders (user_id, created_at DESC);

CREATE TABLE commerce.order_lines (
    order_id   UUID NOT NULL REFERENCES commerce.orders (id),
    product_id BIGINT NOT NULL REFERENCES commerce.products (id),
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    -- Units taken from stock so far; below `quantity` only while the line is backordered.
    allocated  BIGINT NOT NULL CHECK (allocated >= 0 AND allocated <= quantity),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_lines_by_product ON commerce.order_lines (product_id);

CREATE TABLE commerce.order_status_history (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES commerce.orders (id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_status_history_by_order ON commerce.order_status_history (order_id, id);

CREATE TABLE commerce.stock_ledger (
    id              BIGSERIAL PRIMARY KEY,
    product_id      BIGINT NOT NULL REFERENCES commerce.products (id),
    delta           BIGINT NOT NULL CHECK (delta <> 0),
    kind            TEXT NOT NULL CHECK (kind IN ('inbound', 'order', 'cancel', 'adjust')),
    reference       TEXT,
    available_after BIGINT NOT NULL CHECK (available_after >= 0),
    at              TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX stock_ledger_by_product ON commerce.stock_ledger (product_id, id DESC);

-- The backorder queue: one row per backordered order line, FIFO per product by id.
-- Rows are inserted while the product row is locked, so id order is commit order per product.
CREATE TABLE commerce.backorders (
    id          BIGSERIAL PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES commerce.orders (id),
    product_id  BIGINT NOT NULL REFERENCES commerce.products (id),
    outstanding BIGINT NOT NULL CHECK (outstanding > 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT backorders_one_per_line UNIQUE (order_id, product_id)
);
CREATE INDEX backorders_fifo ON commerce.backorders (product_id, id);
