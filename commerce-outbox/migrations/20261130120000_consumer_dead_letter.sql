-- Consumer dead letters: events a consumer's handler declared unprocessable (they can never
-- be applied), set aside so the events behind them go on. The runner writes a row in the
-- same transaction as the event's inbox record, so a redelivery is skipped; an operator
-- replays it through the handler (which deletes the row) or discards it.
--
-- The envelope is kept whole, in the columns of `commerce_outbox.event`, so a replay gets
-- exactly what the handler got.
CREATE TABLE commerce_outbox.consumer_dead_letter (
    consumer       text        NOT NULL,
    event_id       uuid        NOT NULL,
    topic          text        NOT NULL,
    event_type     text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    aggregate_seq  bigint      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    schema_version integer     NOT NULL,
    payload        jsonb       NOT NULL,
    -- The handler's error, cut to a bounded length by the runner.
    error          text        NOT NULL,
    dead_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (consumer, event_id)
);
-- Listing: one consumer's dead letters, oldest first.
CREATE INDEX consumer_dead_letter_dead_at_idx ON commerce_outbox.consumer_dead_letter (consumer, dead_at);
