-- Issue 17 (load path): a re-read that changes nothing writes nothing, so a row's harvest
-- timestamps say when the row last changed; when its tile was last read is in tile_state.
COMMENT ON COLUMN images.last_harvested_at IS 'When the harvester last wrote the row (new, changed, moved or revived); the last read of its tile is tile_state.last_fetched_at';
COMMENT ON COLUMN map_features.last_harvested_at IS 'When the harvester last wrote the row (new, changed, moved or revived); the last read of its tile is tile_state.last_fetched_at';
COMMENT ON COLUMN sequences.updated_at IS 'When the row last changed (a rebuild that comes out equal does not rewrite it)';
