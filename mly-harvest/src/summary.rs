//! The end-of-run summary a `sync` prints.

use mly_core::pipeline::SyncSummary;

/// The summary as the user reads it: the run, this process's records, and its requests.
pub fn render(s: &SyncSummary) -> String {
    let p = &s.this_process;
    let r = &s.requests;
    format!(
        "run {} ({}) {:?}: tiles {}/{} done, {} failed, {} pending\n  this process: {} tiles ({} unchanged), {} images, {} features; {} new, {} changed, {} deleted (confirmed by {} Graph calls); {} missing_from_tile (kept), {} moved out, {} tiles re-read; {} enriched, {} missing upstream\n  requests: {} tiles ({} not modified), {} search, {} entity; {} retries, {} throttled; {:.1} s",
        s.run_id,
        if s.resumed { "resumed" } else { "new" },
        s.outcome,
        s.tiles_done,
        s.tiles_total,
        s.tiles_failed,
        s.tiles_pending,
        p.tiles_done,
        p.tiles_unchanged,
        p.images,
        p.features,
        p.new,
        p.changed,
        p.deleted,
        r.confirm,
        p.missing_from_tile,
        p.moved_away,
        p.rechecked,
        p.enriched,
        p.missing,
        r.tiles,
        r.not_modified,
        r.search,
        r.entity,
        r.retries,
        r.throttled,
        s.seconds
    )
}
