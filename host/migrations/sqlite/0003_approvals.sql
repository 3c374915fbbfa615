-- Vendors, their actors (devices) and guardians, versioned policy templates and overrides, and
-- the approval records with their lifecycle.

CREATE TABLE vendors (
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL
);

-- Every version of a vendor's policy template, newest highest; the newest is in force.
CREATE TABLE policy_templates (
    vendor          TEXT    NOT NULL REFERENCES vendors (id),
    version         INTEGER NOT NULL,
    document        TEXT    NOT NULL,
    changed_by      TEXT    NOT NULL,
    changed_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (vendor, version)
);

CREATE TABLE actors (
    vendor          TEXT    NOT NULL REFERENCES vendors (id),
    id              TEXT    NOT NULL,
    -- JSON array of device context tags, e.g. ["family-context"].
    context_tags    TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (vendor, id)
);

CREATE TABLE actor_guardians (
    vendor          TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    guardian        TEXT    NOT NULL,
    PRIMARY KEY (vendor, actor, guardian),
    FOREIGN KEY (vendor, actor) REFERENCES actors (vendor, id)
);
CREATE INDEX actor_guardians_by_guardian ON actor_guardians (guardian);

-- Every version of a guardian's overrides for one actor, newest highest.
CREATE TABLE actor_overrides (
    vendor          TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    document        TEXT    NOT NULL,
    changed_by      TEXT    NOT NULL,
    changed_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (vendor, actor, version),
    FOREIGN KEY (vendor, actor) REFERENCES actors (vendor, id)
);

-- One row per request: the decision record.
CREATE TABLE approvals (
    id                  TEXT    PRIMARY KEY,
    vendor              TEXT    NOT NULL,
    actor               TEXT    NOT NULL,
    idempotency_key     TEXT,
    -- JSON {"surface": ..., "tool": ...}: where the request came from.
    provenance          TEXT    NOT NULL,
    action              TEXT    NOT NULL,
    params              TEXT    NOT NULL,
    params_hash         TEXT    NOT NULL,
    amount_minor        INTEGER,
    currency            TEXT,
    recipient           TEXT,
    status              TEXT    NOT NULL CHECK (status IN
                            ('allowed', 'denied', 'pending', 'approved', 'revised', 'timed_out', 'rate_limited')),
    route               TEXT    NOT NULL CHECK (route IN ('allow', 'human_review', 'revise', 'stop')),
    -- 1 when the request went to a human: what the per-actor rate limit counts.
    escalated           INTEGER NOT NULL,
    rule_fired          TEXT,
    reason              TEXT    NOT NULL,
    -- JSON: every rule that fired and every plugin's classification, shadow ones included.
    rules               TEXT    NOT NULL,
    plugins             TEXT    NOT NULL,
    counter_offer       TEXT,
    policy_version      INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    expires_at_ms       INTEGER,
    decided_at_ms       INTEGER,
    decision_method     TEXT    CHECK (decision_method IN ('policy', 'human', 'timeout')),
    decider             TEXT,
    decision_reason     TEXT,
    revised_params      TEXT,
    revised_params_hash TEXT,
    token_id            TEXT,
    token               TEXT,
    token_expires_at_ms INTEGER,
    retry_after_ms      INTEGER
);
-- A retried request with the same key finds its first outcome.
CREATE UNIQUE INDEX approvals_idempotency ON approvals (vendor, actor, idempotency_key);
-- A request identical to one still pending joins it: at most one pending per (actor, params).
CREATE UNIQUE INDEX approvals_one_pending ON approvals (vendor, actor, params_hash) WHERE status = 'pending';
CREATE INDEX approvals_by_actor_time ON approvals (vendor, actor, created_at_ms);
CREATE INDEX approvals_pending_expiry ON approvals (expires_at_ms) WHERE status = 'pending';

-- One row per actor, locked first by every transaction that counts the actor's rate limit, so
-- that concurrent requests (across replicas too) count one after another.
CREATE TABLE actor_rate_locks (
    vendor          TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    requests        INTEGER NOT NULL,
    PRIMARY KEY (vendor, actor)
);

-- Actors whose request volume jumped far above their own baseline.
CREATE TABLE actor_flags (
    id              TEXT    PRIMARY KEY,
    vendor          TEXT    NOT NULL,
    actor           TEXT    NOT NULL,
    raised_at_ms    INTEGER NOT NULL,
    last_hour       INTEGER NOT NULL,
    baseline_per_hour INTEGER NOT NULL
);
CREATE INDEX actor_flags_by_actor ON actor_flags (vendor, actor, raised_at_ms);
