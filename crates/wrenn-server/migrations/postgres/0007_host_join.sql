-- Hosts that join with a one-time token (`wrenn hosts add`, `wrenn hosts rotate`). Only the
-- SHA-256 of a token's secret is kept; a token joins once (used_at), before expires_at.
-- host_id names the host whose credentials a rotation replaces (NULL: a new host).
CREATE TABLE host_join_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    host_id    TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
-- The SHA-256 (hex, of the DER) of the certificate a joined host was last issued.
ALTER TABLE hosts ADD COLUMN cert_sha256 TEXT;
