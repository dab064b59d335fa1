//! The schema: its name rule, the migrations embedded at build time, `migrate` (serialised across
//! processes), and the drift check that compares the live schema with what the migrations create.

use super::{Store, StoreError, describe, no_postgis, query_err};

/// The advisory lock key of this tool: `migrate` takes it as a session lock, run starts take it
/// combined with the run key (`jobs`), so that concurrent processes serialise where they must.
pub const ADVISORY_LOCK_KEY: i64 = 7_243_901_122;

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

impl Store {
    /// Ensures PostGIS and the schema exist, then applies `migrations/` inside the schema.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(query_err("acquiring a connection to migrate"))?;
        // Serialises concurrent `migrate` calls across processes: CREATE EXTENSION/SCHEMA race
        // otherwise (unique violations in the catalogs). Session lock, released below.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(ADVISORY_LOCK_KEY)
            .execute(&mut *conn)
            .await
            .map_err(query_err("locking for migration"))?;
        let result = self.migrate_locked(&mut conn).await;
        let unlock =
            sqlx::query("SELECT pg_advisory_unlock($1)").bind(ADVISORY_LOCK_KEY).execute(&mut *conn).await;
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
}
