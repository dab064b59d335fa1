//! PostGIS storage of the harvested data: the connection pool ([`Store`]), the schema and its
//! migrations, what a tile's diff reads, and the tile's data write (inside the transaction that
//! marks its job done, see `pipeline::commit`). Job tables are `jobs`'.

mod coverage;
mod error;
mod read;
mod rows;
mod schema;
mod timing;
pub mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use mly_contract::Tileset;
use mly_contract::tiles::TileId;

pub use coverage::KnownTile;
pub use error::{StoreError, describe, describe_migrate, no_postgis, query_err};
pub use rows::{
    DetectionRow, FeatureRow, ImageRow, Known, MovedAway, TileSnapshot, TileWrite, Vanished, WriteCounts,
};
pub use schema::{ADVISORY_LOCK_KEY, MIGRATOR, SchemaNameError, check_schema_name, drift, known_migrations};
pub use timing::{Stage, StageTimes};
pub(crate) use write::scope::live_scope_image;
pub use write::scope::{
    ScopeCounts, ScopeFeature, ScopeRows, ScopeWritten, image_position, scope_images_among, write_scope_rows,
};

/// A connection pool whose connections all use the configured schema.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    schema: String,
    times: Arc<StageTimes>,
}

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
