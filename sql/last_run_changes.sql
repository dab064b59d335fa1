-- Changes per tile in the most recent harvest run: records new, changed and deleted (tombstoned),
-- with the tile state and last error. Runs against the default schema "mapillary".
WITH last_run AS (
    SELECT id FROM mapillary.harvest_run ORDER BY id DESC LIMIT 1
)
SELECT t.tileset || '/' || t.z || '/' || t.x || '/' || t.y AS tile,  -- unique key for QGIS
       t.run_id,
       t.tileset,
       t.z,
       t.x,
       t.y,
       t.state,
       t.attempts,
       t.images,
       t.features,
       t.new,
       t.changed,
       t.deleted,
       t.last_error,
       t.updated_at
FROM mapillary.harvest_tile t
JOIN last_run r ON r.id = t.run_id
ORDER BY (t.new + t.changed + t.deleted) DESC, t.tileset, t.z, t.x, t.y;
