-- Host administration: a draining host takes no new sandboxes (its running ones stay);
-- `wrenn hosts drain | undrain` set it. Health (status, capacity, last_seen) is written by
-- every control plane's heartbeat.
ALTER TABLE hosts ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
