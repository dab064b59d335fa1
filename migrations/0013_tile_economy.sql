-- Issue 12 (tile economy): a run fetches only the z14 tiles that can have changed. Tiles it
-- does not fetch are still job rows, in state 'skipped' with the reason, so that status and the
-- run report show them; a Graph probe that found a tile empty is remembered in tile_state.

ALTER TABLE harvest_tile DROP CONSTRAINT IF EXISTS harvest_tile_state_check;
ALTER TABLE harvest_tile ADD CONSTRAINT harvest_tile_state_check
    CHECK (state IN ('pending', 'leased', 'done', 'failed', 'skipped'));
ALTER TABLE harvest_tile ADD COLUMN skip_reason text;
COMMENT ON COLUMN harvest_tile.state IS 'pending, leased (a worker holds it), done, failed, or skipped (not fetched this run: skip_reason says why)';
COMMENT ON COLUMN harvest_tile.skip_reason IS 'Why a skipped tile was not fetched: empty (a Graph search found no image in it) or unchanged (the low-zoom sequence tile shows no change and its rolling refresh is not due)';

ALTER TABLE tile_state ADD COLUMN probed_at timestamptz;
COMMENT ON COLUMN tile_state.probed_at IS 'When a Graph search last found the tile empty (a tile never fetched because it had no image)';

-- A run exists from its start (status and metrics name it, its workers are listed) and is
-- planned once, by one process, under an advisory lock; a run whose planning was interrupted
-- is planned again by the next process (runs of earlier versions were planned when created).
ALTER TABLE harvest_run ADD COLUMN planned boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN harvest_run.planned IS 'Whether the run''s tiles are planned (false while its first process plans it)';
