//! Offline simulator of the Mapillary API v4 (`mly-harvest simulate`).

pub mod encode;
pub mod world;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator: {0}")]
    Other(String),
}

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
    /// TOML file of fault probabilities.
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Write one line per request here (tokens redacted).
    #[arg(long)]
    pub access_log: Option<PathBuf>,
}

/// Runs the simulator until SIGINT/SIGTERM.
pub async fn run(_args: SimulateArgs) -> Result<(), SimError> {
    Err(SimError::Other("not implemented yet".into()))
}
