//! Offline simulator of the Mapillary API v4 (`mly-harvest simulate`).
//!
//! One port serves both hosts of the real service: the Graph API paths (`/{id}`, `/images`, ...)
//! and the tile paths (`/maps/vtp/{tileset}/2/{z}/{x}/{y}`).
//!
//! The simulator reads nothing outside its own binary at run time unless told to: the real
//! captures it can serve come only from `--fixtures DIR`, read by its own code (`fixture`), never
//! by the harvester's decoder.

mod args;
mod cdn;
mod encode;
mod faults;
pub mod fixture;
mod graph;
mod latency;
mod limits;
mod server;
mod world;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use args::{EmptyTile, HELP, SimulateArgs};
pub use faults::FaultsError;
pub use fixture::FixtureError;
pub use latency::LatencySpec;

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
    /// The `--fixtures` directory does not hold a usable real capture.
    #[error("simulator: --fixtures: {0}")]
    Fixture(#[from] fixture::FixtureError),
    /// The access log could not be opened.
    #[error("simulator: while opening access log {path}: {source}")]
    AccessLog { path: String, source: std::io::Error },
    /// Serving failed.
    #[error("simulator: while serving: {0}")]
    Serve(std::io::Error),
}

/// Serves on an already bound listener until `shutdown` completes (in-process use, e.g. tests).
pub async fn serve(
    args: &SimulateArgs,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let local = listener.local_addr().map_err(|source| SimError::Bind { addr: args.listen, source })?;
    let state = Arc::new(server::AppState::new(args, local)?);
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
    let state = Arc::new(server::AppState::new(&args, addr)?);
    let shutdown = shutdown_signal()?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
    drop(out);
    tracing::info!(%addr, seed = args.seed, epoch = args.epoch, "simulator listening");
    serve_state(state, listener, shutdown).await
}
