//! `mly-harvest images download`: the command line of picture downloads (which images, which
//! size, where), their progress display and their summary line. The work itself is
//! `mly_core::images`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::cli::{Cli, CliError, connect, emit, load_config};
use crate::exit;
use mly_core::api::{ApiClient, ApiError};
use mly_core::images::{self, Counters, DownloadOptions, ImagesError, Selection, Summary, ThumbSize};
use mly_core::pipeline::interrupt;
use mly_core::region::Region;

/// Downloads in flight at most (`--concurrency`).
const MAX_CONCURRENCY: i64 = 256;
/// How often the progress line is logged when standard error is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `images` subcommands.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

/// What to do with the pictures of harvested images.
#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Download the pictures of harvested images into DIR/<sequence>/<captured_at>_<id>.jpg, with
    /// GeoJSON and CSV sidecars; a rerun fetches only what is missing or changed.
    Download(DownloadArgs),
}

/// `images download` options.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).multiple(false)))]
pub struct DownloadArgs {
    /// Images where SQL holds: a boolean expression over the columns of images_live (e.g.
    /// "captured_at >= '2024-01-01' AND ST_Intersects(geom, ST_MakeEnvelope(13.0, 55.6, 13.01, 55.61, 4326))"),
    /// run in a READ ONLY transaction with a statement timeout.
    #[arg(long = "where", value_name = "SQL", group = "selection", allow_hyphen_values = true)]
    pub where_clause: Option<String>,
    /// Images in REGION: a config region name, 'west,south,east,north', or a GeoJSON file.
    #[arg(long, value_name = "REGION", group = "selection", allow_hyphen_values = true)]
    pub region: Option<String>,
    /// The images of one sequence.
    #[arg(long, value_name = "ID", group = "selection")]
    pub sequence: Option<String>,
    /// The images a map feature was seen in.
    #[arg(long, value_name = "ID", group = "selection")]
    pub map_feature: Option<i64>,
    /// Picture size: 256, 1024, 2048 (px wide) or original.
    #[arg(long, value_parser = parse_size)]
    pub size: ThumbSize,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Re-hash files already downloaded (default: a file of the recorded length is complete).
    #[arg(long)]
    pub verify: bool,
    /// Downloads in flight at once (1 to 256).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=MAX_CONCURRENCY))]
    pub concurrency: i64,
}

fn parse_size(s: &str) -> Result<ThumbSize, String> {
    ThumbSize::from_name(s).ok_or_else(|| format!("{s:?} is not a size: use 256, 1024, 2048 or original"))
}

/// Runs an `images` subcommand.
pub async fn run(cli: &Cli, args: &ImagesArgs) -> Result<i32, CliError> {
    match &args.command {
        ImagesCommand::Download(a) => download(cli, a).await,
    }
}

async fn download(cli: &Cli, a: &DownloadArgs) -> Result<i32, CliError> {
    // From here on SIGINT/SIGTERM stop the run cleanly instead of killing the process.
    interrupt::listen();
    let cfg = load_config(cli)?;
    let selection = if let Some(c) = &a.where_clause {
        Selection::Where(c.clone())
    } else if let Some(r) = &a.region {
        Selection::region(&Region::resolve(r, cfg.region_spec(r).as_ref())?)
    } else if let Some(s) = &a.sequence {
        Selection::Sequence(s.clone())
    } else if let Some(f) = a.map_feature {
        Selection::MapFeature(f)
    } else {
        // clap's required group makes this unreachable; still an error, not a panic.
        return Err(CliError::Input("give one of --where, --region, --sequence, --map-feature".into()));
    };
    if cfg.mapillary.access_token.is_empty() {
        let message = "no access token is configured; set MAPILLARY_ACCESS_TOKEN or mapillary.access_token";
        return Err(ImagesError::Api(ApiError::Auth { message: message.into() }).into());
    }
    // Before anything is under way an interrupt ends at once (a migration rolls back).
    let store = tokio::select! {
        biased;
        _ = interrupt::wait() => return Err(CliError::Interrupted),
        store = async {
            let store = connect(&cfg).await?;
            store.migrate().await?;
            Ok::<_, CliError>(store)
        } => store?,
    };
    // The URL lookups take slots of the app's shared entity timeline, like a sync's.
    let app = mly_core::jobs::budget::AppKey::from_token(cfg.mapillary.access_token.expose());
    let pacing = mly_core::api::Pacing::Shared { store: store.clone(), app };
    let api = ApiClient::new(cfg.api_settings(), pacing).map_err(ImagesError::Api)?;
    let opts = DownloadOptions {
        out: a.out.clone(),
        size: a.size,
        verify: a.verify,
        concurrency: usize::try_from(a.concurrency).unwrap_or(1),
        timeout: Duration::from_secs(cfg.mapillary.timeout_secs),
        max_retries: cfg.mapillary.max_retries,
        breaker_after: cfg.mapillary.breaker_after,
    };
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(counters.clone());
    let result = images::download(&store, &api, &selection, &opts, counters, interrupt::wait()).await;
    progress.finish();
    let summary = result?;
    emit(&format!("{}\n", render(&summary)))?;
    Ok(if summary.interrupted {
        exit::INTERRUPTED
    } else if summary.counts.failed > 0 {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

/// The summary line: files, bytes, MB/s, refreshed URLs, skipped, failed.
fn render(s: &Summary) -> String {
    let c = &s.counts;
    let secs = s.elapsed.as_secs_f64().max(1e-3);
    let mb = c.bytes as f64 / 1e6;
    let head = if s.interrupted { "images download interrupted" } else { "images download" };
    let sidecars: Vec<String> = s.sidecars.iter().map(|p| p.display().to_string()).collect();
    let mut line = format!(
        "{head}: {} files, {mb:.1} MB in {secs:.1} s ({:.1} MB/s, {:.0} files/s); {} refreshed URLs; {} skipped (already complete); {} failed; {} of {} selected; {} Graph calls; in {}",
        c.files,
        mb / secs,
        c.files as f64 / secs,
        c.refreshed,
        c.skipped,
        c.failed,
        c.files + c.skipped,
        c.selected,
        s.graph_calls,
        s.root.display(),
    );
    if !sidecars.is_empty() {
        line.push_str(&format!(", sidecars list {} files: {}", s.listed, sidecars.join(", ")));
    }
    if s.interrupted {
        line.push_str("; the same command resumes");
    } else if c.failed > 0 {
        line.push_str("; the same command retries the failed ones");
    }
    crate::cli::printable(&line)
}

/// The progress line's counts.
fn line(c: &Counters) -> String {
    let c = c.counts();
    format!(
        "{} files ({:.1} MB), {} refreshed URLs, {} skipped, {} failed",
        c.files,
        c.bytes as f64 / 1e6,
        c.refreshed,
        c.skipped,
        c.failed
    )
}

/// A progress bar on a terminal, a log line every 10 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    ticker: JoinHandle<()>,
}

impl Progress {
    fn start(counters: Arc<Counters>) -> Progress {
        if !std::io::stderr().is_terminal() {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LOG_EVERY).await;
                    tracing::info!(progress = %line(&counters), "images download");
                }
            });
            return Progress { bar: None, ticker };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} pictures  eta {eta}\n  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let c = counters.counts();
                b.set_length(c.to_fetch);
                b.set_position(c.files + c.failed);
                b.set_message(line(&counters));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Progress { bar: Some(bar), ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mly_core::images::Counts;

    #[test]
    fn the_summary_names_every_count() {
        let s = Summary {
            root: PathBuf::from("/data/pics"),
            counts: Counts {
                selected: 12,
                to_fetch: 10,
                skipped: 2,
                files: 9,
                bytes: 5_000_000,
                refreshed: 3,
                failed: 1,
            },
            elapsed: Duration::from_secs(2),
            graph_calls: 1,
            listed: 11,
            sidecars: vec![PathBuf::from("/data/pics/images.geojson")],
            interrupted: false,
        };
        let r = render(&s);
        for part in [
            "9 files",
            "5.0 MB",
            "2.5 MB/s",
            "3 refreshed URLs",
            "2 skipped (already complete)",
            "1 failed",
            "1 Graph calls",
            "list 11 files",
        ] {
            assert!(r.contains(part), "{part:?} missing from {r}");
        }
        assert!(render(&Summary { interrupted: true, ..s }).contains("interrupted"));
        assert!(parse_size("original").is_ok());
        assert!(parse_size("512").is_err());
    }
}
