//! Offline simulator of the Mapillary API v4 (`mly-harvest simulate`).
//!
//! One port serves both hosts of the real service: the Graph API paths (`/{id}`, `/images`, ...)
//! and the tile paths (`/maps/vtp/{tileset}/2/{z}/{x}/{y}`). Limitation: only z14 tiles carry
//! data; lower zooms (the real `overview`/`sequence` layers) answer like empty tiles.

pub mod encode;
pub mod faults;
pub mod graph;
pub mod limits;
pub mod server;
pub mod world;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Anything else.
    #[error("simulator: {0}")]
    Other(String),
    /// A command-line value is unusable.
    #[error("simulator: {0}")]
    BadArg(String),
    /// The listen address could not be bound.
    #[error("simulator: while binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The faults file is unusable.
    #[error("simulator: {0}")]
    Faults(#[from] faults::FaultsError),
    /// The access log could not be opened.
    #[error("simulator: while opening access log {path}: {source}")]
    AccessLog { path: String, source: std::io::Error },
    /// Serving failed.
    #[error("simulator: while serving: {0}")]
    Serve(std::io::Error),
}

/// How tiles without any data answer (the real behaviour is undocumented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmptyTile {
    /// 200 with a zero-length body.
    #[value(name = "200-empty")]
    Empty200,
    /// 204 No Content.
    #[value(name = "204")]
    NoContent,
    /// 404 with an error body.
    #[value(name = "404")]
    NotFound,
    /// 403 with an error body (the old tiles doc: "tile does not exist, safe to ignore").
    #[value(name = "403")]
    Forbidden,
    /// 200 with an MVT holding one empty layer `mapillary-empty`.
    #[value(name = "mvt-empty")]
    MvtEmpty,
}

/// The single token the simulator has "issued" unless `--token` says otherwise.
pub const DEFAULT_TOKEN: &str = "MLY|4000000000000001|0123456789abcdef0123456789abcdef";

/// Command-line options of `mly-harvest simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seed of the synthetic world.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days the world has advanced since epoch 0 (new uploads, deletions, moves).
    #[arg(long, default_value_t = 0)]
    pub epoch: u32,
    /// TOML file of faults, each off unless given: `[tiles]`/`[search]`/`[entity]` probabilities
    /// (error_5xx, throttle, slow + slow_secs, truncate, reset; tiles: corrupt, transient_404;
    /// search/entity: query_timeout), `permanent = ["z/x/y"]`, and the per-IP tile block
    /// `[block] after_tiles = N, secs = S` (302 to the login page after N tile requests, lasting S
    /// seconds after the last request made during it).
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Write one line per request here (tokens redacted).
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Tile requests allowed per UTC day.
    #[arg(long, default_value_t = 50_000)]
    pub tiles_per_day: u64,
    /// Search requests (`/images`, `/map_features`, `/image_ids`) allowed per sliding minute.
    #[arg(long, default_value_t = 10_000)]
    pub search_per_minute: u64,
    /// Entity requests (`/{id}`, `/?ids=`, `/{id}/detections`) allowed per sliding minute.
    #[arg(long, default_value_t = 60_000)]
    pub entity_per_minute: u64,
    /// HTTP status of the code-4 "Application request limit reached" answer (403 is how the live
    /// service is reported to send it, §13.9).
    #[arg(long, default_value_t = 429)]
    pub throttle_status: u16,
    /// A token the simulator accepts (repeatable).
    #[arg(long = "token", default_values_t = [DEFAULT_TOKEN.to_string()])]
    pub token: Vec<String>,
    /// How tiles without data answer.
    #[arg(long, value_enum, default_value = "200-empty")]
    pub empty_tile: EmptyTile,
    /// A bbox search matching more records than this fails with "Please reduce the amount of data".
    #[arg(long, default_value_t = 5000)]
    pub dense_limit: usize,
    /// Most ids one `?ids=` / `image_ids=` call may name.
    #[arg(long, default_value_t = 50)]
    pub max_ids: usize,
}

impl SimulateArgs {
    /// Defaults of every option (as the command line gives them), listening on `listen`.
    pub fn with_listen(listen: SocketAddr) -> SimulateArgs {
        SimulateArgs {
            listen,
            seed: 1,
            epoch: 0,
            faults: None,
            access_log: None,
            tiles_per_day: 50_000,
            search_per_minute: 10_000,
            entity_per_minute: 60_000,
            throttle_status: 429,
            token: vec![DEFAULT_TOKEN.to_string()],
            empty_tile: EmptyTile::Empty200,
            dense_limit: 5000,
            max_ids: 50,
        }
    }
}

/// Serves on an already bound listener until `shutdown` completes (in-process use, e.g. tests).
pub async fn serve(
    args: &SimulateArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let state = Arc::new(server::AppState::new(args)?);
    serve_state(state, listener, shutdown).await
}

async fn serve_state(
    state: Arc<server::AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let app = server::router(state).into_make_service_with_connect_info::<server::ConnCtl>();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = axum::serve(server::KillableListener(listener), app).with_graceful_shutdown(async move {
        let _ = rx.await;
    });
    let serving = tokio::spawn(async move { serving.await });
    shutdown.await;
    let _ = tx.send(());
    // Slow-fault answers may hold connections for long: give in-flight requests a moment, then stop.
    match tokio::time::timeout(Duration::from_secs(2), serving).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(SimError::Serve(e)),
        Ok(Err(e)) => Err(SimError::Other(format!("server task failed: {e}"))),
    }
}

/// Registers SIGINT/SIGTERM handlers now (before readiness is announced, so a signal sent right
/// after the ready line is never missed) and returns a future that ends on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, SimError> {
    use tokio::signal::unix::{SignalKind, signal};
    let register =
        |kind| signal(kind).map_err(|e| SimError::Other(format!("cannot listen for signals: {e}")));
    let mut term = register(SignalKind::terminate())?;
    let mut int = register(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("simulator shutting down");
    })
}

/// Runs the simulator until SIGINT/SIGTERM, printing `listening on http://ADDR` once ready.
pub async fn run(args: SimulateArgs) -> Result<(), SimError> {
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| SimError::Bind { addr: args.listen, source })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind { addr: args.listen, source })?;
    // Validate everything before announcing readiness, so a bad faults file fails fast.
    let state = Arc::new(server::AppState::new(&args)?);
    let shutdown = shutdown_signal()?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    drop(out);
    tracing::info!(%addr, seed = args.seed, epoch = args.epoch, "simulator listening");
    serve_state(state, listener, shutdown).await
}
