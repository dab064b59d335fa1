-- Issue 13: pictures downloaded by `mly-harvest images download`. One row per file, written in the
-- same step that makes the file appear (temp file, fsync, row, rename), so the table is the
-- state a rerun resumes from: a file is complete when its length and sha256 match its row.
CREATE TABLE image_files (
    root       text        NOT NULL,
    image_id   bigint      NOT NULL,
    size       text        NOT NULL CHECK (size IN ('256', '1024', '2048', 'original')),
    path       text        NOT NULL,
    bytes      bigint      NOT NULL CHECK (bytes >= 0),
    sha256     text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    fetched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (root, image_id)
);
CREATE INDEX image_files_image_idx ON image_files (image_id);

COMMENT ON TABLE image_files IS 'Pictures downloaded by `mly-harvest images download`, one row per complete file';
COMMENT ON COLUMN image_files.root IS 'Absolute path of the output directory (--out) the file lies in';
COMMENT ON COLUMN image_files.image_id IS 'Mapillary image id';
COMMENT ON COLUMN image_files.size IS 'Picture size downloaded: 256, 1024, 2048 (px wide) or original';
COMMENT ON COLUMN image_files.path IS 'Path of the file relative to root: <sequence>/<captured_at>_<image id>.jpg';
COMMENT ON COLUMN image_files.bytes IS 'Length of the file in bytes';
COMMENT ON COLUMN image_files.sha256 IS 'SHA-256 of the file, lower-case hex';
COMMENT ON COLUMN image_files.fetched_at IS 'When the file was downloaded';
