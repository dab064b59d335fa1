//! `sync --creator USERNAME` / `sync --organization ID`: the capture window's dates, the scope
//! (validated: exit 2), its region (exit 4), and the run with its summary.

use crate::cli::{CliError, MAX_TILES_PER_RUN, SyncArgs, emit, store_for_sync};
use crate::config::Config;
use crate::exit;
use mly_contract::tiles::HARVEST_ZOOM;
use mly_core::pipeline::scope::{Scope, ScopeOptions, sync_scope};
use mly_core::region::Region;

/// Parses `--since`: a day (from its start, UTC) or an RFC 3339 time, as ms since the epoch.
pub fn parse_since(s: &str) -> Result<i64, String> {
    day_or_time(s, false)
}

/// Parses `--until`: a day (to its end, UTC, inclusive) or an RFC 3339 time.
pub fn parse_until(s: &str) -> Result<i64, String> {
    day_or_time(s, true)
}

fn day_or_time(s: &str, end_of_day: bool) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.timestamp_millis());
    }
    let day = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date YYYY-MM-DD or an RFC 3339 time (2024-05-01T12:00:00Z)"))?;
    let start =
        day.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).ok_or("date out of range")?;
    Ok(if end_of_day { start + 86_400_000 - 1 } else { start })
}

/// Runs `sync` for a creator or organization and prints its summary; returns the exit code.
pub async fn sync(args: &SyncArgs, cfg: &Config) -> Result<i32, CliError> {
    let region =
        args.region.as_deref().map(|r| Region::resolve(r, cfg.region_spec(r).as_ref())).transpose()?;
    if let Some(r) = &region {
        // The region's tiles are held as a filter (and searched one by one for an organization).
        let tiles = r.tile_count(HARVEST_ZOOM);
        if tiles > MAX_TILES_PER_RUN {
            return Err(CliError::Input(format!(
                "region {:?} covers {tiles} z14 tiles; a scope takes at most {MAX_TILES_PER_RUN}: split the region into several",
                r.name
            )));
        }
    }
    let scope = Scope::new(args.creator.clone(), args.organization, args.since, args.until, region)?;
    let store = store_for_sync(cfg).await?;
    let opts = ScopeOptions { refresh_older_than: args.refresh_older_than, trace: args.trace.clone() };
    let summary = sync_scope(&cfg.sync_settings(), &store, &scope, opts).await?;
    emit(&format!("{}\n", crate::summary::render_scope(&summary)))?;
    Ok(exit::of_outcome(summary.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_cover_the_whole_day_and_times_are_exact() {
        assert_eq!(parse_since("2024-05-01"), Ok(1_714_521_600_000));
        assert_eq!(parse_until("2024-05-01"), Ok(1_714_521_600_000 + 86_400_000 - 1));
        assert_eq!(parse_since("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_until("2024-05-01T14:00:00+02:00"), Ok(1_714_564_800_000));
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("2024-13-01").is_err());
    }
}
