-- Coverage by z14 tile: live images and sequences per tile, with the capture span.
-- For analysts and QGIS users (DB Manager > SQL window > Load as new layer: key "id", geometry "geom").
-- Runs against the default schema "mapillary"; replace the prefix for another schema.
SELECT (i.tile_z::bigint << 58) | (i.tile_x::bigint << 29) | i.tile_y::bigint AS id,  -- unique key for QGIS
       i.tile_z,
       i.tile_x,
       i.tile_y,
       count(*)                                  AS images,
       count(DISTINCT i.sequence_id)             AS sequences,
       count(*) FILTER (WHERE i.is_pano)         AS panoramas,
       min(i.captured_at)                        AS first_captured_at,
       max(i.captured_at)                        AS last_captured_at,
       ST_Transform(ST_TileEnvelope(i.tile_z, i.tile_x, i.tile_y), 4326)::geometry(Polygon, 4326) AS geom
FROM mapillary.images i
WHERE i.deleted_at IS NULL AND i.tile_z IS NOT NULL
GROUP BY i.tile_z, i.tile_x, i.tile_y
ORDER BY images DESC;
