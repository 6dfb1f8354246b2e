-- The W3C trace context of the request that wrote the event (`traceparent`), carried to its
-- consumers in the envelope and as a message header, so one request's log lines share a
-- trace id across services. NULL when the event was written outside any trace.
ALTER TABLE commerce_outbox.event ADD COLUMN traceparent text;
