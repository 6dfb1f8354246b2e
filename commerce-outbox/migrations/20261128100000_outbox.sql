-- commerce-outbox owns the `commerce_outbox` schema: the outbox, the per-aggregate sequence,
-- the consumers' inbox and the saga log.
CREATE SCHEMA IF NOT EXISTS commerce_outbox;

-- One row per aggregate that ever emitted an event. `enqueue` bumps `last_seq` with an
-- UPDATE, so two transactions writing events of one aggregate serialize on this row: the
-- second gets its number only after the first commits or rolls back. Per aggregate, sequence
-- order is therefore commit order and has no gaps, which is what the relay orders by.
CREATE TABLE commerce_outbox.aggregate_sequence (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    last_seq       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE commerce_outbox.event (
    -- Claim order only (oldest first); never used as a cursor, since identity order is not
    -- commit order.
    position        bigint      GENERATED ALWAYS AS IDENTITY,
    id              uuid        PRIMARY KEY,
    topic           text        NOT NULL,
    event_type      text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    aggregate_seq   bigint      NOT NULL,
    occurred_at     timestamptz NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
        CONSTRAINT event_status_check CHECK (status IN ('pending', 'published', 'dead', 'discarded')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    dead_at         timestamptz
    -- No unique (aggregate, seq) constraint: the sequence row already guarantees it, and
    -- every extra index is paid on each enqueue and each publish mark.
);

CREATE INDEX event_pending_idx ON commerce_outbox.event (position) WHERE status = 'pending';
-- The relay's "is an earlier event of this aggregate still unsettled?" probe.
CREATE INDEX event_unsettled_idx ON commerce_outbox.event (aggregate_type, aggregate_id, aggregate_seq)
    WHERE status IN ('pending', 'dead');
-- The few rows that block their aggregate: dead letters and events waiting out a retry
-- delay. Kept tiny so the claim's "is an earlier event blocking?" probe is cheap.
CREATE INDEX event_blocking_idx ON commerce_outbox.event (aggregate_type, aggregate_id, aggregate_seq)
    WHERE status = 'dead' OR (status = 'pending' AND attempts > 0);
CREATE INDEX event_published_idx ON commerce_outbox.event (published_at) WHERE status = 'published';
CREATE INDEX event_dead_idx ON commerce_outbox.event (dead_at) WHERE status = 'dead';

CREATE TABLE commerce_outbox.inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_received_idx ON commerce_outbox.inbox (received_at);

CREATE TABLE commerce_outbox.saga_log (
    entry_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga        text        NOT NULL,
    saga_id     text        NOT NULL,
    step        text        NOT NULL,
    status      text        NOT NULL
        CONSTRAINT saga_log_status_check CHECK (status IN ('started', 'completed', 'failed', 'compensated')),
    event_id    uuid,
    detail      text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX saga_log_saga_id_idx ON commerce_outbox.saga_log (saga_id, entry_id);
