//! `mly-harvest doctor [--json]`: everything a first real run needs, checked in one go, one line
//! per check, a summary and an exit code (the README's code of the first failed check).
//!
//! Checks, in order: the configuration; the database (reachable), PostGIS (installed, or
//! installable by this role), the schema's migrations, the rights `sync` needs; a tile-server
//! block recorded by an earlier run; the access token (one Graph API call); tile access (one tile
//! request, counted in the app's daily tile budget).
//!
//! Doctor never changes the database, with one exception: the tile it fetches is counted in
//! `mly_harvest_global.tile_budget` like any other tile request. When that cannot be written (a
//! read-only role, a database not migrated yet) the tile is fetched uncounted and the line says
//! so; when a block is recorded, or the database cannot be read, no tile is requested at all
//! (asking during a block extends it). So a read-only role can run it.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};

use crate::cli::{self, Cli, CliError};
use crate::config::Config;
use crate::exit;
use mly_contract::Tileset;
use mly_contract::tiles::TileId;
use mly_core::api::{ApiClient, ApiError, ApiSettings, Pacing, TileResponse, redact};
use mly_core::jobs::block::{self, BlockKey};
use mly_core::jobs::budget::{self, AppKey, TileLimits};
use mly_core::mvt;
use mly_core::store::{Store, StoreError, query_err};

/// `doctor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Machine-readable output: one JSON object with every check and the summary.
    #[arg(long)]
    pub json: bool,
}

/// The tile doctor fetches: the real Zürich z14 tile of the API notes' fixtures (3,012 images),
/// which the live tile server and the simulator both serve with data.
const PROBE_TILE: (u8, u32, u32) = (14, 8574, 5735);

const SERVER: &str = "SELECT current_user::text, current_database()::text, current_setting('server_version')";
const POSTGIS: &str = "SELECT (SELECT extversion::text FROM pg_extension WHERE extname = 'postgis'), \
       (SELECT default_version::text FROM pg_available_extensions WHERE name = 'postgis'), \
       coalesce((SELECT trusted FROM pg_available_extension_versions v \
                 JOIN pg_available_extensions e ON e.name = v.name AND e.default_version = v.version \
                 WHERE v.name = 'postgis'), false), \
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
       has_database_privilege(current_database(), 'CREATE'), \
       current_setting('server_version_num')::int / 10000";
const SCHEMA_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)";
const MIGRATIONS_TABLE: &str = "SELECT to_regclass(format('%I._sqlx_migrations', $1::text)) IS NOT NULL";
/// Unqualified: the store's sessions have the harvest schema first on their search_path.
const APPLIED: &str = "SELECT version, success FROM _sqlx_migrations ORDER BY version";
const DB_RIGHTS: &str = "SELECT has_database_privilege(current_database(), 'CREATE'), \
       has_database_privilege(current_database(), 'TEMPORARY')";
const SCHEMA_RIGHTS: &str = "SELECT has_schema_privilege($1, 'USAGE'), has_schema_privilege($1, 'CREATE')";
/// Tables and sequences of a schema this role cannot fully use (what `sync` reads and writes).
const MISSING_TABLE_RIGHTS: &str = "SELECT format('%s on %I.%I', p.priv, n.nspname, c.relname) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     CROSS JOIN LATERAL (SELECT unnest(CASE WHEN c.relkind = 'S' THEN ARRAY['USAGE'] \
                                      ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END) AS priv) p \
     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'S') \
       AND NOT CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, p.priv) \
                    ELSE has_table_privilege(c.oid, p.priv) END \
     ORDER BY c.relname, p.priv";
const GLOBAL_SCHEMA: &str = "mly_harvest_global";
/// The block table of migration 0006 (`jobs::block`), when this database has it.
const BLOCK_TABLE: &str = "SELECT to_regclass('mly_harvest_global.tile_block') IS NOT NULL";
/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something deserves attention; does not fail doctor.
    Warn,
    Fail,
    /// Not run because an earlier check failed (the detail says which).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The README exit code this failure stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// The checks in the order they run.
const CHECKS: [&str; 8] = ["config", "database", "postgis", "schema", "rights", "block", "token", "tiles"];

struct Report {
    checks: Vec<Check>,
    json: bool,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Status, detail: impl Into<String>, exit_code: Option<i32>) {
        // Everything printed passes the secret scrubber, as every log line does.
        let detail = crate::config::scrub(&redact(&detail.into())).replace('\n', " ");
        let c = Check { name, status, detail, exit_code };
        if !self.json {
            println!("{:<9} {:<5} {}", c.name, c.status.label(), c.detail);
        }
        self.checks.push(c);
    }
    fn ok(&mut self, name: &'static str, detail: impl Into<String>) {
        self.add(name, Status::Ok, detail, None);
    }
    fn warn(&mut self, name: &'static str, detail: impl Into<String>) {
        self.add(name, Status::Warn, detail, None);
    }
    fn fail(&mut self, name: &'static str, code: i32, detail: impl Into<String>) {
        self.add(name, Status::Fail, detail, Some(code));
    }
    fn skip(&mut self, name: &'static str, detail: impl Into<String>) {
        self.add(name, Status::Skip, detail, None);
    }
    /// Skips every check not run yet.
    fn skip_rest(&mut self, why: &str) {
        for name in CHECKS {
            if !self.checks.iter().any(|c| c.name == name) {
                self.skip(name, why);
            }
        }
    }

    /// Prints the summary; the exit code is the first failed check's.
    fn finish(self) -> Result<i32, CliError> {
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let (ok, warn, fail, skip) =
            (count(Status::Ok), count(Status::Warn), count(Status::Fail), count(Status::Skip));
        let first = self.checks.iter().find(|c| c.status == Status::Fail);
        let code = first.and_then(|c| c.exit_code).unwrap_or(exit::OK);
        let verdict = match first {
            None => "ready for `mly-harvest sync`".to_string(),
            Some(c) => format!("not ready: fix {} first (exit code {code})", c.name),
        };
        let summary = format!(
            "doctor: {} checks: {ok} ok, {warn} warnings, {fail} failed, {skip} skipped; {verdict}",
            self.checks.len()
        );
        if self.json {
            let out = serde_json::json!({
                "checks": self.checks,
                "summary": { "ok": ok, "warn": warn, "fail": fail, "skip": skip, "text": summary },
                "exit_code": code,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{summary}");
        }
        Ok(code)
    }
}

/// Runs every check; returns the exit code (0 when none failed).
pub async fn run(cli: &Cli, args: &DoctorArgs) -> Result<i32, CliError> {
    let mut r = Report { checks: Vec::new(), json: args.json };
    let cfg = match cli::load_config(cli) {
        Ok(cfg) => {
            r.ok("config", describe_config(cli, &cfg));
            cfg
        }
        Err(e) => {
            r.fail("config", exit::CONFIG, e.to_string());
            r.skip_rest("needs a valid configuration");
            return r.finish();
        }
    };
    let store = database(&mut r, &cfg).await;
    let (blocked, migrated) = match &store {
        Some(store) => {
            postgis(&mut r, store).await;
            let migrated = schema(&mut r, store).await;
            rights(&mut r, store, migrated).await;
            (block(&mut r, store, &cfg).await, migrated)
        }
        None => {
            for name in ["postgis", "schema", "rights", "block"] {
                r.skip(name, "needs the database");
            }
            // Without the database no recorded block can be ruled out: do not ask the tile server.
            (true, Migrated::Broken)
        }
    };
    // The token check's search takes a slot of the app's shared timeline when there is one, so
    // that it counts with the searches of running syncs.
    let pacing = match &store {
        Some(store) if migrated == Migrated::UpToDate => Pacing::Shared {
            store: store.clone(),
            app: AppKey::from_token(cfg.mapillary.access_token.expose()),
        },
        _ => Pacing::ThisProcess,
    };
    let token_ok = token(&mut r, &cfg, pacing).await;
    if !token_ok {
        r.skip("tiles", "needs an accepted token");
    } else if blocked {
        r.skip(
            "tiles",
            if store.is_some() {
                "not asking the tile server during a recorded block (asking extends it)"
            } else {
                "needs the database (to count the tile and to rule out a recorded block)"
            },
        );
    } else if let Some(store) = &store {
        tiles(&mut r, store, &cfg).await;
    }
    if let Some(store) = store {
        store.pool().close().await;
    }
    r.finish()
}

fn describe_config(cli: &Cli, cfg: &Config) -> String {
    let file = match &cli.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new(crate::config::DEFAULT_FILE).exists() => {
            crate::config::DEFAULT_FILE.into()
        }
        None => "no file (defaults and environment)".into(),
    };
    let sets: Vec<&str> = cfg.harvest.tilesets.iter().map(|t| t.name()).collect();
    format!(
        "{file}; schema {}; tilesets {}; tiles {}/day at {}/min; Graph API {}, tiles {}",
        cfg.database.schema,
        sets.join(","),
        cfg.limits.tiles_per_day,
        cfg.limits.tiles_per_minute,
        cfg.mapillary.graph_url,
        cfg.mapillary.tiles_url
    )
}

async fn database(r: &mut Report, cfg: &Config) -> Option<Store> {
    let url = cfg.database.url.expose();
    if url.is_empty() {
        r.fail("database", exit::CONFIG, "database.url is not set (set DATABASE_URL or database.url)");
        return None;
    }
    let store = match Store::connect(url, &cfg.database.schema, 2).await {
        Ok(s) => s,
        Err(e) => {
            r.fail("database", exit::DATABASE, e.to_string());
            return None;
        }
    };
    let row: Result<(String, String, String), _> =
        sqlx::query_as(SERVER).fetch_one(store.pool()).await.map_err(query_err("reading the server version"));
    match row {
        Ok((user, db, version)) => {
            r.ok("database", format!("connected as {user} to database {db} (PostgreSQL {version})"));
            Some(store)
        }
        Err(e) => {
            r.fail("database", exit::DATABASE, e.to_string());
            None
        }
    }
}

async fn postgis(r: &mut Report, store: &Store) {
    type Row = (Option<String>, Option<String>, bool, Option<bool>, bool, i32);
    let row: Result<Row, StoreError> =
        sqlx::query_as(POSTGIS).fetch_one(store.pool()).await.map_err(query_err("looking for PostGIS"));
    match row {
        Err(e) => r.fail("postgis", exit::DATABASE, e.to_string()),
        Ok((Some(v), ..)) => r.ok("postgis", format!("PostGIS {v} is installed")),
        Ok((None, Some(v), trusted, superuser, can_create, _)) => {
            if superuser == Some(true) || (trusted && can_create) {
                r.ok("postgis", format!("PostGIS {v} is available; the first sync creates the extension"))
            } else {
                r.fail(
                    "postgis",
                    exit::DATABASE,
                    format!(
                        "PostGIS {v} is available but not installed, and this role may not create it: have a \
                         superuser run `CREATE EXTENSION postgis` in this database"
                    ),
                )
            }
        }
        Ok((None, None, .., major)) => r.fail(
            "postgis",
            exit::DATABASE,
            format!(
                "PostGIS is not installed on the database server: `apt-get install postgresql-{major}-postgis-3` \
                 there, then the first sync creates the extension"
            ),
        ),
    }
}

/// Whether the harvest schema exists and is fully migrated by this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migrated {
    /// No schema yet: the first sync creates it.
    Absent,
    /// Some migrations of this version are not applied yet.
    Behind,
    UpToDate,
    /// Unreadable, failed, or migrated by a newer version.
    Broken,
}

async fn schema(r: &mut Report, store: &Store) -> Migrated {
    match schema_state(store).await {
        Err(e) => {
            r.fail("schema", exit::DATABASE, e.to_string());
            Migrated::Broken
        }
        Ok((state, detail)) => {
            match state {
                Migrated::Broken => r.fail("schema", exit::DATABASE, detail),
                Migrated::Behind => r.warn("schema", detail),
                Migrated::Absent | Migrated::UpToDate => r.ok("schema", detail),
            }
            state
        }
    }
}

async fn schema_state(store: &Store) -> Result<(Migrated, String), StoreError> {
    let schema = store.schema();
    let exists: bool = sqlx::query_scalar(SCHEMA_EXISTS)
        .bind(schema)
        .fetch_one(store.pool())
        .await
        .map_err(query_err("looking for the schema"))?;
    let has_table: bool = sqlx::query_scalar(MIGRATIONS_TABLE)
        .bind(schema)
        .fetch_one(store.pool())
        .await
        .map_err(query_err("looking for the migrations table"))?;
    if !exists || !has_table {
        return Ok((
            Migrated::Absent,
            format!("schema {schema} does not exist yet: the first sync creates it"),
        ));
    }
    let applied: Vec<(i64, bool)> = sqlx::query_as(APPLIED)
        .fetch_all(store.pool())
        .await
        .map_err(query_err(format!("reading the migrations of schema {schema}")))?;
    let known: Vec<i64> = mly_core::store::known_migrations();
    let failed: Vec<i64> = applied.iter().filter(|(_, ok)| !ok).map(|(v, _)| *v).collect();
    let newer: Vec<i64> = applied.iter().map(|(v, _)| *v).filter(|v| !known.contains(v)).collect();
    let pending: Vec<i64> = known.iter().copied().filter(|v| !applied.iter().any(|(a, _)| a == v)).collect();
    let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    Ok(if !failed.is_empty() {
        (
            Migrated::Broken,
            format!(
                "schema {schema}: migration {} failed part-way: see `mly-harvest migrate`",
                list(&failed)
            ),
        )
    } else if !newer.is_empty() {
        (
            Migrated::Broken,
            format!(
                "schema {schema} was migrated by a newer mly-harvest (migration {}): upgrade mly-harvest",
                list(&newer)
            ),
        )
    } else if !pending.is_empty() {
        (
            Migrated::Behind,
            format!(
                "schema {schema}: migration {} not applied yet; the next sync (or `migrate`) applies it",
                list(&pending)
            ),
        )
    } else {
        (Migrated::UpToDate, format!("schema {schema}: up to date ({} migrations)", applied.len()))
    })
}

async fn rights(r: &mut Report, store: &Store, migrated: Migrated) {
    match missing_rights(store, migrated).await {
        Err(e) => r.fail("rights", exit::DATABASE, e.to_string()),
        Ok(missing) if missing.is_empty() => r.ok(
            "rights",
            "this role may do everything sync needs: create the schema, read and write its tables and the shared tile budget",
        ),
        Ok(missing) => {
            const SHOWN: usize = 5;
            let more = missing.len().saturating_sub(SHOWN);
            let mut list = missing.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if more > 0 {
                list.push_str(&format!(" and {more} more"));
            }
            r.fail(
                "rights",
                exit::DATABASE,
                format!("sync needs rights this role lacks: {list} (status, plan and doctor need none of them)"),
            )
        }
    }
}

async fn missing_rights(store: &Store, migrated: Migrated) -> Result<Vec<String>, StoreError> {
    let pool = store.pool();
    let mut missing = Vec::new();
    let (create, temp): (bool, bool) =
        sqlx::query_as(DB_RIGHTS).fetch_one(pool).await.map_err(query_err("reading database rights"))?;
    // sync runs `CREATE SCHEMA IF NOT EXISTS` (which PostgreSQL checks even when the schema
    // exists) and stages every tile's rows in temporary tables.
    if !create {
        missing.push("CREATE on the database".to_string());
    }
    if !temp {
        missing.push("TEMPORARY on the database".to_string());
    }
    for schema in [store.schema(), GLOBAL_SCHEMA] {
        let exists: bool = sqlx::query_scalar(SCHEMA_EXISTS)
            .bind(schema)
            .fetch_one(pool)
            .await
            .map_err(query_err("looking for a schema"))?;
        if !exists {
            continue;
        }
        let (usage, create): (bool, bool) = sqlx::query_as(SCHEMA_RIGHTS)
            .bind(schema)
            .fetch_one(pool)
            .await
            .map_err(query_err(format!("reading the rights on schema {schema}")))?;
        if !usage {
            missing.push(format!("USAGE on schema {schema}"));
        }
        // New tables come with migrations: only a schema this version still has to migrate
        // (or the shared one, whose tables migrations add) needs CREATE.
        if !create && (schema == GLOBAL_SCHEMA || migrated != Migrated::UpToDate) {
            missing.push(format!("CREATE on schema {schema}"));
        }
        let tables: Vec<String> = sqlx::query_scalar(MISSING_TABLE_RIGHTS)
            .bind(schema)
            .fetch_all(pool)
            .await
            .map_err(query_err(format!("reading the rights on the tables of {schema}")))?;
        missing.extend(tables);
    }
    Ok(missing)
}

/// Reports a block recorded by an earlier run; true when one is in force (or unknowable).
async fn block(r: &mut Report, store: &Store, cfg: &Config) -> bool {
    // A database migrated by a version before 0006 has no block table: nothing can be recorded.
    let has_table: Result<bool, StoreError> = sqlx::query_scalar(BLOCK_TABLE)
        .fetch_one(store.pool())
        .await
        .map_err(query_err("looking for the tile block table"));
    match has_table {
        Err(e) => {
            r.fail("block", exit::DATABASE, format!("unknown: {e}"));
            return true;
        }
        Ok(false) => {
            r.ok(
                "block",
                "no block recorded (this database has no block table yet: the first sync creates it)",
            );
            return false;
        }
        Ok(true) => {}
    }
    let key = BlockKey::new(&cfg.mapillary.tiles_url);
    match block::active(store, &key).await {
        Err(e) => {
            r.fail("block", exit::DATABASE, format!("unknown: {e}"));
            true
        }
        Ok(None) => {
            r.ok(
                "block",
                format!("no block of {} recorded for this machine ({})", key.tile_server, key.client_host),
            );
            false
        }
        Ok(Some(b)) => {
            r.fail("block", exit::BLOCKED, b.message());
            true
        }
    }
}

fn client(cfg: &Config, pacing: Pacing) -> Result<ApiClient, ApiError> {
    ApiClient::new(
        ApiSettings {
            graph_url: cfg.mapillary.graph_url.clone(),
            tiles_url: cfg.mapillary.tiles_url.clone(),
            token: cfg.mapillary.access_token.clone(),
            timeout: Duration::from_secs(cfg.mapillary.timeout_secs),
            // One call each is the point: a check, not a harvest.
            max_retries: 1,
            search_per_minute: cfg.limits.search_per_minute,
            entity_per_minute: cfg.limits.entity_per_minute,
            tiles_in_flight: 1,
            breaker_after: cfg.mapillary.breaker_after,
        },
        pacing,
    )
}

/// The exit code an API failure stands for.
fn api_code(e: &ApiError) -> i32 {
    if e.is_auth() { exit::AUTH } else { exit::API }
}

fn probe_tile() -> TileId {
    let (z, x, y) = PROBE_TILE;
    // A constant within z14's range.
    TileId::new(z, x, y).unwrap_or_else(|_| TileId::containing(z, 8.54, 47.37))
}

async fn token(r: &mut Report, cfg: &Config, pacing: Pacing) -> bool {
    if cfg.mapillary.access_token.is_empty() {
        r.fail(
            "token",
            exit::AUTH,
            "no access token is configured (MAPILLARY_ACCESS_TOKEN or mapillary.access_token)",
        );
        return false;
    }
    // A small box inside the probe tile: few results, and a volume the API always answers.
    let b = probe_tile().bounds();
    let (cx, cy) = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
    let small = mly_contract::tiles::Bbox::new(cx - 0.001, cy - 0.001, cx + 0.001, cy + 0.001);
    let check = async |pacing: Pacing| {
        let api = client(cfg, pacing)?;
        let result = match &small {
            Ok(bbox) => api.check_token(bbox).await,
            Err(e) => Err(ApiError::Client(e.to_string())),
        };
        result.map(|()| api.counters().search)
    };
    let mut result = check(pacing).await;
    if let Err(ApiError::Pacing { .. }) = &result {
        // The shared rate budget cannot be written (the rights check names what is missing):
        // the search was not sent, so check the token on this process's own pacing.
        result = check(Pacing::ThisProcess).await;
    }
    match result {
        Ok(calls) => {
            r.ok(
                "token",
                format!("the Graph API at {} accepted the token ({calls} call)", cfg.mapillary.graph_url),
            );
            true
        }
        Err(e @ ApiError::Client(_)) => {
            r.fail("token", exit::AUTH, e.to_string());
            false
        }
        Err(e) => {
            r.fail("token", api_code(&e), e.to_string());
            false
        }
    }
}

async fn tiles(r: &mut Report, store: &Store, cfg: &Config) {
    let tile = probe_tile();
    let ts = Tileset::Public;
    let day: NaiveDate = Utc::now().date_naive();
    let app = AppKey::from_token(cfg.mapillary.access_token.expose());
    let limits = TileLimits { per_day: cfg.limits.tiles_per_day, per_minute: cfg.limits.tiles_per_minute };
    // The one write doctor makes: its tile request counts in the app's daily budget.
    let counted = match budget::take(store, &app, day, limits, 1).await {
        Ok(g) if g.tiles == 0 => {
            let used = budget::used(store, &app, day).await.unwrap_or(i64::from(limits.per_day));
            r.warn(
                "tiles",
                format!(
                    "not checked: today's tile budget is spent ({used} of {}); sync carries on tomorrow",
                    limits.per_day
                ),
            );
            return;
        }
        Ok(g) => {
            // Another process may hold the next slots of the app's pace: wait for ours.
            tokio::time::sleep(g.first_in.min(Duration::from_secs(120))).await;
            "counted in today's tile budget".to_string()
        }
        Err(e) => format!("not counted in the tile budget: {}", short_reason(&e)),
    };
    // Tiles are paced by the budget taken above, not by the client.
    let api = match client(cfg, Pacing::ThisProcess) {
        Ok(a) => a,
        Err(e) => {
            r.fail("tiles", exit::API, e.to_string());
            return;
        }
    };
    let started = Instant::now();
    let what = format!("{} tile {}/{}/{}", ts.name(), tile.z, tile.x, tile.y);
    match api.tile(ts, tile, None).await {
        Ok(TileResponse::Data { bytes, .. }) => match mvt::decode_tile(ts, tile, &bytes) {
            Ok(d) => r.ok(
                "tiles",
                format!(
                    "{what}: {} images, {} KB in {} ms (1 tile request, {counted})",
                    d.images.len(),
                    bytes.len().div_ceil(1024),
                    started.elapsed().as_millis()
                ),
            ),
            Err(e) => r.fail(
                "tiles",
                exit::API,
                format!("{what}: the answer is not a vector tile ({e}); a proxy or a block page? (1 tile request, {counted})"),
            ),
        },
        Ok(TileResponse::NotModified | TileResponse::Empty) => r.fail(
            "tiles",
            exit::API,
            format!(
                "{what}: the tile server answered no data for a tile that holds thousands of images (a 403, 404 or \
                 empty answer): check mapillary.tiles_url and that the token is valid for tiles (1 tile request, {counted})"
            ),
        ),
        Err(e) => r.fail("tiles", api_code(&e), format!("{e} (1 tile request, {counted})")),
    }
}

/// The first line of a database error, without sqlx's position details.
fn short_reason(e: &StoreError) -> String {
    match e {
        StoreError::Query { source: sqlx::Error::Database(db), .. } => db.message().to_string(),
        other => other.to_string(),
    }
}
