-- What the HTTP API needs beside the engine: credentials, per-call plugin statistics, webhooks.

-- Vendors' API keys, stored as SHA-256 of the key (the key itself is shown once).
CREATE TABLE vendor_api_keys (
    key_sha256      TEXT    PRIMARY KEY,
    vendor          TEXT   NOT NULL REFERENCES vendors (id),
    created_at_ms   INTEGER NOT NULL,
    revoked_at_ms   INTEGER
);
CREATE INDEX vendor_api_keys_by_vendor ON vendor_api_keys (vendor);

-- Agents' bearer tokens, one actor each, stored as SHA-256 of the token.
CREATE TABLE agent_tokens (
    token_sha256    TEXT    PRIMARY KEY,
    vendor          TEXT   NOT NULL,
    actor           TEXT   NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    revoked_at_ms   INTEGER,
    FOREIGN KEY (vendor, actor) REFERENCES actors (vendor, id)
);
CREATE INDEX agent_tokens_by_actor ON agent_tokens (vendor, actor);

-- One row per plugin call on a request: what per-version statistics, shadow agreement and the
-- platform's plugin health are computed from.
CREATE TABLE plugin_calls (
    approval_id     TEXT   NOT NULL,
    vendor          TEXT   NOT NULL,
    plugin          TEXT   NOT NULL,
    version         INTEGER NOT NULL,
    shadow          INTEGER NOT NULL,
    decision        TEXT,
    error_code      TEXT,
    wall_time_us    INTEGER NOT NULL,
    fuel_used       INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (approval_id, plugin, version)
);
CREATE INDEX plugin_calls_by_version ON plugin_calls (vendor, plugin, version, at_ms);
CREATE INDEX plugin_calls_by_time ON plugin_calls (at_ms);

-- A vendor's webhook for its guardian app: where events go, and the secret deliveries are
-- signed with (Standard Webhooks, whsec_ form).
CREATE TABLE vendor_webhooks (
    vendor          TEXT    PRIMARY KEY REFERENCES vendors (id),
    url             TEXT   NOT NULL,
    secret          TEXT   NOT NULL,
    created_at_ms   INTEGER NOT NULL
);

-- Every delivery of an event to a webhook, with its attempts: the delivery log and the outbox.
CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    vendor          TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    url             TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at_ms   INTEGER NOT NULL,
    delivered_at_ms INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_vendor ON webhook_deliveries (vendor, created_at_ms);
