-- Issue 11 (survive the live service): deletion needs proof, and an IP block is remembered.
--
-- A record that vanished from its tile is tombstoned only when the Graph API confirms it is gone;
-- a confirmed-present record missing from its tile is kept and stamped here.
ALTER TABLE images ADD COLUMN IF NOT EXISTS missing_from_tile_at timestamptz;
ALTER TABLE map_features ADD COLUMN IF NOT EXISTS missing_from_tile_at timestamptz;
COMMENT ON COLUMN images.missing_from_tile_at IS
    'Since when the image is missing from its tile although the Graph API still has it (kept, not deleted); NULL when seen';
COMMENT ON COLUMN map_features.missing_from_tile_at IS
    'Since when the feature is missing from its tile although the Graph API still has it (kept, not deleted); NULL when seen';

-- A tile that held live records and reads empty/403/404 is read again later in the run before
-- its records are checked by id: how often it read so, and when it may be claimed again.
ALTER TABLE harvest_tile ADD COLUMN IF NOT EXISTS empty_reads smallint NOT NULL DEFAULT 0;
ALTER TABLE harvest_tile ADD COLUMN IF NOT EXISTS not_before timestamptz;
COMMENT ON COLUMN harvest_tile.empty_reads IS
    'Times the tile read empty (or 403/404) in this run while the database held live records for it';
COMMENT ON COLUMN harvest_tile.not_before IS 'A pending tile is not claimed before this time (re-read later in the run)';

-- The tile server's per-IP block (302 to the login page) outlives runs and schemas: every
-- harvest schema of the database, on this machine, sees it. Hence a shared schema, keyed by the
-- tile server and the machine (the block is per IP, and machines sharing a database may differ).
CREATE SCHEMA IF NOT EXISTS mly_harvest_global;
CREATE TABLE IF NOT EXISTS mly_harvest_global.tile_block (
    tile_server  text        NOT NULL,
    client_host  text        NOT NULL,
    blocked_at   timestamptz NOT NULL,
    resume_after timestamptz NOT NULL,
    detail       text        NOT NULL,
    schema_name  text        NOT NULL,
    run_id       bigint,
    PRIMARY KEY (tile_server, client_host)
);
COMMENT ON TABLE mly_harvest_global.tile_block IS
    'The tile server blocked this machine (per-IP block): no tile request before resume_after';
COMMENT ON COLUMN mly_harvest_global.tile_block.tile_server IS 'Origin of the tiles URL (scheme://host:port)';
COMMENT ON COLUMN mly_harvest_global.tile_block.client_host IS 'Host name of the machine that was blocked';
COMMENT ON COLUMN mly_harvest_global.tile_block.blocked_at IS 'When the block answer arrived';
COMMENT ON COLUMN mly_harvest_global.tile_block.resume_after IS 'When sync may ask the tile server again';
COMMENT ON COLUMN mly_harvest_global.tile_block.detail IS 'What the answer was (status, redirect host or content type; never the URL)';
COMMENT ON COLUMN mly_harvest_global.tile_block.schema_name IS 'Harvest schema of the run that met the block';
COMMENT ON COLUMN mly_harvest_global.tile_block.run_id IS 'Run (in schema_name) that met the block';
