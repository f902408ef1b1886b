-- Initial schema (PostgreSQL). Timestamps are timestamptz, ids are text.
CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    team_id       TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE oauth_identities (
    provider         TEXT NOT NULL,
    provider_user_id TEXT NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (provider, provider_user_id)
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_used  TIMESTAMPTZ
);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE hosts (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL UNIQUE,
    token           TEXT NOT NULL,
    status          TEXT NOT NULL,
    cpus            BIGINT NOT NULL DEFAULT 0,
    total_memory_mb BIGINT NOT NULL DEFAULT 0,
    free_memory_mb  BIGINT NOT NULL DEFAULT 0,
    running         BIGINT NOT NULL DEFAULT 0,
    last_seen       TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY,
    team_id        TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    host_id        TEXT NOT NULL REFERENCES hosts(id),
    status         TEXT NOT NULL,
    template       TEXT NOT NULL,
    vcpus          BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    timeout_sec    BIGINT NOT NULL,
    guest_ip       TEXT NOT NULL DEFAULT '',
    host_ip        TEXT NOT NULL DEFAULT '',
    created_at     TIMESTAMPTZ NOT NULL,
    started_at     TIMESTAMPTZ,
    last_active_at TIMESTAMPTZ,
    last_updated   TIMESTAMPTZ NOT NULL
);
CREATE INDEX sandboxes_team ON sandboxes (team_id, created_at);
CREATE INDEX sandboxes_status ON sandboxes (status);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    agent_name TEXT NOT NULL UNIQUE,
    host_id    TEXT NOT NULL REFERENCES hosts(id),
    vcpus      BIGINT NOT NULL,
    memory_mb  BIGINT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (team_id, name)
);
