-- Issue 12 item 4: one rate budget for every process of an app, on any number of hosts.
--
-- The Graph API meters searches and entity calls per app and minute (API notes §4.3), so the
-- limits.search_per_minute / entity_per_minute budget is the app's, like the tile budget of 0007.
-- Each (app, family) has one timeline: a process reserves a few consecutive slots of it at a time
-- (one statement, server clock) and spaces its calls over them; reservations never overlap, so
-- the processes together never exceed the limit, and a process that dies only leaves its last
-- few reserved slots unused. The tile pace of 0007 is the same timeline, family 'tiles'.

CREATE TABLE IF NOT EXISTS mly_harvest_global.rate_timeline (
    app_key   text        NOT NULL,
    family    text        NOT NULL CHECK (family IN ('tiles', 'search', 'entity')),
    next_slot timestamptz NOT NULL,
    PRIMARY KEY (app_key, family)
);
COMMENT ON TABLE mly_harvest_global.rate_timeline IS
    'Per app and API family: when the next call may start; processes reserve slots from it so that together they keep limits.*_per_minute';
COMMENT ON COLUMN mly_harvest_global.rate_timeline.app_key IS 'Non-secret key derived from the access token''s app id (never the token)';
COMMENT ON COLUMN mly_harvest_global.rate_timeline.family IS 'API family: tiles, search or entity';
COMMENT ON COLUMN mly_harvest_global.rate_timeline.next_slot IS 'Start of the first slot not yet reserved by any process (server clock)';

-- A pace in progress carries over (once; a later schema's migration finds the row there).
INSERT INTO mly_harvest_global.rate_timeline (app_key, family, next_slot)
SELECT app_key, 'tiles', next_slot FROM mly_harvest_global.tile_pace
ON CONFLICT (app_key, family) DO NOTHING;
COMMENT ON TABLE mly_harvest_global.tile_pace IS 'Superseded by mly_harvest_global.rate_timeline (family tiles, migration 0010); no longer written';

-- The processes working on the schema's runs, for `mly-harvest status`. A row is written when a
-- process starts a run, its heartbeat renewed with its tile leases, and removed at a clean end;
-- a process that dies leaves a row whose live_until passes (not live), removed by the next start.
CREATE TABLE IF NOT EXISTS harvest_worker (
    owner        text        PRIMARY KEY,
    run_id       bigint      NOT NULL REFERENCES harvest_run (id) ON DELETE CASCADE,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    live_until   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS harvest_worker_run_idx ON harvest_worker (run_id);
COMMENT ON TABLE harvest_worker IS 'Processes working on a run (sync), with their heartbeat';
COMMENT ON COLUMN harvest_worker.owner IS 'Lease owner id of the process (host:pid:random), as in harvest_tile.lease_owner';
COMMENT ON COLUMN harvest_worker.run_id IS 'The run the process works on';
COMMENT ON COLUMN harvest_worker.host IS 'Host name of the machine the process runs on';
COMMENT ON COLUMN harvest_worker.pid IS 'Process id on that host';
COMMENT ON COLUMN harvest_worker.started_at IS 'When the process started on the run';
COMMENT ON COLUMN harvest_worker.heartbeat_at IS 'Last heartbeat (written with each lease renewal)';
COMMENT ON COLUMN harvest_worker.live_until IS 'Heartbeat plus the process''s lease: after this the process counts as gone';
