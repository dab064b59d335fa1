-- Coverage freshness per tile: the newest capture in the tile, when the harvester last fetched
-- the tile and when a fetch last changed anything. Old "newest capture" = area worth re-capturing;
-- old "last fetched" = area the nightly sync has not reached.
-- Runs against the default schema "mapillary".
SELECT s.tileset || '/' || s.z || '/' || s.x || '/' || s.y AS tile,  -- unique key for QGIS
       s.tileset,
       s.z,
       s.x,
       s.y,
       s.record_count,
       c.newest_capture,
       now() - c.newest_capture AS capture_age,
       s.last_fetched_at,
       s.last_changed_at
FROM mapillary.tile_state s
LEFT JOIN LATERAL (
    SELECT max(i.captured_at) AS newest_capture
    FROM mapillary.images i
    WHERE i.tile_z = s.z AND i.tile_x = s.x AND i.tile_y = s.y AND i.deleted_at IS NULL
) c ON true
ORDER BY c.newest_capture NULLS FIRST, s.tileset, s.z, s.x, s.y;
