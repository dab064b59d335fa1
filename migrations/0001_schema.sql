-- mly-harvest schema. Names are unqualified on purpose: the harvester sets search_path to
-- "<configured schema>", public before migrating, so every object (and sqlx's own
-- _sqlx_migrations table) lands in the configured schema while PostGIS types resolve from public.

CREATE TABLE images (
    id                     bigint PRIMARY KEY,
    sequence_id            text,
    captured_at            timestamptz,
    compass_angle          double precision,
    computed_compass_angle double precision,
    is_pano                boolean,
    creator_id             bigint,
    creator_username       text,
    organization_id        bigint,
    camera_type            text,
    make                   text,
    model                  text,
    width                  integer,
    height                 integer,
    altitude               double precision,
    computed_altitude      double precision,
    quality_score          double precision,
    geom                   geometry(Point, 4326) NOT NULL,
    computed_geom          geometry(Point, 4326),
    tile_z                 smallint,
    tile_x                 integer,
    tile_y                 integer,
    tile_hash              bigint,
    first_harvested_at     timestamptz NOT NULL DEFAULT now(),
    last_harvested_at      timestamptz NOT NULL DEFAULT now(),
    enriched_at            timestamptz,
    deleted_at             timestamptz
);
CREATE INDEX images_geom_gix ON images USING gist (geom);
CREATE INDEX images_computed_geom_gix ON images USING gist (computed_geom);
CREATE INDEX images_tile_idx ON images (tile_z, tile_x, tile_y);
CREATE INDEX images_sequence_idx ON images (sequence_id);
CREATE INDEX images_live_idx ON images (tile_z, tile_x, tile_y) WHERE deleted_at IS NULL;

COMMENT ON TABLE images IS 'Mapillary images (one row per image id); deleted images are kept with deleted_at set';
COMMENT ON COLUMN images.id IS 'Mapillary image id';
COMMENT ON COLUMN images.sequence_id IS 'Mapillary sequence id (sequence key) the image belongs to';
COMMENT ON COLUMN images.captured_at IS 'Capture time of the image';
COMMENT ON COLUMN images.compass_angle IS 'Original compass angle in degrees, from the camera';
COMMENT ON COLUMN images.computed_compass_angle IS 'Compass angle in degrees after structure-from-motion';
COMMENT ON COLUMN images.is_pano IS 'Whether the image is a 360 degree panorama';
COMMENT ON COLUMN images.creator_id IS 'Mapillary user id of the uploader';
COMMENT ON COLUMN images.creator_username IS 'Mapillary username of the uploader';
COMMENT ON COLUMN images.organization_id IS 'Mapillary organization id, when uploaded for an organization';
COMMENT ON COLUMN images.camera_type IS 'Camera projection: perspective, fisheye, equirectangular, spherical';
COMMENT ON COLUMN images.make IS 'Camera make from EXIF';
COMMENT ON COLUMN images.model IS 'Camera model from EXIF';
COMMENT ON COLUMN images.width IS 'Image width in pixels';
COMMENT ON COLUMN images.height IS 'Image height in pixels';
COMMENT ON COLUMN images.altitude IS 'Original altitude in metres';
COMMENT ON COLUMN images.computed_altitude IS 'Altitude in metres after structure-from-motion';
COMMENT ON COLUMN images.quality_score IS 'Mapillary quality score (0..1)';
COMMENT ON COLUMN images.geom IS 'Original (GPS) position, WGS 84';
COMMENT ON COLUMN images.computed_geom IS 'Position after structure-from-motion, WGS 84; NULL when not computed';
COMMENT ON COLUMN images.tile_z IS 'Zoom of the tile the image was last seen in (14)';
COMMENT ON COLUMN images.tile_x IS 'x of the z14 tile the image was last seen in';
COMMENT ON COLUMN images.tile_y IS 'y of the z14 tile the image was last seen in';
COMMENT ON COLUMN images.tile_hash IS 'Fingerprint of the vector-tile properties, to detect changes cheaply';
COMMENT ON COLUMN images.first_harvested_at IS 'When the harvester first stored the image';
COMMENT ON COLUMN images.last_harvested_at IS 'When the harvester last saw the image in a tile';
COMMENT ON COLUMN images.enriched_at IS 'When the Graph API details were last fetched';
COMMENT ON COLUMN images.deleted_at IS 'When the image vanished from its tile; NULL while live';

CREATE TABLE sequences (
    id                text PRIMARY KEY,
    geom              geometry(MultiLineString, 4326),
    image_count       integer NOT NULL DEFAULT 0,
    first_captured_at timestamptz,
    last_captured_at  timestamptz,
    is_pano           boolean,
    creator_id        bigint,
    organization_id   bigint,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sequences_geom_gix ON sequences USING gist (geom);

COMMENT ON TABLE sequences IS 'Mapillary sequences, geometry rebuilt from their live images in capture order';
COMMENT ON COLUMN sequences.id IS 'Mapillary sequence id (sequence key)';
COMMENT ON COLUMN sequences.geom IS 'Line through the live images in capture order, WGS 84; a new part wherever consecutive images are more than 150 m apart; NULL with fewer than two images';
COMMENT ON COLUMN sequences.image_count IS 'Number of live images stored for the sequence';
COMMENT ON COLUMN sequences.first_captured_at IS 'Earliest capture time among its live images';
COMMENT ON COLUMN sequences.last_captured_at IS 'Latest capture time among its live images';
COMMENT ON COLUMN sequences.is_pano IS 'Whether the sequence consists of panoramas';
COMMENT ON COLUMN sequences.creator_id IS 'Mapillary user id of the uploader';
COMMENT ON COLUMN sequences.organization_id IS 'Mapillary organization id, if any';
COMMENT ON COLUMN sequences.updated_at IS 'When the row was last rebuilt';

CREATE TABLE map_features (
    id                 bigint PRIMARY KEY,
    object_value       text,
    object_type        text,
    first_seen_at      timestamptz,
    last_seen_at       timestamptz,
    aligned_direction  double precision,
    geom               geometry(Point, 4326) NOT NULL,
    tile_z             smallint,
    tile_x             integer,
    tile_y             integer,
    tile_hash          bigint,
    first_harvested_at timestamptz NOT NULL DEFAULT now(),
    last_harvested_at  timestamptz NOT NULL DEFAULT now(),
    enriched_at        timestamptz,
    deleted_at         timestamptz
);
CREATE INDEX map_features_geom_gix ON map_features USING gist (geom);
CREATE INDEX map_features_tile_idx ON map_features (tile_z, tile_x, tile_y, object_type);
CREATE INDEX map_features_value_idx ON map_features (object_value);

COMMENT ON TABLE map_features IS 'Mapillary map features (points and traffic signs); deleted ones are kept with deleted_at set';
COMMENT ON COLUMN map_features.id IS 'Mapillary map feature id';
COMMENT ON COLUMN map_features.object_value IS 'Feature class, e.g. object--fire-hydrant or regulatory--stop--g1';
COMMENT ON COLUMN map_features.object_type IS 'point or traffic_sign (from the tileset it was found in)';
COMMENT ON COLUMN map_features.first_seen_at IS 'First capture time in which the feature is seen';
COMMENT ON COLUMN map_features.last_seen_at IS 'Last capture time in which the feature is seen';
COMMENT ON COLUMN map_features.aligned_direction IS 'Direction the feature faces, in degrees';
COMMENT ON COLUMN map_features.geom IS 'Position of the feature, WGS 84';
COMMENT ON COLUMN map_features.tile_z IS 'Zoom of the tile the feature was last seen in (14)';
COMMENT ON COLUMN map_features.tile_x IS 'x of the z14 tile the feature was last seen in';
COMMENT ON COLUMN map_features.tile_y IS 'y of the z14 tile the feature was last seen in';
COMMENT ON COLUMN map_features.tile_hash IS 'Fingerprint of the vector-tile properties, to detect changes cheaply';
COMMENT ON COLUMN map_features.first_harvested_at IS 'When the harvester first stored the feature';
COMMENT ON COLUMN map_features.last_harvested_at IS 'When the harvester last saw the feature in a tile';
COMMENT ON COLUMN map_features.enriched_at IS 'When the Graph API details were last fetched';
COMMENT ON COLUMN map_features.deleted_at IS 'When the feature vanished from its tile; NULL while live';

CREATE TABLE map_feature_images (
    map_feature_id bigint NOT NULL,
    image_id       bigint NOT NULL,
    PRIMARY KEY (map_feature_id, image_id)
);
CREATE INDEX map_feature_images_image_idx ON map_feature_images (image_id);
COMMENT ON TABLE map_feature_images IS 'The images each map feature is seen in (Graph API images edge)';
COMMENT ON COLUMN map_feature_images.map_feature_id IS 'Mapillary map feature id';
COMMENT ON COLUMN map_feature_images.image_id IS 'Mapillary image id';

CREATE TABLE detections (
    id             bigint PRIMARY KEY,
    image_id       bigint NOT NULL,
    map_feature_id bigint,
    value          text,
    created_at     timestamptz,
    geom           geometry(MultiPolygon, 0),
    geometry_b64   text
);
CREATE INDEX detections_geom_gix ON detections USING gist (geom);
CREATE INDEX detections_image_idx ON detections (image_id);
CREATE INDEX detections_feature_idx ON detections (map_feature_id);
COMMENT ON TABLE detections IS 'Object detections in images (Graph API detections edge)';
COMMENT ON COLUMN detections.id IS 'Mapillary detection id';
COMMENT ON COLUMN detections.image_id IS 'Image the detection was made in';
COMMENT ON COLUMN detections.map_feature_id IS 'Map feature the detection belongs to, if any';
COMMENT ON COLUMN detections.value IS 'Detected class, e.g. object--fire-hydrant';
COMMENT ON COLUMN detections.created_at IS 'When Mapillary made the detection';
COMMENT ON COLUMN detections.geom IS 'Detection outline in IMAGE PIXEL SPACE (SRID 0, not geographic): do not overlay on maps';
COMMENT ON COLUMN detections.geometry_b64 IS 'The base64 vector-tile geometry exactly as the API sent it';

CREATE TABLE harvest_run (
    id          bigserial PRIMARY KEY,
    region_name text NOT NULL,
    region_geom geometry(MultiPolygon, 4326),
    run_key     text NOT NULL,
    settings    jsonb NOT NULL DEFAULT '{}',
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'done', 'partial', 'stopped')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    tiles_total integer NOT NULL DEFAULT 0,
    tiles_done  integer NOT NULL DEFAULT 0,
    tiles_failed integer NOT NULL DEFAULT 0,
    counters    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX harvest_run_key_idx ON harvest_run (run_key, id);
CREATE INDEX harvest_run_geom_gix ON harvest_run USING gist (region_geom);
COMMENT ON TABLE harvest_run IS 'One harvest run of a region (resumable)';
COMMENT ON COLUMN harvest_run.id IS 'Run id';
COMMENT ON COLUMN harvest_run.region_name IS 'Region as given on the command line or in the config';
COMMENT ON COLUMN harvest_run.region_geom IS 'Region outline, WGS 84';
COMMENT ON COLUMN harvest_run.run_key IS 'Digest of region and settings; a resumed run has the same key';
COMMENT ON COLUMN harvest_run.settings IS 'Settings of the run (never the access token)';
COMMENT ON COLUMN harvest_run.status IS 'running, done, partial (some tiles failed) or stopped (some tiles pending)';
COMMENT ON COLUMN harvest_run.started_at IS 'When the run started';
COMMENT ON COLUMN harvest_run.finished_at IS 'When the run last finished';
COMMENT ON COLUMN harvest_run.tiles_total IS 'Number of planned tiles (all tilesets)';
COMMENT ON COLUMN harvest_run.tiles_done IS 'Tiles done when the run last finished';
COMMENT ON COLUMN harvest_run.tiles_failed IS 'Tiles failed when the run last finished';
COMMENT ON COLUMN harvest_run.counters IS 'Request and record counters of the run';

CREATE TABLE harvest_tile (
    run_id           bigint NOT NULL REFERENCES harvest_run (id) ON DELETE CASCADE,
    tileset          text NOT NULL,
    z                smallint NOT NULL,
    x                integer NOT NULL,
    y                integer NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'leased', 'done', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    images           integer NOT NULL DEFAULT 0,
    sequences        integer NOT NULL DEFAULT 0,
    features         integer NOT NULL DEFAULT 0,
    new              integer NOT NULL DEFAULT 0,
    changed          integer NOT NULL DEFAULT 0,
    deleted          integer NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tileset, z, x, y)
);
CREATE INDEX harvest_tile_claim_idx ON harvest_tile (run_id, state, lease_expires_at)
    WHERE state IN ('pending', 'leased');
COMMENT ON TABLE harvest_tile IS 'Job state of every tile of every run';
COMMENT ON COLUMN harvest_tile.run_id IS 'Run the tile belongs to';
COMMENT ON COLUMN harvest_tile.tileset IS 'Mapillary tileset name';
COMMENT ON COLUMN harvest_tile.z IS 'Tile zoom';
COMMENT ON COLUMN harvest_tile.x IS 'Tile x';
COMMENT ON COLUMN harvest_tile.y IS 'Tile y';
COMMENT ON COLUMN harvest_tile.state IS 'pending, leased (a worker holds it), done or failed';
COMMENT ON COLUMN harvest_tile.attempts IS 'How often the tile was claimed in this run';
COMMENT ON COLUMN harvest_tile.lease_owner IS 'Worker holding the lease, as host:pid:random';
COMMENT ON COLUMN harvest_tile.lease_expires_at IS 'When the lease runs out and another worker may take the tile';
COMMENT ON COLUMN harvest_tile.last_error IS 'Last error while processing the tile (token redacted)';
COMMENT ON COLUMN harvest_tile.images IS 'Images the tile held';
COMMENT ON COLUMN harvest_tile.sequences IS 'Sequences the tile held';
COMMENT ON COLUMN harvest_tile.features IS 'Map features the tile held';
COMMENT ON COLUMN harvest_tile.new IS 'Records new to the database';
COMMENT ON COLUMN harvest_tile.changed IS 'Records that changed';
COMMENT ON COLUMN harvest_tile.deleted IS 'Records tombstoned because they vanished from the tile';
COMMENT ON COLUMN harvest_tile.updated_at IS 'Last state change';

CREATE TABLE tile_state (
    tileset         text NOT NULL,
    z               smallint NOT NULL,
    x               integer NOT NULL,
    y               integer NOT NULL,
    etag            text,
    last_fetched_at timestamptz,
    last_changed_at timestamptz,
    record_count    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tileset, z, x, y)
);
COMMENT ON TABLE tile_state IS 'Per tile across runs: for conditional requests and freshness';
COMMENT ON COLUMN tile_state.tileset IS 'Mapillary tileset name';
COMMENT ON COLUMN tile_state.z IS 'Tile zoom';
COMMENT ON COLUMN tile_state.x IS 'Tile x';
COMMENT ON COLUMN tile_state.y IS 'Tile y';
COMMENT ON COLUMN tile_state.etag IS 'ETag of the last fetched tile body';
COMMENT ON COLUMN tile_state.last_fetched_at IS 'When the tile was last fetched';
COMMENT ON COLUMN tile_state.last_changed_at IS 'When a fetch last changed any record';
COMMENT ON COLUMN tile_state.record_count IS 'Records (images or features) the tile held at the last change';

CREATE TABLE tile_budget (
    day  date PRIMARY KEY,
    used integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE tile_budget IS 'Tile requests spent per UTC day, shared by all workers';
COMMENT ON COLUMN tile_budget.day IS 'UTC day';
COMMENT ON COLUMN tile_budget.used IS 'Tile requests granted that day';

CREATE VIEW images_live AS SELECT * FROM images WHERE deleted_at IS NULL;
COMMENT ON VIEW images_live IS 'Images that are currently live on Mapillary';
CREATE VIEW map_features_live AS SELECT * FROM map_features WHERE deleted_at IS NULL;
COMMENT ON VIEW map_features_live IS 'Map features that are currently live on Mapillary';
