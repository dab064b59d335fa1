//! `sync --metrics-file PATH`: the run in Prometheus text format, for node_exporter's textfile
//! collector. Written at the end of every run, failed runs included, atomically (temp file in the
//! same directory + rename) so the collector never reads half a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use tracing::{error, warn};

use crate::cli::{Cli, CliError, Command};
use crate::config::Config;
use crate::exit;
use mly_core::api::ApiCounters;
use mly_core::jobs::JobsError;
use mly_core::pipeline::ProcessCounters;
use mly_core::pipeline::trace::RunTrace;
use mly_core::store::Store;

use super::TileOutcome;

/// Errors of writing the metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write the metrics file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything one metrics file says about a run.
#[derive(Debug, Clone, Default)]
pub struct RunMetrics {
    /// The region as given on the command line.
    pub region: String,
    /// The harvest schema.
    pub schema: String,
    /// The process's exit code.
    pub exit_code: i32,
    /// Wall time of the command, seconds.
    pub duration_secs: f64,
    /// When the run ended (seconds since the epoch).
    pub ended_at: f64,
    /// The run, when it got that far.
    pub run_id: Option<i64>,
    /// Requests of this process per API family.
    pub requests: Option<ApiCounters>,
    /// Record counters of this process (the summary's `this_process`).
    pub process: Option<ProcessCounters>,
    /// Tiles of the run per (tileset, outcome); empty when the database could not be read.
    pub tiles: Vec<(String, TileOutcome, u64)>,
    /// The configured daily tile budget and what is left of today's.
    pub budget: Option<(u32, i64)>,
    /// The last run that ended with every tile done (seconds since the epoch).
    pub last_success: Option<f64>,
}

/// The outcome label of an exit code (the README's exit-code table).
pub fn outcome_of(code: i32) -> &'static str {
    match code {
        exit::OK => "done",
        exit::PARTIAL => "partial",
        exit::QUOTA => "quota_exhausted",
        exit::INTERRUPTED => "stopped",
        _ => "failed",
    }
}

/// Every outcome label, so each appears with 0 or 1 (alert rules need the series to exist).
const OUTCOMES: [&str; 5] = ["done", "partial", "quota_exhausted", "stopped", "failed"];

/// Escapes a label value (Prometheus text format: backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
    common: String,
}

impl Out {
    fn family(&mut self, name: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} gauge");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = self.common.clone();
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", label(v));
        }
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }
    fn one(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help);
        self.sample(name, &[], value);
    }
}

impl RunMetrics {
    /// The Prometheus text exposition of the run. Every sample carries `schema` and `region`, so
    /// several harvests on one host can write several files.
    pub fn render(&self) -> String {
        let mut o = Out {
            text: String::new(),
            common: format!("schema=\"{}\",region=\"{}\"", label(&self.schema), label(&self.region)),
        };
        let outcome = outcome_of(self.exit_code);
        o.family("mly_harvest_run_outcome", "How the last run ended (1 for its outcome, 0 for the others).");
        for name in OUTCOMES {
            o.sample("mly_harvest_run_outcome", &[("outcome", name)], f64::from(u8::from(name == outcome)));
        }
        o.one(
            "mly_harvest_run_exit_code",
            "Exit code of the last run (README exit-code table).",
            f64::from(self.exit_code),
        );
        o.one(
            "mly_harvest_run_success",
            "1 when the last run ended with every tile done.",
            f64::from(u8::from(self.exit_code == exit::OK)),
        );
        o.one("mly_harvest_run_duration_seconds", "Wall time of the last run.", self.duration_secs);
        o.one("mly_harvest_run_end_timestamp_seconds", "When the last run ended.", self.ended_at);
        if let Some(id) = self.run_id {
            o.one("mly_harvest_run_id", "Id of the last run (harvest_run.id).", id as f64);
        }
        if let Some(r) = &self.requests {
            o.family(
                "mly_harvest_run_requests",
                "API requests of the last run per family (retries included).",
            );
            for (family, n) in [("tiles", r.tiles), ("search", r.search), ("entity", r.entity)] {
                o.sample("mly_harvest_run_requests", &[("family", family)], n as f64);
            }
            o.one(
                "mly_harvest_run_retries",
                "Requests retried in the last run (all families).",
                r.retries as f64,
            );
            o.one(
                "mly_harvest_run_throttled",
                "Throttled answers in the last run (all families).",
                r.throttled as f64,
            );
            o.one(
                "mly_harvest_run_tiles_not_modified",
                "Tile requests answered 304 Not Modified.",
                r.not_modified as f64,
            );
            o.one(
                "mly_harvest_run_deletion_checks",
                "Graph calls made to confirm by id that records gone from their tile are gone.",
                r.confirm as f64,
            );
            o.one(
                "mly_harvest_run_rate_reservations",
                "Batches of Graph API slots reserved in the app's shared rate budget (database round trips).",
                r.rate_reservations as f64,
            );
            o.one(
                "mly_harvest_run_response_bytes",
                "Response bytes received in the last run.",
                r.bytes as f64,
            );
        }
        if let Some(p) = &self.process {
            o.family("mly_harvest_run_records", "Records of the last run by change (this process).");
            // missing_from_tile: kept although the tile no longer lists them (the Graph API still has
            // them); moved_away: the Graph API places them in another tile now.
            for (change, n) in [
                ("new", p.new),
                ("changed", p.changed),
                ("deleted", p.deleted),
                ("missing_from_tile", p.missing_from_tile),
                ("moved_away", p.moved_away),
            ] {
                o.sample("mly_harvest_run_records", &[("change", change)], n as f64);
            }
            o.family(
                "mly_harvest_run_stored",
                "Images and map features written by the last run (this process).",
            );
            for (kind, n) in [("images", p.images), ("features", p.features)] {
                o.sample("mly_harvest_run_stored", &[("kind", kind)], n as f64);
            }
            o.one("mly_harvest_run_enriched", "Records enriched through the Graph API.", p.enriched as f64);
            o.one(
                "mly_harvest_run_missing_upstream",
                "Records the Graph API no longer knows.",
                p.missing as f64,
            );
        }
        if !self.tiles.is_empty() {
            o.family("mly_harvest_run_tiles", "Tiles of the last run by tileset and state.");
            let mut tilesets: Vec<&str> = self.tiles.iter().map(|(t, _, _)| t.as_str()).collect();
            tilesets.sort_unstable();
            tilesets.dedup();
            for ts in tilesets {
                let mut states: Vec<(String, u64)> =
                    TileOutcome::NAMED.iter().map(|s| (s.label().to_string(), 0)).collect();
                for (t, s, n) in &self.tiles {
                    if t != ts {
                        continue;
                    }
                    match states.iter_mut().find(|(l, _)| l == s.label()) {
                        Some(e) => e.1 += n,
                        None => states.push((s.label().to_string(), *n)),
                    }
                }
                for (s, n) in states {
                    o.sample("mly_harvest_run_tiles", &[("tileset", ts), ("state", &s)], n as f64);
                }
            }
        }
        if let Some((per_day, used)) = self.budget {
            o.one(
                "mly_harvest_tile_budget_per_day",
                "Configured daily tile budget (limits.tiles_per_day).",
                f64::from(per_day),
            );
            o.one(
                "mly_harvest_tile_budget_remaining",
                "Tiles left in today's (UTC) budget after the last run.",
                (i64::from(per_day) - used).max(0) as f64,
            );
        }
        if let Some(t) = self.last_success {
            o.one(
                "mly_harvest_last_success_timestamp_seconds",
                "When a run last ended with every tile done.",
                t,
            );
        }
        o.text
    }
}

/// The last-success time a previous metrics file recorded, if it can be read.
pub fn previous_last_success(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter(|l| l.starts_with("mly_harvest_last_success_timestamp_seconds"))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse().ok()))
}

/// Writes `text` to `path` atomically: a temp file next to it (not ending in `.prom`, so the
/// textfile collector ignores it), flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), MetricsError> {
    use std::io::Write;
    let err = |source| MetricsError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temp file is ours and useless now.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Collects the metrics of one `sync --metrics-file PATH` invocation around the command.
pub struct Watch {
    path: PathBuf,
    started: Instant,
    trace: Arc<RunTrace>,
    cfg: Option<Config>,
    region: String,
    budget_day: Option<NaiveDate>,
}

impl Watch {
    /// Starts watching when the command is `sync --metrics-file`; hands the run a trace to fill.
    pub fn start(cli: &mut Cli) -> Option<Watch> {
        let Command::Sync(args) = &cli.command else { return None };
        args.metrics_file.as_ref()?;
        // A config error is the command's to report; the metrics then say only that it failed.
        let cfg = crate::cli::load_config(cli).ok();
        let Command::Sync(args) = &mut cli.command else { return None };
        let path = args.metrics_file.clone()?;
        let trace = Arc::new(RunTrace::default());
        args.trace = Some(Arc::clone(&trace));
        Some(Watch {
            path,
            started: Instant::now(),
            trace,
            cfg,
            region: args.label(),
            budget_day: args.budget_day,
        })
    }

    /// Writes the metrics file for the command's result and passes the result on. A file that
    /// cannot be written fails an otherwise successful run (cron must notice); after a failed
    /// run the run's own error wins and the write error is logged.
    pub async fn finish(self, result: Result<i32, CliError>) -> Result<i32, CliError> {
        let code = match &result {
            Ok(c) => *c,
            Err(e) => e.exit_code(),
        };
        let trace = self.trace.get();
        // Microseconds, like the database's finished_at: "last success" never lies after the end.
        let ended_at = Utc::now().timestamp_micros() as f64 / 1e6;
        let mut m = RunMetrics {
            region: self.region.clone(),
            schema: self.cfg.as_ref().map(|c| c.database.schema.clone()).unwrap_or_default(),
            exit_code: code,
            duration_secs: self.started.elapsed().as_secs_f64(),
            ended_at,
            run_id: trace.run_id,
            requests: trace.requests,
            process: trace.process,
            ..Default::default()
        };
        if let Some(cfg) = &self.cfg
            && let Err(e) = self.read_db(cfg, &mut m).await
        {
            warn!(error = %e, "metrics: could not read run figures from the database");
        }
        let previous = previous_last_success(&self.path);
        // One clock for "last success": the run's finished_at in the database when it could be
        // read (a later failed run reads the same value), else this process's end time.
        m.last_success = if code == exit::OK {
            m.last_success.or(Some(ended_at))
        } else {
            match (m.last_success, previous) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        };
        match (write_atomic(&self.path, &m.render()), result) {
            (Ok(()), r) => r,
            (Err(e), Ok(_)) => Err(CliError::Metrics(e)),
            (Err(e), Err(run)) => {
                error!(error = %e, "metrics file not written");
                Err(run)
            }
        }
    }

    async fn read_db(&self, cfg: &Config, m: &mut RunMetrics) -> Result<(), JobsError> {
        let store = Store::connect(cfg.database.url.expose(), &cfg.database.schema, 1).await?;
        if let Some(run) = m.run_id {
            let mut by: BTreeMap<(String, TileOutcome), u64> = BTreeMap::new();
            for t in super::run_tiles(&store, run).await? {
                *by.entry((t.tileset, t.outcome)).or_default() += 1;
            }
            m.tiles = by.into_iter().map(|((ts, s), n)| (ts, s, n)).collect();
        }
        let day = self.budget_day.unwrap_or_else(|| Utc::now().date_naive());
        // The shared budget (mly_harvest_global) is keyed by the token's app: this token's app is
        // what the run spent and what is left to it (no token: every app's tiles together).
        let token = cfg.mapillary.access_token.expose();
        let app = (!token.is_empty()).then(|| mly_core::jobs::budget::AppKey::from_token(token));
        let used = super::tile_budget_used(&store, day, app.as_ref().map(|a| a.as_str())).await?;
        m.budget = Some((cfg.limits.tiles_per_day, used.unwrap_or(0)));
        m.last_success = super::last_success(&store).await?;
        store.pool().close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_outcome_and_escapes_labels() {
        let m = RunMetrics {
            region: "a\"b\\c".into(),
            schema: "mapillary".into(),
            exit_code: exit::PARTIAL,
            tiles: vec![
                ("mly1_public".into(), TileOutcome::Failed, 2),
                ("mly1_public".into(), TileOutcome::Other("odd".into()), 1),
            ],
            last_success: Some(1_700_000_000.0),
            ..Default::default()
        };
        let t = m.render();
        assert!(
            t.contains(r#"mly_harvest_run_outcome{schema="mapillary",region="a\"b\\c",outcome="partial"} 1"#),
            "{t}"
        );
        assert!(t.contains(r#"outcome="done"} 0"#));
        assert!(t.contains(r#"tileset="mly1_public",state="failed"} 2"#));
        assert!(t.contains(r#"tileset="mly1_public",state="done"} 0"#));
        assert!(t.contains(r#"tileset="mly1_public",state="odd"} 1"#));
        assert!(t.contains("mly_harvest_run_success{schema=\"mapillary\",region=\"a\\\"b\\\\c\"} 0"));
    }

    #[test]
    fn atomic_write_replaces_and_previous_success_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.prom");
        std::fs::write(&p, "old").unwrap();
        let m = RunMetrics { last_success: Some(1234.5), ..Default::default() };
        write_atomic(&p, &m.render()).unwrap();
        assert_eq!(previous_last_success(&p), Some(1234.5));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind");
    }
}
