-- When each image's detections were last fetched. Detections switched on after images were
-- harvested must still reach those images: the harvester fetches them for every live image of a
-- tile where this is NULL (and does not ask for "not modified" on such a tile).
ALTER TABLE images ADD COLUMN detections_at timestamptz;
COMMENT ON COLUMN images.detections_at IS 'when this image''s detections were last fetched (NULL: never)';
-- Images that already have detections got them when they were enriched.
UPDATE images SET detections_at = enriched_at WHERE id IN (SELECT image_id FROM detections);

-- What this schema's migrations create (relations, columns, keys, indexes), cached by the
-- harvester per set of migrations so that checking the schema for drift costs one catalog query.
CREATE TABLE schema_manifest (
    digest text NOT NULL,
    item   text NOT NULL,
    detail text NOT NULL,
    PRIMARY KEY (digest, item)
);
COMMENT ON TABLE schema_manifest IS 'What the migrations create, per migration set (digest): the reference for drift checks';
COMMENT ON COLUMN schema_manifest.digest IS 'Digest of the migrations that produced this manifest';
COMMENT ON COLUMN schema_manifest.item IS 'A relation, column, key or index';
COMMENT ON COLUMN schema_manifest.detail IS 'Its kind or type';
