-- Tiny variations of a request still pending are merged into it: `merged` counts them. They
-- count towards the actor's rate limit and history, so the covering index carries the column.
ALTER TABLE approvals ADD COLUMN merged INTEGER NOT NULL DEFAULT 0;
DROP INDEX approvals_by_actor_time;
CREATE INDEX approvals_by_actor_time ON approvals (vendor, actor, created_at_ms, status, action, currency, amount_minor, escalated, merged);
