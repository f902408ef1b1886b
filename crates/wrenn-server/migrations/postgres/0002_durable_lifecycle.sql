-- Durable lifecycle (PostgreSQL): the operation a sandbox is in (its intent), written before
-- the agent is called and cleared with the result; a version bumped by every write, for
-- compare-and-set updates; snapshot names reserved before the agent is called; leases for
-- singleton work shared by several control planes.
ALTER TABLE sandboxes ADD COLUMN op TEXT;
ALTER TABLE sandboxes ADD COLUMN op_owner TEXT;
ALTER TABLE sandboxes ADD COLUMN op_started_at TIMESTAMPTZ;
ALTER TABLE sandboxes ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
-- A create that was under way when an older version stopped: the reconciler settles it.
UPDATE sandboxes SET op = 'creating' WHERE status = 'pending';
CREATE INDEX sandboxes_host ON sandboxes (host_id);

CREATE TABLE snapshot_reservations (
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    agent_name TEXT NOT NULL UNIQUE,
    sandbox_id TEXT NOT NULL,
    host_id    TEXT NOT NULL REFERENCES hosts(id),
    overwrite  BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, name)
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
