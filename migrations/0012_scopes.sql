-- Issue 13 (your own data): harvests of a creator's or an organization's images through the
-- paged /images search, resumable like tile runs. A scope run is a harvest_run row (no tiles)
-- with one harvest_scope row: where its listing stands (the cursor of the next page, or the next
-- cell of an organization's region), which records a complete pass has seen (for the deletion
-- check at its end), and which z14 cells its map-feature searches still have to cover.

CREATE TABLE harvest_scope (
    run_id             bigint PRIMARY KEY REFERENCES harvest_run (id) ON DELETE CASCADE,
    pass               text NOT NULL CHECK (pass IN ('complete', 'incremental')),
    start_at           timestamptz,
    phase              text NOT NULL DEFAULT 'listing'
                       CHECK (phase IN ('listing', 'features', 'checking', 'done')),
    after_cursor       text,
    next_cell          integer NOT NULL DEFAULT 0,
    pages              integer NOT NULL DEFAULT 0,
    listed             integer NOT NULL DEFAULT 0,
    kept               integer NOT NULL DEFAULT 0,
    newest_captured_at timestamptz,
    lease_owner        text,
    lease_expires_at   timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE harvest_scope IS 'Job state of a creator or organization harvest (one per harvest_run of a scope)';
COMMENT ON COLUMN harvest_scope.run_id IS 'The run (harvest_run.region_name names the scope)';
COMMENT ON COLUMN harvest_scope.pass IS 'complete (lists the whole scope, then checks by id what it no longer lists) or incremental (only captures since start_at)';
COMMENT ON COLUMN harvest_scope.start_at IS 'Earliest capture time the pass asks for (--since, or the newest capture of the previous pass)';
COMMENT ON COLUMN harvest_scope.phase IS 'listing (pages), features (map-feature searches per cell), checking (deletion check by id) or done';
COMMENT ON COLUMN harvest_scope.after_cursor IS 'Paging cursor of the next page (NULL: the first page)';
COMMENT ON COLUMN harvest_scope.next_cell IS 'Organization without creator: index of the next z14 cell of the region to search';
COMMENT ON COLUMN harvest_scope.pages IS 'Pages (or cells) committed in this pass';
COMMENT ON COLUMN harvest_scope.listed IS 'Records the pages listed';
COMMENT ON COLUMN harvest_scope.kept IS 'Listed records inside the region and the capture window (stored)';
COMMENT ON COLUMN harvest_scope.newest_captured_at IS 'Newest capture time listed (never later than the commit): where the next incremental pass starts';
COMMENT ON COLUMN harvest_scope.lease_owner IS 'Worker holding the scope, as host:pid:random';
COMMENT ON COLUMN harvest_scope.lease_expires_at IS 'When the lease runs out and another worker may take the scope';
COMMENT ON COLUMN harvest_scope.updated_at IS 'Last state change';

CREATE TABLE harvest_scope_seen (
    run_id bigint NOT NULL REFERENCES harvest_scope (run_id) ON DELETE CASCADE,
    kind   text   NOT NULL CHECK (kind IN ('image', 'feature')),
    id     bigint NOT NULL,
    PRIMARY KEY (run_id, kind, id)
);
COMMENT ON TABLE harvest_scope_seen IS 'Records a complete pass has listed so far (emptied when the pass is done)';
COMMENT ON COLUMN harvest_scope_seen.run_id IS 'The scope run';
COMMENT ON COLUMN harvest_scope_seen.kind IS 'image or feature';
COMMENT ON COLUMN harvest_scope_seen.id IS 'Mapillary id';

CREATE TABLE harvest_scope_cell (
    run_id bigint   NOT NULL REFERENCES harvest_scope (run_id) ON DELETE CASCADE,
    z      smallint NOT NULL,
    x      integer  NOT NULL,
    y      integer  NOT NULL,
    done   boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, z, x, y)
);
COMMENT ON TABLE harvest_scope_cell IS 'z14 cells around the listed images whose map features the pass searches (emptied when the pass is done)';
COMMENT ON COLUMN harvest_scope_cell.run_id IS 'The scope run';
COMMENT ON COLUMN harvest_scope_cell.z IS 'Cell zoom (14)';
COMMENT ON COLUMN harvest_scope_cell.x IS 'Cell x';
COMMENT ON COLUMN harvest_scope_cell.y IS 'Cell y';
COMMENT ON COLUMN harvest_scope_cell.done IS 'Its map features are written';

-- The deletion check of a complete pass selects the scope's live images by creator or
-- organization. Partial: rows harvested without enrichment (no username) cost the index nothing.
CREATE INDEX images_creator_username_idx ON images (creator_username) WHERE creator_username IS NOT NULL;
CREATE INDEX images_organization_idx ON images (organization_id) WHERE organization_id IS NOT NULL;
