-- Initial schema (SQLite). Timestamps are RFC 3339 text, ids are text.
CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    team_id       TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL
);

CREATE TABLE oauth_identities (
    provider         TEXT NOT NULL,
    provider_user_id TEXT NOT NULL,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (provider, provider_user_id)
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    last_used  TEXT
);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE hosts (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL UNIQUE,
    token           TEXT NOT NULL,
    status          TEXT NOT NULL,
    cpus            INTEGER NOT NULL DEFAULT 0,
    total_memory_mb INTEGER NOT NULL DEFAULT 0,
    free_memory_mb  INTEGER NOT NULL DEFAULT 0,
    running         INTEGER NOT NULL DEFAULT 0,
    last_seen       TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY,
    team_id        TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    host_id        TEXT NOT NULL REFERENCES hosts(id),
    status         TEXT NOT NULL,
    template       TEXT NOT NULL,
    vcpus          INTEGER NOT NULL,
    memory_mb      INTEGER NOT NULL,
    timeout_sec    INTEGER NOT NULL,
    guest_ip       TEXT NOT NULL DEFAULT '',
    host_ip        TEXT NOT NULL DEFAULT '',
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    last_active_at TEXT,
    last_updated   TEXT NOT NULL
);
CREATE INDEX sandboxes_team ON sandboxes (team_id, created_at);
CREATE INDEX sandboxes_status ON sandboxes (status);

CREATE TABLE templates (
    id         TEXT PRIMARY KEY,
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    agent_name TEXT NOT NULL UNIQUE,
    host_id    TEXT NOT NULL REFERENCES hosts(id),
    vcpus      INTEGER NOT NULL,
    memory_mb  INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (team_id, name)
);
