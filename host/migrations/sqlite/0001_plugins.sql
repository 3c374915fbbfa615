-- Plugin components, content-addressed, and their per-plugin immutable versions.
CREATE TABLE plugin_blobs (
    sha256      TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL
);

CREATE TABLE plugin_versions (
    vendor          TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    sha256          TEXT    NOT NULL REFERENCES plugin_blobs (sha256),
    size_bytes      INTEGER NOT NULL,
    info_json       TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('inactive', 'shadow', 'active')),
    signed          INTEGER NOT NULL,
    uploaded_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (vendor, name, version),
    UNIQUE (vendor, name, sha256)
);

-- At most one active version per plugin, whatever the writers do.
CREATE UNIQUE INDEX plugin_versions_one_active ON plugin_versions (vendor, name) WHERE state = 'active';

-- Every activation, newest last: what a rollback goes back to.
CREATE TABLE plugin_activations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL
);

-- A vendor's Ed25519 key for signed uploads (32 raw bytes, hex).
CREATE TABLE plugin_signing_keys (
    vendor      TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL
);
