//! Progress reporting: indicatif bars on a terminal, periodic log lines otherwise (cron).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// Something that can describe the run's progress in one line.
pub trait Source: Send + Sync {
    /// Counts for the progress line.
    fn line(&self) -> String;
}

/// A progress display for the tiles of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: JoinHandle<()>,
}

impl Progress {
    /// Starts showing progress over `total` tiles.
    pub fn start(total: u64, src: Arc<dyn Source>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tiles  eta {eta}\n  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            let b = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    b.set_message(src.line());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
            Progress { bar: Some(bar), ticker }
        } else {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    tracing::info!(progress = %src.line(), "progress");
                }
            });
            Progress { bar: None, ticker }
        }
    }

    /// One tile settled.
    pub fn tick(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Stops the display.
    pub fn finish(self) {
        self.ticker.abort();
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
