//! PostGIS storage: connection, migrations, per-tile transactional writes.

mod write;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::model::{Detection, ImageDetails, MapFeatureDetails, TileFeature, TileImage, TileSequence};
use mly_contract::Tileset;
use mly_contract::tiles::TileId;

/// Errors of the storage layer; none of them ever carries the database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("invalid database URL: {reason}")]
    BadUrl { reason: String },
    #[error("invalid database schema name {0:?}: use lowercase letters, digits and _")]
    BadSchema(String),
    #[error("cannot connect to PostgreSQL at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "PostGIS is not available in this database ({detail}): install it on the database host with \
         `apt-get install postgresql-{major}-postgis-3`, or have a superuser run `CREATE EXTENSION postgis` \
         in this database"
    )]
    NoPostgis { major: u32, detail: String },
    #[error("while migrating schema {schema}: {}", describe_migrate(source))]
    Migrate { schema: String, source: sqlx::migrate::MigrateError },
    #[error(
        "schema {schema:?} differs from what its migrations create: {}; restore what was changed (e.g. from a backup) or harvest into a new schema (database.schema)",
        summarize(problems)
    )]
    Drift { schema: String, problems: Vec<String> },
    #[error("database error while {context}: {}", describe(source))]
    Query { context: String, source: sqlx::Error },
    #[error(
        "lease lost on tile {tileset} {tile} (run {run_id}): another worker holds it now, its write wins"
    )]
    LeaseLost { run_id: i64, tileset: Tileset, tile: TileId },
    #[error("while encoding {what}: {reason}")]
    Encode { what: String, reason: String },
}

/// The schema's migrations (`migrations/` at the repository root), embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The versions of the migrations this build knows.
pub fn known_migrations() -> Vec<i64> {
    MIGRATOR.iter().map(|m| m.version).collect()
}

/// Why a schema name cannot hold the harvester's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaNameError {
    /// Not a plain lower-case identifier (letters, digits, `_`; not starting with a digit; at
    /// most 63 bytes), so it could not be quoted safely everywhere.
    NotIdentifier,
    /// A schema PostgreSQL reserves (`pg_*`, `information_schema`).
    Reserved,
}

/// The one rule for the schema name (`database.schema`): plain, and not reserved.
pub fn check_schema_name(s: &str) -> Result<(), SchemaNameError> {
    let mut chars = s.chars();
    let plain = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63;
    if !plain {
        return Err(SchemaNameError::NotIdentifier);
    }
    if s.starts_with("pg_") || s == "information_schema" {
        return Err(SchemaNameError::Reserved);
    }
    Ok(())
}

/// A database error as one readable line: the server's message, detail and hint, and the
/// SQLSTATE. sqlx's own Display appends "at line N", which is a line of PostgreSQL's C source and
/// means nothing to a user.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut s = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(d) = pg.detail() {
                    s = format!("{s} ({d})");
                }
                if let Some(h) = pg.hint() {
                    s = format!("{s}; hint: {h}");
                }
            }
            match db.code() {
                Some(code) => format!("{s} [SQLSTATE {code}]"),
                None => s,
            }
        }
        other => other.to_string(),
    }
}

/// The first few drift problems, and how many more there are.
fn summarize(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > SHOWN {
        s += &format!("; and {} more", problems.len() - SHOWN);
    }
    s
}

/// What a schema holds, as drift checking compares it: relations, columns with their types and
/// nullability, key constraints by column, and index names. One row per item: (what, detail).
const SCHEMA_MANIFEST: &str = "
SELECT 'relation ' || c.relname, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'm', 'p')
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'v', 'm', 'p')
UNION ALL
SELECT c.relname || ' ' || CASE con.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique key'
         ELSE 'foreign key' END
       || ' (' || (SELECT string_agg(a.attname, ', ' ORDER BY a.attnum) FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attnum = ANY (con.conkey)) || ')', ''
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND con.contype IN ('p', 'u', 'f')
UNION ALL
SELECT 'index ' || i.relname, ''
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
 WHERE n.nspname = $1";

async fn manifest(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<std::collections::BTreeMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as(SCHEMA_MANIFEST).bind(schema).fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().collect())
}

/// What `actual` lacks or has differently from `expected`, one line per item.
pub fn drift(
    expected: &std::collections::BTreeMap<String, String>,
    actual: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    // A missing relation is one problem, not one per column.
    let gone: Vec<String> = expected
        .keys()
        .filter_map(|k| k.strip_prefix("relation "))
        .filter(|r| !actual.contains_key(&format!("relation {r}")))
        .map(|r| format!("column {r}."))
        .collect();
    for (item, want) in expected {
        if gone.iter().any(|g| item.starts_with(g.as_str())) {
            continue;
        }
        match actual.get(item) {
            None => out.push(format!("{item} is missing")),
            Some(have) if have != want && item.starts_with("column ") => {
                out.push(format!("{item} is {have}, expected {want}"))
            }
            Some(have) if have != want => out.push(format!("{item} is of kind {have}, expected {want}")),
            Some(_) => {}
        }
    }
    out
}

/// A migration error with the database part described by [`describe`].
pub fn describe_migrate(e: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) => format!("while executing migrations: {}", describe(inner)),
        MigrateError::ExecuteMigration(inner, v) => {
            format!("while executing migration {v}: {}", describe(inner))
        }
        other => other.to_string(),
    }
}

/// Builds the [`StoreError::NoPostgis`] error for a server of the given major version.
pub fn no_postgis(major: u32, detail: &str) -> StoreError {
    StoreError::NoPostgis { major, detail: detail.to_string() }
}

/// Wraps a sqlx error with what we were doing.
pub fn query_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Query { context, source }
}

/// A connection pool whose connections all use the configured schema.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    schema: String,
    times: Arc<StageTimes>,
}

/// The stages a tile goes through, for measuring where a load's time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the tile's ETag and live records before fetching it.
    Snapshot,
    /// Waiting for the tile server.
    Fetch,
    /// Decoding the MVT (blocking pool).
    Decode,
    /// Looking up records of the tile that live elsewhere in the database (diff).
    Lookup,
    /// Graph API enrichment.
    Enrich,
    /// Encoding the rows as COPY text.
    Encode,
    /// Inside the write transaction: lease check and reading the tile's live rows.
    Read,
    /// COPY, counting and upserting the rows that change.
    Upsert,
    /// Tombstoning records that vanished from the tile.
    Tombstone,
    /// Rebuilding the lines of sequences whose images changed.
    Sequences,
    /// Tile state, done mark and commit.
    Commit,
}

impl Stage {
    const ALL: [Stage; 11] = [
        Stage::Snapshot,
        Stage::Fetch,
        Stage::Decode,
        Stage::Lookup,
        Stage::Enrich,
        Stage::Encode,
        Stage::Read,
        Stage::Upsert,
        Stage::Tombstone,
        Stage::Sequences,
        Stage::Commit,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Snapshot => "snapshot",
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Lookup => "lookup",
            Stage::Enrich => "enrich",
            Stage::Encode => "encode",
            Stage::Read => "read",
            Stage::Upsert => "upsert",
            Stage::Tombstone => "tombstone",
            Stage::Sequences => "sequences",
            Stage::Commit => "commit",
        }
    }
}

/// Time spent per [`Stage`], summed over every tile of this process (tiles run concurrently, so
/// the sum exceeds the wall time). Logged at the end of a run with `-v`.
#[derive(Debug, Default)]
pub struct StageTimes {
    nanos: [AtomicU64; Stage::ALL.len()],
}

impl StageTimes {
    /// Adds the time since `since` to `stage`.
    pub fn add(&self, stage: Stage, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos[stage as usize].fetch_add(ns, Ordering::Relaxed);
    }

    /// Milliseconds per stage, in pipeline order.
    pub fn millis(&self) -> Vec<(&'static str, u64)> {
        Stage::ALL
            .iter()
            .map(|s| (s.name(), self.nanos[*s as usize].load(Ordering::Relaxed) / 1_000_000))
            .collect()
    }

    /// "fetch 1200 ms, decode 300 ms, ..." (stages that took no time are left out).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .millis()
            .into_iter()
            .filter(|(_, ms)| *ms > 0)
            .map(|(n, ms)| format!("{n} {ms} ms"))
            .collect();
        parts.join(", ")
    }
}

/// What the database knows about one record, for diffing a tile against it.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub tile_hash: i64,
    pub enriched_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

/// What the database holds for one tile.
#[derive(Debug, Clone, Default)]
pub struct TileSnapshot {
    /// ETag of the last fetch, for a conditional request.
    pub etag: Option<String>,
    /// Live records last seen in this tile, by id.
    pub live: HashMap<i64, Known>,
}

/// One tile's result, written by [`Store::write_tile`].
#[derive(Debug, Clone)]
pub struct TileWrite {
    pub run_id: i64,
    pub tileset: Tileset,
    pub tile: TileId,
    pub lease_owner: String,
    pub etag: Option<String>,
    /// true when the server said 304 / the tile is unchanged: only touch bookkeeping, no rows.
    pub unchanged: bool,
    /// Every image the coverage tile holds now (coverage tilesets).
    pub images: Vec<ImageRow>,
    /// Sequences from the tile (attributes); their geometry is rebuilt from images.
    pub sequences: Vec<TileSequence>,
    /// Every feature the feature tile holds now (feature tilesets).
    pub features: Vec<FeatureRow>,
    pub detections: Vec<DetectionRow>,
    /// Live records of this tile (of this tileset's kind) that the tile no longer lists, as the
    /// Graph API judged them. Nothing else is ever tombstoned.
    pub vanished: Vanished,
}

/// What became of a tile's vanished records, confirmed by id through the Graph API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vanished {
    /// Gone upstream (a lookup answered not found, code 100/33): tombstoned.
    pub deleted: Vec<i64>,
    /// Still there, and placed in this tile: kept, stamped `missing_from_tile_at`.
    pub missing: Vec<i64>,
    /// Still there, but now placed in another tile: kept, moved to that tile.
    pub moved: Vec<MovedAway>,
}

/// A record that left the tile, with the position the Graph API gives it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovedAway {
    pub id: i64,
    pub tile: TileId,
    pub lon: f64,
    pub lat: f64,
}

/// An image to write; `details: None` keeps the existing enriched columns.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub tile: TileImage,
    pub tile_hash: i64,
    pub details: Option<ImageDetails>,
}

/// A map feature to write; `details: None` keeps the existing enriched columns and image links.
#[derive(Debug, Clone)]
pub struct FeatureRow {
    pub tile: TileFeature,
    pub tile_hash: i64,
    pub details: Option<MapFeatureDetails>,
}

/// A detection to write, with its outline decoded to WKB in image pixel space (SRID 0).
#[derive(Debug, Clone)]
pub struct DetectionRow {
    pub det: Detection,
    pub pixel_geom_wkb: Option<Vec<u8>>,
}

/// What one [`Store::write_tile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Ids not in the database before.
    pub new: u64,
    /// Live ids whose tile_hash changed or that came with fresh details.
    pub changed: u64,
    /// Live ids of this tile confirmed gone upstream (tombstoned).
    pub deleted: u64,
    /// Live ids of this tile missing from it but present upstream (kept).
    pub missing_from_tile: u64,
    /// Live ids of this tile that the Graph API places in another tile now (moved there).
    pub moved_away: u64,
    /// Ids that were tombstoned and are back.
    pub revived: u64,
    /// Records written.
    pub total: u64,
}

const TILE_ETAG: &str = "SELECT etag FROM tile_state WHERE tileset = $1 AND z = $2 AND x = $3 AND y = $4";

/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// "host:port" (or the unix socket's path) of a connect-options, for messages that must not show
/// the password.
fn endpoint(opts: &PgConnectOptions) -> String {
    match opts.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), opts.get_port()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    }
}

impl Store {
    /// Connects a pool whose sessions use `"<schema>", public` as search_path.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<Store, StoreError> {
        Store::connect_with(url, schema, max_connections, false).await
    }

    /// Connects a pool for commands that only read (`status`): every session has
    /// `default_transaction_read_only` on, so a write would be refused by the server itself, and a
    /// read-only role can run them.
    pub async fn connect_read_only(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        Store::connect_with(url, schema, max_connections, true).await
    }

    async fn connect_with(
        url: &str,
        schema: &str,
        max_connections: u32,
        read_only: bool,
    ) -> Result<Store, StoreError> {
        if check_schema_name(schema).is_err() {
            return Err(StoreError::BadSchema(schema.to_string()));
        }
        // sqlx's parse errors do not echo the URL, but stay generic anyway: it may hold a password.
        let opts = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl {
            reason: "expected postgres://user[:password]@host[:port]/db".into(),
        })?;
        let mut settings = vec![("search_path", format!("\"{schema}\", public"))];
        if read_only {
            settings.push(("default_transaction_read_only", "on".to_string()));
        }
        let opts = opts
            .options(settings)
            // Big tile writes legitimately take over a second; sqlx would WARN on each of them.
            .disable_statement_logging();
        let endpoint = endpoint(&opts);
        // One direct connection first: the pool would retry a refused connection until its
        // acquire timeout, where a CLI user wants the reason at once.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await;
        match probe {
            Ok(Ok(conn)) => {
                // Best effort: the probe has done its job, and a failed close changes nothing.
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => return Err(StoreError::Unreachable { endpoint, reason: e.to_string() }),
            Err(_) => {
                return Err(StoreError::Unreachable {
                    endpoint,
                    reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                });
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        tracing::debug!(%endpoint, schema, "connected to PostgreSQL");
        Ok(Store { pool, schema: schema.to_string(), times: Arc::default() })
    }

    /// Ensures PostGIS and the schema exist, then applies `migrations/` inside the schema.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(query_err("acquiring a connection to migrate"))?;
        // Serialises concurrent `migrate` calls across processes: CREATE EXTENSION/SCHEMA race
        // otherwise (unique violations in the catalogs). Session lock, released below.
        sqlx::query("SELECT pg_advisory_lock(7243901122)")
            .execute(&mut *conn)
            .await
            .map_err(query_err("locking for migration"))?;
        let result = self.migrate_locked(&mut conn).await;
        let unlock = sqlx::query("SELECT pg_advisory_unlock(7243901122)").execute(&mut *conn).await;
        result?;
        unlock.map_err(query_err("unlocking after migration"))?;
        Ok(())
    }

    async fn migrate_locked(&self, conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        let has_postgis: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgis')")
                .fetch_one(&mut *conn)
                .await
                .map_err(query_err("checking for PostGIS"))?;
        if !has_postgis
            && let Err(e) =
                sqlx::query("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public").execute(&mut *conn).await
        {
            let num: String = sqlx::query_scalar("SHOW server_version_num")
                .fetch_one(&mut *conn)
                .await
                .map_err(query_err("reading the server version"))?;
            let major = num.parse::<u32>().map(|n| n / 10000).unwrap_or(15);
            let detail = match &e {
                sqlx::Error::Database(db) => db.message().to_string(),
                other => other.to_string(),
            };
            return Err(no_postgis(major, &detail));
        }
        // The only string-built SQL: the identifier passed check_schema_name (lowercase, digits, _).
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut *conn)
            .await
            .map_err(query_err(format!("creating schema {}", self.schema)))?;
        MIGRATOR
            .run_direct(None, &mut *conn, false)
            .await
            .map_err(|source| StoreError::Migrate { schema: self.schema.clone(), source })?;
        self.check_drift(conn).await?;
        tracing::info!(schema = %self.schema, "database schema is up to date");
        Ok(())
    }

    /// Compares the schema with what its migrations create. The reference is built by running
    /// the migrations in a scratch schema inside a transaction that is rolled back, so it is
    /// always exactly this version's; it is cached in `schema_manifest` per migration set, so the
    /// check normally costs one catalog query. "Up to date" in `_sqlx_migrations` says nothing
    /// about a column a user dropped since: every tile would then fail with a database error and
    /// the run end "partial, run again".
    async fn check_drift(&self, conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
        let migrator = &MIGRATOR;
        let mut fingerprint = Vec::new();
        for m in migrator.iter() {
            fingerprint.extend_from_slice(&m.version.to_le_bytes());
            fingerprint.extend_from_slice(&m.checksum);
        }
        let digest = format!("{:016x}", mly_contract::hash::fnv1a(&fingerprint));
        let cached: Result<Vec<(String, String)>, _> =
            sqlx::query_as("SELECT item, detail FROM schema_manifest WHERE digest = $1")
                .bind(&digest)
                .fetch_all(&mut *conn)
                .await;
        let (expected, fresh) = match cached {
            Ok(rows) if !rows.is_empty() => (rows.into_iter().collect(), false),
            // Not cached yet (or the cache table itself is gone: the probe will say so).
            _ => match self.probe_manifest(conn, migrator).await {
                Ok(m) => (m, true),
                Err(e) => {
                    // The reference could not be built (e.g. no CREATE privilege on the
                    // database): say so, and let the run find any damage the hard way.
                    tracing::warn!(error = %describe(&e), "could not check the schema for drift");
                    return Ok(());
                }
            },
        };
        let actual = manifest(conn, &self.schema)
            .await
            .map_err(query_err(format!("reading schema {}", self.schema)))?;
        let problems = drift(&expected, &actual);
        if !problems.is_empty() {
            return Err(StoreError::Drift { schema: self.schema.clone(), problems });
        }
        if fresh {
            let (items, details): (Vec<String>, Vec<String>) = expected.into_iter().unzip();
            sqlx::query(
                "WITH gone AS (DELETE FROM schema_manifest) \
                 INSERT INTO schema_manifest (digest, item, detail) SELECT $1, * FROM unnest($2::text[], $3::text[])",
            )
            .bind(&digest)
            .bind(&items)
            .bind(&details)
            .execute(&mut *conn)
            .await
            .map_err(query_err("caching the schema manifest"))?;
        }
        Ok(())
    }

    /// What the migrations create, from a scratch schema in a rolled-back transaction.
    async fn probe_manifest(
        &self,
        conn: &mut sqlx::PgConnection,
        migrator: &sqlx::migrate::Migrator,
    ) -> Result<std::collections::BTreeMap<String, String>, sqlx::Error> {
        use sqlx::Connection as _;
        let probe = format!("mly_drift_probe_{}", std::process::id());
        let mut tx = conn.begin().await?;
        // The probe name is built from a number, so it is a plain identifier.
        let setup = format!("CREATE SCHEMA \"{probe}\"; SET LOCAL search_path = \"{probe}\", public");
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(&mut *tx).await?;
        for m in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str().to_string())).execute(&mut *tx).await?;
        }
        let expected = manifest(&mut tx, &probe).await?;
        tx.rollback().await?;
        Ok(expected)
    }

    /// Whether the schema holds the harvester's tables yet (a read-only check; `migrate` creates them).
    pub async fn schema_exists(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT to_regclass(format('%I.harvest_run', $1::text)) IS NOT NULL")
            .bind(&self.schema)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err(format!("looking for schema {}", self.schema)))
    }

    /// The pool (all sessions have the schema on their search_path).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configured schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Where this process's tile time went, per stage.
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// The ETag of the tile's last fetch, for a conditional request (what [`Store::tile_snapshot`]
    /// reads, without the live records a run without enrichment has no use for).
    pub async fn tile_etag(&self, tileset: Tileset, tile: TileId) -> Result<Option<String>, StoreError> {
        let (z, x, y) = tile_key(tile);
        let etag: Option<Option<String>> = sqlx::query_scalar(TILE_ETAG)
            .bind(tileset.name())
            .bind(z)
            .bind(x)
            .bind(y)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(format!("reading the ETag of {tileset} tile {tile}")))?;
        Ok(etag.flatten())
    }

    /// What the database holds for one tile: live ids with their tile_hash and enriched_at, for diffing.
    pub async fn tile_snapshot(&self, tileset: Tileset, tile: TileId) -> Result<TileSnapshot, StoreError> {
        let ctx = || format!("reading the snapshot of {tileset} tile {tile}");
        let (z, x, y) = tile_key(tile);
        let etag: Option<String> = sqlx::query_scalar(TILE_ETAG)
            .bind(tileset.name())
            .bind(z)
            .bind(x)
            .bind(y)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(ctx()))?
            .flatten();
        let rows = match feature_kind(tileset) {
            None => {
                sqlx::query(
                    "SELECT id, tile_hash, enriched_at FROM images \
                     WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND deleted_at IS NULL",
                )
                .bind(z)
                .bind(x)
                .bind(y)
                .fetch_all(&self.pool)
                .await
            }
            Some(kind) => {
                sqlx::query(
                    "SELECT id, tile_hash, enriched_at FROM map_features \
                     WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 AND object_type = $4 AND deleted_at IS NULL",
                )
                .bind(z)
                .bind(x)
                .bind(y)
                .bind(kind)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(query_err(ctx()))?;
        let mut live = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get(0).map_err(query_err(ctx()))?;
            let tile_hash: Option<i64> = r.try_get(1).map_err(query_err(ctx()))?;
            let enriched_at: Option<DateTime<Utc>> = r.try_get(2).map_err(query_err(ctx()))?;
            live.insert(id, Known { tile_hash: tile_hash.unwrap_or(0), enriched_at, deleted: false });
        }
        Ok(TileSnapshot { etag, live })
    }

    /// Live images last seen in `tile` whose detections were never fetched (detections switched
    /// on after they were harvested).
    pub async fn images_lacking_detections(&self, tile: TileId) -> Result<HashSet<i64>, StoreError> {
        let (z, x, y) = tile_key(tile);
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM images WHERE tile_z = $1 AND tile_x = $2 AND tile_y = $3 \
             AND deleted_at IS NULL AND detections_at IS NULL",
        )
        .bind(z)
        .bind(x)
        .bind(y)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err(format!("looking for images of tile {tile} without detections")))?;
        Ok(ids.into_iter().collect())
    }

    /// Records that these images' detections were fetched (after their tile was written). Not in
    /// the tile's transaction on purpose: losing this mark only fetches them again, and the
    /// detection upsert is idempotent.
    pub async fn mark_detections_fetched(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("UPDATE images SET detections_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(query_err("recording fetched detections"))?;
        Ok(())
    }

    /// tile_hash/enriched_at/deleted_at for image ids wherever they are (records that moved in from another tile).
    pub async fn known_images(&self, ids: &[i64]) -> Result<HashMap<i64, Known>, StoreError> {
        self.known(
            "SELECT id, tile_hash, enriched_at, deleted_at IS NOT NULL FROM images WHERE id = ANY($1)",
            ids,
            "looking up known images",
        )
        .await
    }

    /// tile_hash/enriched_at/deleted_at for feature ids wherever they are.
    pub async fn known_features(&self, ids: &[i64]) -> Result<HashMap<i64, Known>, StoreError> {
        self.known(
            "SELECT id, tile_hash, enriched_at, deleted_at IS NOT NULL FROM map_features WHERE id = ANY($1)",
            ids,
            "looking up known map features",
        )
        .await
    }

    async fn known(
        &self,
        sql: &'static str,
        ids: &[i64],
        ctx: &str,
    ) -> Result<HashMap<i64, Known>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let rows = sqlx::query(sql).bind(ids).fetch_all(&self.pool).await.map_err(query_err(ctx))?;
        for r in rows {
            let id: i64 = r.try_get(0).map_err(query_err(ctx))?;
            let tile_hash: Option<i64> = r.try_get(1).map_err(query_err(ctx))?;
            let enriched_at: Option<DateTime<Utc>> = r.try_get(2).map_err(query_err(ctx))?;
            let deleted: bool = r.try_get(3).map_err(query_err(ctx))?;
            out.insert(id, Known { tile_hash: tile_hash.unwrap_or(0), enriched_at, deleted });
        }
        Ok(out)
    }

    /// Refreshes the planner statistics of the data tables. A bulk load outgrows them long before
    /// autovacuum notices, and plans made for a near-empty `images` (e.g. reading every live row to
    /// rebuild a few sequences) then cost seconds per tile.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("ANALYZE images; ANALYZE map_features; ANALYZE sequences")
            .execute(&self.pool)
            .await
            .map_err(|source| StoreError::Query { context: "analyzing the data tables".into(), source })?;
        Ok(())
    }

    /// Links detections to the map feature seen in the same image with the same value (the API
    /// documents no feature field on detections; the feature's `images` edge gives the pairing).
    /// Set-based, idempotent, and run once per sync after all tiles are written.
    pub async fn link_detections(&self) -> Result<u64, StoreError> {
        const LINK: &str = "
UPDATE detections d SET map_feature_id = m.feature
FROM (SELECT d2.id, min(f.id) AS feature
      FROM detections d2
      JOIN map_feature_images l ON l.image_id = d2.image_id
      JOIN map_features f ON f.id = l.map_feature_id AND f.object_value = d2.value
      WHERE d2.map_feature_id IS NULL
      GROUP BY d2.id) m
WHERE d.id = m.id";
        let r = sqlx::query(LINK).execute(&self.pool).await.map_err(|source| StoreError::Query {
            context: "linking detections to map features".into(),
            source,
        })?;
        Ok(r.rows_affected())
    }

    /// Writes one tile's result and marks its job done, in ONE transaction.
    pub async fn write_tile(&self, w: &TileWrite) -> Result<WriteCounts, StoreError> {
        write::write_tile(self, w).await
    }
}

/// The map_features.object_type a tileset's features carry; None for coverage tilesets.
pub(crate) fn feature_kind(tileset: Tileset) -> Option<&'static str> {
    match tileset {
        Tileset::Public | Tileset::ComputedPublic => None,
        Tileset::FeaturePoint => Some("point"),
        Tileset::FeatureTrafficSign => Some("traffic_sign"),
    }
}

/// Tile coordinates as stored (smallint, int, int).
pub(crate) fn tile_key(t: TileId) -> (i16, i32, i32) {
    // TileId::new limits z to 30 and x/y below 2^30, so these casts never truncate valid tiles.
    (i16::from(t.z), t.x as i32, t.y as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_postgis_message_says_what_to_install() {
        let m = no_postgis(16, "could not open extension control file").to_string();
        assert!(m.contains("apt-get install postgresql-16-postgis-3"), "{m}");
        assert!(m.contains("CREATE EXTENSION postgis"), "{m}");
        assert!(m.contains("could not open extension control file"), "{m}");
    }

    #[tokio::test]
    async fn unreachable_names_endpoint_not_password() {
        let e = Store::connect("postgres://alice:hunter2secret@127.0.0.1:1/db", "mapillary", 1)
            .await
            .unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{m}");
        assert!(m.contains("127.0.0.1:1"), "{m}");
        assert!(!m.contains("hunter2secret") && !format!("{e:?}").contains("hunter2secret"), "{m}");
    }

    #[tokio::test]
    async fn bad_schema_rejected() {
        let e = Store::connect("postgres://localhost/db", "x\"; drop", 1).await.unwrap_err();
        assert!(matches!(e, StoreError::BadSchema(_)));
    }
}
