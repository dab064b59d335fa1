//! The end-of-run summary a `sync` prints.

use mly_core::pipeline::SyncSummary;
use mly_core::pipeline::scope::ScopeSummary;

/// The summary as the user reads it: the run, this process's records, and its requests.
pub fn render(s: &SyncSummary) -> String {
    let p = &s.this_process;
    let r = &s.requests;
    format!(
        "run {} ({}) {:?}: tiles {}/{} done, {} skipped, {} failed, {} pending\n  plan: {} coverage probes, {} low-zoom tiles (a skipped tile was found empty, or its low-zoom tile showed no change)\n  this process: {} tiles ({} unchanged), {} images, {} features; {} new, {} changed, {} deleted (confirmed by {} Graph calls); {} missing_from_tile (kept), {} moved out, {} tiles re-read; {} enriched, {} missing upstream\n  requests: {} tiles ({} not modified), {} search, {} entity; {} retries, {} throttled; {:.1} s",
        s.run_id,
        if s.resumed { "resumed" } else { "new" },
        s.outcome,
        s.tiles_done,
        s.tiles_total,
        s.tiles_skipped,
        s.tiles_failed,
        s.tiles_pending,
        s.planning.probes,
        s.planning.low_zoom_requests,
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

/// The summary of a scope harvest: the pass, what this process listed and wrote, its requests.
pub fn render_scope(s: &ScopeSummary) -> String {
    let p = &s.this_process;
    let w = &p.writes;
    let r = &s.requests;
    format!(
        "run {} {} ({}, {:?} pass) {:?}: {} pages so far\n  this process: {} pages, {} images listed, {} kept; images {} new, {} changed, {} revived, {} deleted; {} map features in {} cells ({} new, {} changed, {} deleted); {} unlisted records checked by id ({} still there)\n  requests: {} tiles, {} search, {} entity ({} to confirm deletions); {} retries, {} throttled; {:.1} s",
        s.run_id,
        crate::cli::printable(&s.name),
        if s.resumed { "resumed" } else { "new" },
        s.pass,
        s.outcome,
        s.pages_total,
        p.pages,
        p.listed,
        p.kept,
        w.images_new,
        w.images_changed,
        w.images_revived,
        w.images_deleted,
        p.features,
        p.feature_cells,
        w.features_new + w.features_revived,
        w.features_changed,
        w.features_deleted,
        p.checked,
        p.still_there,
        r.tiles,
        r.search,
        r.entity,
        r.confirm,
        r.retries,
        r.throttled,
        s.seconds
    )
}
