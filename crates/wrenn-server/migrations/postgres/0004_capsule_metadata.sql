-- Capsule labels: the key/value metadata a sandbox was created with through /v1/capsules,
-- one JSON object per sandbox. Written while the sandbox's row is `creating`, before the
-- agent is called; gone with the sandbox's row.
CREATE TABLE sandbox_metadata (
    sandbox_id TEXT PRIMARY KEY REFERENCES sandboxes(id) ON DELETE CASCADE,
    metadata   TEXT NOT NULL
);
