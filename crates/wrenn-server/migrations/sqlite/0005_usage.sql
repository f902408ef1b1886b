-- Usage metering and team stats. The control plane's meter (app/usage.rs) credits each
-- running sandbox's time to its team's day (UTC) as vCPU-milliseconds and MB-milliseconds;
-- usage_meters holds how far each running sandbox has been credited, so a restart neither
-- loses nor repeats usage; team_samples holds, per team and minute, the most it held at once
-- (kept 31 days; stats' peaks and series).
CREATE TABLE usage_daily (
    team_id   TEXT NOT NULL,
    day       TEXT NOT NULL,
    cpu_ms    INTEGER NOT NULL DEFAULT 0,
    ram_mb_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, day)
);
CREATE TABLE usage_meters (
    sandbox_id    TEXT PRIMARY KEY,
    metered_to_ms INTEGER NOT NULL
);
CREATE TABLE team_samples (
    team_id   TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    running   INTEGER NOT NULL,
    vcpus     INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    PRIMARY KEY (team_id, minute_ms)
);
CREATE INDEX team_samples_minute ON team_samples (minute_ms);
