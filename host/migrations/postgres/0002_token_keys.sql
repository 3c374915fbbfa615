-- Ed25519 keys that sign capability tokens. `kid` is the RFC 7638 thumbprint of the public key;
-- `secret_hex` the 32-byte seed. A key signs while `retired_at_ms` is NULL; once retired it stays
-- verifiable (published in the JWKS) until the tokens it signed have expired.
CREATE TABLE token_keys (
    kid             TEXT    PRIMARY KEY,
    secret_hex      TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    retired_at_ms   BIGINT
);

-- At most one signing key, whatever the replicas do: every unretired row has the same indexed
-- value, so a second one is a unique violation.
CREATE UNIQUE INDEX token_keys_one_active ON token_keys ((retired_at_ms IS NULL)) WHERE retired_at_ms IS NULL;
