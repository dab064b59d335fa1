//! Command-line interface: argument parsing, command dispatch, and the mapping of every error to
//! a one-line message and a documented exit code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use mly_contract::tiles::HARVEST_ZOOM;
use mly_core::jobs::{self, JobsError};
use mly_core::pipeline::{self, PipelineError, SyncOptions, estimate};
use mly_core::region::{Region, RegionError};
use mly_core::store::{Store, StoreError};
use mly_sim::{SimError, SimulateArgs};

use crate::exit;

/// The most z14 tiles one run plans (each becomes a job row per tileset); the whole world is 2^28.
pub const MAX_TILES_PER_RUN: u64 = 5_000_000;

/// Regions whose tile requests take more days of the daily tile budget than this need `--yes`.
pub const MAX_DAYS_WITHOUT_CONFIRM: f64 = 7.0;

/// The most images per z14 tile `plan --images-per-tile` takes (the densest real tiles hold tens of
/// thousands); it keeps the estimate's arithmetic far from overflow.
pub const MAX_IMAGES_PER_TILE: u64 = 10_000_000;

/// The oldest `--refresh-older-than` accepted: older than any Mapillary image.
const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses `--refresh-older-than` (humantime, e.g. `30d`), at most [`MAX_AGE`].
fn parse_age(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > MAX_AGE {
        return Err(format!("{s:?} is more than 100 years"));
    }
    Ok(d)
}

/// mly-harvest keeps a PostGIS database in step with Mapillary's street-level imagery.
#[derive(Debug, Parser)]
#[command(name = "mly-harvest", version, about)]
pub struct Cli {
    /// Config file (default: ./mly-harvest.toml when present).
    #[arg(long, global = true, env = "MLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Write log lines to this file instead of standard error.
    #[arg(long, global = true)]
    pub log_file: Option<PathBuf>,
    /// Log line format: text for people, json (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (fields flattened), for journald/Loki/Elasticsearch.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Harvest REGION into PostGIS (or resume the unfinished run for it).
    Sync(SyncArgs),
    /// Dry run: tiles and API requests a first harvest of REGION needs. Spends no quota.
    Plan(PlanArgs),
    /// Runs and their tile states.
    Status(StatusArgs),
    /// Create or upgrade the database schema.
    Migrate,
    /// Serve the offline Mapillary API v4 simulator.
    #[command(after_help = mly_sim::HELP)]
    Simulate(SimulateArgs),
    /// Store a styled QGIS project in the database (open it in QGIS from the PostgreSQL connection).
    QgisProject(crate::ops::qgis::QgisProjectArgs),
    /// Draw a run: its region, z14 tiles coloured by state, and the harvested coverage.
    Report(crate::ops::report::ReportArgs),
    /// Check everything a real run needs: config, database, PostGIS, rights, a recorded block,
    /// the token (one Graph call) and tile access (one tile, counted in the budget).
    Doctor(crate::ops::doctor::DoctorArgs),
    /// The pictures of harvested images: `images download` (resumable, with sidecars).
    Images(crate::images_cmd::ImagesArgs),
}

/// `sync` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("owner").args(["creator", "organization"]).multiple(true)))]
pub struct SyncArgs {
    /// A config region name, 'west,south,east,north', 'lon,lat@radius' (m or km, e.g.
    /// 13.0,55.6@200m), or a GeoJSON file. With --creator/--organization: only their records in it.
    #[arg(allow_hyphen_values = true, required_unless_present = "owner")]
    pub region: Option<String>,
    /// Harvest every image of this Mapillary user (and the map features seen in them) through
    /// the Graph API's paged search instead of tiles; with REGION, only those in it.
    #[arg(long, value_name = "USERNAME")]
    pub creator: Option<String>,
    /// Harvest the images of this Mapillary organization (id); without --creator it needs a REGION.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub organization: Option<i64>,
    /// With --creator/--organization: only images captured on or after DATE (YYYY-MM-DD, UTC, or an RFC 3339 time).
    #[arg(long, value_name = "DATE", value_parser = crate::scope::parse_since, requires = "owner")]
    pub since: Option<i64>,
    /// With --creator/--organization: only images captured on or before DATE (the whole day).
    #[arg(long, value_name = "DATE", value_parser = crate::scope::parse_until, requires = "owner")]
    pub until: Option<i64>,
    /// Confirm a region larger than harvest.max_tiles_without_confirm tiles.
    #[arg(long)]
    pub yes: bool,
    /// Re-enrich records enriched longer ago than this (e.g. 30d, at most 100 years), within the quota.
    /// With --creator/--organization: a complete pass (everything listed again, deletions checked)
    /// when the last one finished longer ago than this; 0s makes one now.
    #[arg(long, value_parser = parse_age)]
    pub refresh_older_than: Option<Duration>,
    /// Re-read every harvested tile at least this often, a slice each night (default 7d); tiles
    /// not due are fetched only where the z12 tile above them shows a change. 0s re-reads all.
    #[arg(long, value_parser = parse_age)]
    pub refresh_tiles_older_than: Option<Duration>,
    /// Stop after this many tiles (for trying things out); the run resumes later.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_TILES_PER_RUN), conflicts_with = "owner")]
    pub max_tiles: Option<u64>,
    /// The UTC day the tile budget is counted against (default: today). For tests and backfills.
    #[arg(long, hide = true)]
    pub budget_day: Option<chrono::NaiveDate>,
    /// Write Prometheus metrics of the run to this file at its end, failed runs included
    /// (atomically; for node_exporter's textfile collector, name it *.prom).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Ask the tile server even though it blocked this IP and the block is not over (asking
    /// during a block extends it).
    #[arg(long)]
    pub ignore_block: bool,
    /// Filled by the run for the metrics file.
    #[arg(skip)]
    pub trace: Option<std::sync::Arc<mly_core::pipeline::trace::RunTrace>>,
}

impl SyncArgs {
    /// What the run harvests, as the metrics label it: the region, or the scope.
    pub fn label(&self) -> String {
        let mut who = Vec::new();
        if let Some(c) = &self.creator {
            who.push(format!("creator:{c}"));
        }
        if let Some(o) = self.organization {
            who.push(format!("organization:{o}"));
        }
        match (who.is_empty(), &self.region) {
            (true, r) => r.clone().unwrap_or_default(),
            (false, Some(r)) => format!("{} in {r}", who.join("+")),
            (false, None) => who.join("+"),
        }
    }
}

/// `plan` options.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// A config region name, 'west,south,east,north', or a GeoJSON file.
    #[arg(allow_hyphen_values = true)]
    pub region: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Images per z14 tile the estimate assumes (1 to 10,000,000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES_PER_TILE))]
    pub images_per_tile: u64,
}

/// `status` options.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A run id (default: the latest runs).
    pub run: Option<i64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Any error that ends the program; `exit_code` classifies it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Scope(#[from] mly_core::pipeline::scope::ScopeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// Boxed: the run's error carries its API error whole, which would make every CliError large.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    #[error(transparent)]
    Simulator(#[from] SimError),
    #[error("while writing output: {0}")]
    Output(#[from] serde_json::Error),
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("interrupted before the run started; nothing was changed")]
    Interrupted,
    #[error(transparent)]
    Metrics(#[from] crate::ops::metrics::MetricsError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Images(#[from] mly_core::images::ImagesError),
}

impl From<PipelineError> for CliError {
    fn from(e: PipelineError) -> CliError {
        CliError::Pipeline(Box::new(e))
    }
}

impl CliError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            // A broken token is refused like one the API refuses.
            CliError::Config(ConfigError::Token) => exit::AUTH,
            CliError::Config(_) => exit::CONFIG,
            CliError::Region(_) | CliError::Input(_) => exit::INPUT,
            CliError::Scope(_) => exit::USAGE,
            CliError::Store(_) | CliError::Jobs(_) => exit::DATABASE,
            CliError::Pipeline(e) => exit::of_pipeline_error(e),
            CliError::Simulator(_) => exit::INPUT,
            CliError::Output(_) => exit::INTERNAL,
            CliError::Stdout(_) => exit::CONFIG,
            CliError::Interrupted => exit::INTERRUPTED,
            CliError::Metrics(_) => exit::CONFIG,
            CliError::Ops(e) => e.exit_code(),
            CliError::Images(e) => exit::of_images_error(e),
        }
    }
}

/// Writes command output to standard output. A closed pipe (`sync ... | head -1`) is not an
/// error: the reader has what it wanted, so the command ends quietly with its own exit code. Any
/// other failure (a full disk) is one error line and exit 3, like any output file.
pub fn emit(text: &str) -> Result<(), CliError> {
    write_stdout(text).map_err(CliError::Stdout)
}

/// [`emit`] for modules with their own error type: a closed pipe is Ok, other failures are returned.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Text from the database or the user (region names, file names) made safe for a terminal:
/// control characters (newlines, ANSI escapes) are shown escaped, never sent raw.
pub fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Loads the config the way every command does: `--config`, then the process environment.
pub fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let cfg = Config::load(cli.config.as_deref(), &env)?;
    crate::config::register_secret(cfg.mapillary.access_token.expose());
    crate::config::register_secret(&password_of(cfg.database.url.expose()));
    Ok(cfg)
}

fn password_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, pw)| pw.to_string())
        .unwrap_or_default()
}

/// Runs the parsed command; returns the exit code for a success that still needs one (e.g. partial).
pub async fn run(mut cli: Cli) -> Result<i32, CliError> {
    match crate::ops::metrics::Watch::start(&mut cli) {
        Some(watch) => watch.finish(run_command(cli).await).await,
        None => run_command(cli).await,
    }
}

async fn run_command(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Simulate(ref args) => {
            mly_sim::run(args.clone()).await?;
            Ok(exit::OK)
        }
        Command::Plan(ref args) => {
            let cfg = load_config(&cli)?;
            let region = Region::resolve(&args.region, cfg.region_spec(&args.region).as_ref())?;
            let est = estimate::estimate(
                &region,
                &cfg.harvest_settings(),
                &cfg.limit_settings(),
                args.images_per_tile,
            );
            if args.json {
                emit(&format!("{}\n", serde_json::to_string_pretty(&est)?))?;
            } else {
                emit(&est.render())?;
            }
            Ok(exit::OK)
        }
        Command::Migrate => {
            let cfg = load_config(&cli)?;
            let store = connect(&cfg).await?;
            store.migrate().await?;
            emit(&format!("schema {:?} is up to date\n", store.schema()))?;
            Ok(exit::OK)
        }
        Command::QgisProject(ref args) => {
            let cfg = load_config(&cli)?;
            let store = connect(&cfg).await?;
            store.migrate().await?;
            crate::ops::qgis::run(&store, &cfg, args).await?;
            Ok(exit::OK)
        }
        Command::Report(ref args) => {
            let cfg = load_config(&cli)?;
            let store = connect(&cfg).await?;
            crate::ops::report::run(&store, args).await?;
            Ok(exit::OK)
        }
        Command::Doctor(ref args) => crate::ops::doctor::run(&cli, args).await,
        Command::Images(ref args) => crate::images_cmd::run(&cli, args).await,
        Command::Status(ref args) => {
            let cfg = load_config(&cli)?;
            // Read-only: no migration, and the server refuses any write on these sessions.
            let store = connect_read_only(&cfg).await?;
            if !store.schema_exists().await? {
                if args.json {
                    emit("[]\n")?;
                } else {
                    emit(&format!(
                        "no runs yet: schema {:?} does not exist in this database (sync or migrate creates it)\n",
                        store.schema()
                    ))?;
                }
                return Ok(exit::OK);
            }
            let code = status(&store, args).await?;
            // Best effort: a read-only role may not see the shared block table; status still works.
            if !args.json
                && let Ok(Some(b)) =
                    jobs::block::active(&store, &jobs::block::BlockKey::new(&cfg.mapillary.tiles_url)).await
            {
                emit(&format!("{}\n", b.message()))?;
            }
            Ok(code)
        }
        Command::Sync(ref args) if args.creator.is_some() || args.organization.is_some() => {
            pipeline::interrupt::listen();
            let cfg = load_config(&cli)?;
            crate::scope::sync(args, &cfg).await
        }
        Command::Sync(ref args) => {
            // From here on SIGINT/SIGTERM stop the run cleanly instead of killing the process.
            pipeline::interrupt::listen();
            let cfg = load_config(&cli)?;
            // clap requires REGION without --creator/--organization.
            let region_arg = args.region.as_deref().unwrap_or_default();
            let region = Region::resolve(region_arg, cfg.region_spec(region_arg).as_ref())?;
            let tiles = region.tile_count(HARVEST_ZOOM);
            if tiles == 0 {
                return Err(CliError::Input(format!("region {:?} covers no z14 tile", region.name)));
            }
            // What needs confirming is what the run costs: tile requests (tiles x tilesets) and
            // the days of tile budget they take.
            let sets = cfg.harvest.tilesets.len() as u64;
            let requests = tiles.saturating_mul(sets);
            let days = requests as f64 / f64::from(cfg.limits.tiles_per_day);
            if (requests > cfg.harvest.max_tiles_without_confirm || days > MAX_DAYS_WITHOUT_CONFIRM)
                && !args.yes
            {
                return Err(CliError::Input(format!(
                    "region {:?} covers {tiles} z14 tiles x {sets} tilesets = {requests} tile requests, {days:.1} days of limits.tiles_per_day = {} (more than harvest.max_tiles_without_confirm = {} requests or {MAX_DAYS_WITHOUT_CONFIRM} days); pass --yes to harvest it",
                    region.name, cfg.limits.tiles_per_day, cfg.harvest.max_tiles_without_confirm
                )));
            }
            if tiles > MAX_TILES_PER_RUN {
                return Err(CliError::Input(format!(
                    "region {:?} covers {tiles} z14 tiles; one run takes at most {MAX_TILES_PER_RUN}: split the region into several",
                    region.name
                )));
            }
            let store = store_for_sync(&cfg).await?;
            let opts = SyncOptions {
                refresh_older_than: args.refresh_older_than,
                max_tiles: args.max_tiles,
                budget_day: args.budget_day,
                trace: args.trace.clone(),
                ignore_block: args.ignore_block,
                refresh_tiles_older_than: args.refresh_tiles_older_than,
            };
            let summary = pipeline::sync(&cfg.sync_settings(), &store, &region, opts).await?;
            emit(&format!("{}\n", crate::summary::render(&summary)))?;
            Ok(exit::of_outcome(summary.outcome))
        }
    }
}

/// The store a sync writes to, migrated. Before the run exists there is nothing to clean up: an
/// interrupt ends at once (a migration in flight rolls back with the connection).
pub(crate) async fn store_for_sync(cfg: &Config) -> Result<Store, CliError> {
    tokio::select! {
        biased;
        _ = pipeline::interrupt::wait() => Err(CliError::Interrupted),
        store = async {
            let store = connect(cfg).await?;
            store.migrate().await?;
            Ok::<_, CliError>(store)
        } => store,
    }
}

pub(crate) async fn connect(cfg: &Config) -> Result<Store, CliError> {
    let url = cfg.database.url.expose();
    if url.is_empty() {
        return Err(ConfigError::Value {
            key: "database.url".into(),
            problem: "is not set (set DATABASE_URL or database.url)".into(),
        }
        .into());
    }
    Ok(Store::connect(url, &cfg.database.schema, cfg.database.max_connections).await?)
}

async fn connect_read_only(cfg: &Config) -> Result<Store, CliError> {
    let url = cfg.database.url.expose();
    if url.is_empty() {
        return Err(ConfigError::Value {
            key: "database.url".into(),
            problem: "is not set (set DATABASE_URL or database.url)".into(),
        }
        .into());
    }
    Ok(Store::connect_read_only(url, &cfg.database.schema, cfg.database.max_connections.min(2)).await?)
}

async fn status(store: &Store, args: &StatusArgs) -> Result<i32, CliError> {
    /// One run, its tile counts (or, for a creator or organization, its listing) and its live
    /// workers, as `status --json` prints it.
    #[derive(serde::Serialize)]
    struct RunStatus {
        run: jobs::RunInfo,
        tiles: Vec<jobs::TileCount>,
        /// None when the workers table could not be read.
        workers: Option<Vec<mly_core::jobs::workers::Worker>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        scope: Option<jobs::scopes::ScopeStatus>,
    }
    let runs = jobs::runs(store, 20).await?;
    let runs: Vec<_> = runs.into_iter().filter(|r| args.run.is_none_or(|id| r.id == id)).collect();
    if let (Some(id), true) = (args.run, runs.is_empty()) {
        return Err(CliError::Input(format!("no run with id {id}")));
    }
    // The processes working on the runs now (a heartbeat older than its lease is not live).
    // Best effort like the block hint: a role granted SELECT before the table existed cannot
    // read it, and status still shows the runs (workers "unknown", null in JSON).
    let workers = mly_core::jobs::workers::live(store).await;
    let mut scopes =
        jobs::scopes::scope_statuses(store, &runs.iter().map(|r| jobs::RunId(r.id)).collect::<Vec<_>>())
            .await?;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let tiles = jobs::run_tiles(store, jobs::RunId(run.id)).await?;
        let live =
            workers.as_ref().ok().map(|ws| ws.iter().filter(|w| w.run_id == run.id).cloned().collect());
        let scope = scopes.remove(&jobs::RunId(run.id));
        out.push(RunStatus { run, tiles, workers: live, scope });
    }
    let mut text = String::new();
    if args.json {
        text = format!("{}\n", serde_json::to_string_pretty(&out)?);
    } else if out.is_empty() {
        text.push_str("no runs yet\n");
    } else {
        use std::fmt::Write as _;
        for RunStatus { run: r, tiles, workers: live, scope } in &out {
            // Writing into a String cannot fail.
            if let Some(s) = scope {
                let _ = writeln!(
                    text,
                    "run {} {} [{}] started {}{}: {:?} pass, {}, {} pages, {} images listed, {} kept, newest capture {}",
                    r.id,
                    printable(&r.region_name),
                    r.status,
                    r.started_at,
                    r.finished_at.as_deref().map(|f| format!(", finished {f}")).unwrap_or_default(),
                    s.pass,
                    s.phase,
                    s.pages,
                    s.listed,
                    s.kept,
                    s.newest_captured_at.as_deref().unwrap_or("none")
                );
                continue;
            }
            let _ = writeln!(
                text,
                "run {} {} [{}] started {}{}: {}/{} tiles done, {} skipped, {} failed, {} pending, {} leased",
                r.id,
                printable(&r.region_name),
                r.status,
                r.started_at,
                r.finished_at.as_deref().map(|f| format!(", finished {f}")).unwrap_or_default(),
                r.tiles_done,
                r.tiles_total,
                r.tiles_skipped,
                r.tiles_failed,
                r.tiles_pending,
                r.tiles_leased
            );
            for t in tiles {
                let _ = writeln!(text, "    {:<30} {:<8} {}", printable(&t.tileset), t.state, t.count);
            }
            if let Err(e) = &workers {
                let _ = writeln!(text, "    workers: unknown ({e})");
            }
            for w in live.iter().flatten() {
                let _ = writeln!(
                    text,
                    "    worker {} pid {}: heartbeat {} ({:.0} s ago)",
                    printable(&w.host),
                    w.pid,
                    w.heartbeat_at,
                    w.heartbeat_age_secs
                );
            }
        }
    }
    emit(&text)?;
    Ok(exit::OK)
}
