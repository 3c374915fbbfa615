-- A request for a guardian carries what all its tiny variations have in common, hashed
-- (`approvals::action::variation_key`): looking for the pending request a new one may be merged
-- into reads the actor's pending requests with that key (and those stored before this
-- migration, whose key is NULL), not all of them.
ALTER TABLE approvals ADD COLUMN variation_key TEXT;
CREATE INDEX approvals_pending_variation ON approvals (vendor, actor, variation_key, created_at_ms) WHERE status = 'pending';
