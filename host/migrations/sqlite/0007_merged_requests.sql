-- Tiny variations of a request still pending are merged into it: `merged` counts them. They
-- count towards the actor's rate limit and history, so the covering index carries the column.
ALTER TABLE approvals ADD COLUMN merged INTEGER NOT NULL DEFAULT 0;
DROP INDEX approvals_by_actor_time;
CREATE INDEX approvals_by_actor_time ON approvals (vendor, actor, created_at_ms, status, action, currency, amount_minor, escalated, merged);

-- A request merged into a pending one, or joined to an identical one, that carried an idempotency
-- key: a retry with the key finds the request it was
-- merged into or joined (and is not merged, or counted, a second time).
CREATE TABLE merged_requests (
    vendor          TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    approval_id     TEXT    NOT NULL,
    into_id         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    params_hash     TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (vendor, actor, idempotency_key)
);
