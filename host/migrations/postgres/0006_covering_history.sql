-- An actor's history (counts and spend over the last hour and day) and its rate-limit count
-- can be answered from this index alone.
DROP INDEX approvals_by_actor_time;
CREATE INDEX approvals_by_actor_time ON approvals (vendor, actor, created_at_ms) INCLUDE (status, action, currency, amount_minor, escalated);
