-- Issue 16 item 10 / issue 11 item 3: the daily tile budget belongs to the token's app (and the
-- machine's IP), not to one harvest schema. Two schemas harvested with one token must share one
-- `limits.tiles_per_day` and one `limits.tiles_per_minute` pace, so both live in a schema of their
-- own that every harvest schema's migration creates (IF NOT EXISTS: the first schema migrated
-- creates it, the others find it; `Store::migrate` serialises migrations with an advisory lock).
-- Rows are keyed by a non-secret key derived from the token's app id (`budget::AppKey`); the
-- token itself is never stored. The per-schema `tile_budget` of 0001 is no longer written: its
-- count of the day of the upgrade seeds the shared row the first time that day is taken.

CREATE SCHEMA IF NOT EXISTS mly_harvest_global;
COMMENT ON SCHEMA mly_harvest_global IS 'mly-harvest state shared by every harvest schema of this database: the tile budget and pace per app';

CREATE TABLE IF NOT EXISTS mly_harvest_global.tile_budget (
    app_key text    NOT NULL,
    day     date    NOT NULL,
    used    integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (app_key, day)
);
COMMENT ON TABLE mly_harvest_global.tile_budget IS 'Tile requests granted per app and UTC day, shared by every process and schema';
COMMENT ON COLUMN mly_harvest_global.tile_budget.app_key IS 'Non-secret key derived from the access token''s app id (never the token)';
COMMENT ON COLUMN mly_harvest_global.tile_budget.day IS 'UTC day';
COMMENT ON COLUMN mly_harvest_global.tile_budget.used IS 'Tile requests granted that day';

CREATE TABLE IF NOT EXISTS mly_harvest_global.tile_pace (
    app_key   text        PRIMARY KEY,
    next_slot timestamptz NOT NULL
);
COMMENT ON TABLE mly_harvest_global.tile_pace IS 'limits.tiles_per_minute across processes: when the app''s next tile request may start';
COMMENT ON COLUMN mly_harvest_global.tile_pace.app_key IS 'Non-secret key derived from the access token''s app id (never the token)';
COMMENT ON COLUMN mly_harvest_global.tile_pace.next_slot IS 'Earliest start of the next tile request granted to any process';

COMMENT ON TABLE tile_budget IS 'Superseded by mly_harvest_global.tile_budget (migration 0007); no longer written';
