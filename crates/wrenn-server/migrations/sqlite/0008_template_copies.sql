-- Copies of snapshot templates on hosts other than the one that made them (app/template_copy.rs):
-- one row per host that holds a published copy of a template's files, by the template's agent
-- name (the same on every host). A row whose template is gone names nothing (queries join
-- templates), and the reconciler removes such a copy from its host like any unnamed template.
CREATE TABLE template_copies (
    agent_name TEXT NOT NULL,
    host_id    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (agent_name, host_id)
);
CREATE INDEX template_copies_host ON template_copies (host_id);
