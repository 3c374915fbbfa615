-- A request for a guardian carries what all its tiny variations have in common, hashed
-- (`approvals::action::variation_key`): looking for the pending request a new one may be merged
-- into reads the actor's pending requests with that key (and those stored before this
-- migration, whose key is NULL), not all of them.
ALTER TABLE approvals ADD COLUMN variation_key TEXT;

-- A pending request is unique per actor, action and params, not per actor and params: a request
-- of another action with the same params (a ¥600 payment, and a banking credential read from the
-- same object) is a request of its own, not one to join. The key, a function of the action and
-- the params, leads the columns so that the same index serves the look for variations (no
-- second index for every settled or expired request to leave).
DROP INDEX approvals_one_pending;
CREATE UNIQUE INDEX approvals_one_pending ON approvals (vendor, actor, variation_key, action, params_hash) WHERE status = 'pending';
