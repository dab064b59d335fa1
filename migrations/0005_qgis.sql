-- Issue 15 (desktop): what QGIS users open. `qgis_projects` is the table QGIS itself reads and
-- writes projects in (same columns as QGIS creates), so `mly-harvest qgis-project` can store a
-- styled project there; `coverage_freshness` is the per-tile layer of that project.

CREATE TABLE IF NOT EXISTS qgis_projects (
    name     text PRIMARY KEY,
    metadata jsonb,
    content  bytea
);
COMMENT ON TABLE qgis_projects IS 'QGIS projects stored in the database (QGIS: Project > Open From > PostgreSQL)';
COMMENT ON COLUMN qgis_projects.name IS 'Project name as QGIS lists it';
COMMENT ON COLUMN qgis_projects.metadata IS 'Last-modified time and user, as QGIS writes it';
COMMENT ON COLUMN qgis_projects.content IS 'The project as a .qgz archive';

-- One row per z14 tile of the coverage tileset(s): the newest live capture in it and when the
-- harvester last fetched it. The first column is a unique key (QGIS needs one for a view).
CREATE VIEW coverage_freshness AS
SELECT (s.z::bigint << 58) | (s.x::bigint << 29) | s.y::bigint AS id,
       s.z,
       s.x,
       s.y,
       s.record_count AS images,
       c.newest_capture,
       (extract(epoch FROM now() - c.newest_capture) / 86400)::integer AS capture_age_days,
       s.last_fetched_at,
       s.last_changed_at,
       ST_Transform(ST_TileEnvelope(s.z, s.x, s.y), 4326)::geometry(Polygon, 4326) AS geom
FROM (
    SELECT DISTINCT ON (z, x, y) z, x, y, record_count, last_fetched_at, last_changed_at
    FROM tile_state
    WHERE tileset IN ('mly1_public', 'mly1_computed_public')
    ORDER BY z, x, y, last_fetched_at DESC NULLS LAST
) s
LEFT JOIN LATERAL (
    SELECT max(i.captured_at) AS newest_capture
    FROM images i
    WHERE i.tile_z = s.z AND i.tile_x = s.x AND i.tile_y = s.y AND i.deleted_at IS NULL
      AND i.captured_at > '1970-01-02'
) c ON true;
COMMENT ON VIEW coverage_freshness IS 'Coverage freshness per z14 tile: newest live capture and last fetch';
COMMENT ON COLUMN coverage_freshness.id IS 'Unique tile key: z << 58 | x << 29 | y';
COMMENT ON COLUMN coverage_freshness.images IS 'Images the tile held at its last change';
COMMENT ON COLUMN coverage_freshness.newest_capture IS 'Newest capture time among the live images of the tile (unknown capture times ignored)';
COMMENT ON COLUMN coverage_freshness.capture_age_days IS 'Days since the newest capture; NULL when no dated image';
COMMENT ON COLUMN coverage_freshness.geom IS 'The tile square, WGS 84';
