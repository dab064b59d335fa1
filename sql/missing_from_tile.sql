-- Records kept although their tile no longer lists them: the tile answer did not show them, but the
-- Graph API confirmed by id that they still exist, so they were not deleted (a record is marked
-- deleted only when the API answers "not found" for it). Usually a tile served incomplete or a
-- transient 404 (the next night's read lists them again and clears the mark); a mark that lasts
-- for weeks is worth a look. Runs against the default schema "mapillary".
SELECT m.key AS id,  -- unique key for QGIS
       m.kind,
       m.record_id,
       m.tile_z,
       m.tile_x,
       m.tile_y,
       m.missing_from_tile_at,
       (extract(epoch FROM now() - m.missing_from_tile_at) / 86400)::integer AS days_missing,
       m.last_harvested_at,
       m.geom::geometry(Point, 4326) AS geom
FROM (
    SELECT 'image/' || i.id AS key, 'image' AS kind, i.id AS record_id, i.tile_z, i.tile_x, i.tile_y,
           i.missing_from_tile_at, i.last_harvested_at, i.geom
    FROM mapillary.images i
    WHERE i.missing_from_tile_at IS NOT NULL AND i.deleted_at IS NULL
    UNION ALL
    SELECT 'map_feature/' || f.id, 'map_feature/' || f.object_type, f.id, f.tile_z, f.tile_x, f.tile_y,
           f.missing_from_tile_at, f.last_harvested_at, f.geom
    FROM mapillary.map_features f
    WHERE f.missing_from_tile_at IS NOT NULL AND f.deleted_at IS NULL
) m
ORDER BY m.missing_from_tile_at, m.key;
