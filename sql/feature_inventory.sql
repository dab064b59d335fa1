-- Map feature inventory: live features per object type and value, with when they were seen.
-- Runs against the default schema "mapillary".
SELECT concat_ws(':', f.object_type, f.object_value) AS class,  -- unique key for QGIS
       f.object_type,
       f.object_value,
       count(*)              AS features,
       min(f.first_seen_at)  AS first_seen_at,
       max(f.last_seen_at)   AS last_seen_at
FROM mapillary.map_features f
WHERE f.deleted_at IS NULL
GROUP BY f.object_type, f.object_value
ORDER BY features DESC, f.object_type, f.object_value;
