-- An actor's history (counts and spend over the last hour and day) and its rate-limit count
-- read only this index: no lookup of each request's row.
DROP INDEX approvals_by_actor_time;
CREATE INDEX approvals_by_actor_time ON approvals (vendor, actor, created_at_ms, status, action, currency, amount_minor, escalated);
