-- Per-team quotas: every admission (a sandbox created or resumed, a snapshot name reserved)
-- first bumps its team's counter; that write is the team's admission lock, under which the
-- team's usage is counted and the new row written.
ALTER TABLE teams ADD COLUMN admissions BIGINT NOT NULL DEFAULT 0;
