//! One claimed tile, one way through the stages: snapshot → fetch → decode → diff → confirm
//! vanished records → enrich → commit. Each stage takes only what it needs; this module wires
//! them and counts what was committed.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::commit::{CommitError, commit_tile};
use super::confirm::confirm_vanished;
use super::detections::fetch_detections;
use super::diff::{self, Diff, Policy, TileRecord, Vanishing};
use super::enrich;
use super::fetch::{Fetched, fetch_tile};
use super::outcome::{TileEnd, TileFailure, cancellable};
use super::run::RunCtx;
use crate::jobs::{Claimed, Lease, block};
use crate::store::{FeatureRow, ImageRow, Known, Stage, TileWrite, Vanished};

impl From<CommitError> for TileFailure {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => TileFailure::Store(e),
            CommitError::Jobs(e) => TileFailure::Jobs(e),
        }
    }
}

/// Fetch → decode → diff → enrich → store for one claimed tile.
pub(crate) async fn process_tile(ctx: &RunCtx, c: &Claimed) -> TileEnd {
    match process(ctx, c).await {
        Ok(end) => end,
        Err(f) => f.into(),
    }
}

fn empty_write(c: &Claimed, etag: Option<String>, unchanged: bool) -> TileWrite {
    TileWrite {
        tileset: c.tileset,
        tile: c.tile,
        etag,
        unchanged,
        images: Vec::new(),
        sequences: Vec::new(),
        features: Vec::new(),
        detections: Vec::new(),
        vanished: Vanished::default(),
    }
}

async fn process(ctx: &RunCtx, c: &Claimed) -> Result<TileEnd, TileFailure> {
    let times = ctx.store.times();
    let lease = Lease { run: ctx.run, tileset: c.tileset, tile: c.tile, owner: &ctx.owner };
    let started = Instant::now();
    let snapshot = ctx.store.tile_snapshot(c.tileset, c.tile).await?;
    times.add(Stage::Snapshot, started);
    // Another process of this run (or any run on this machine) may have met a block since this
    // tile was claimed: then not one more tile request.
    if !ctx.ignore_block
        && let Some(b) = block::active(&ctx.store, &ctx.block_key).await?
    {
        return Ok(TileEnd::Blocked { at: b.at, detail: b.detail.clone(), recorded: Some(b) });
    }
    let harvest = &ctx.harvest;
    // Images harvested before detections were switched on still need theirs.
    let want_detections = harvest.enrich && harvest.detections && c.tileset.is_coverage();
    let lacking =
        if want_detections { ctx.store.images_lacking_detections(c.tile).await? } else { HashSet::new() };
    // A refresh, or images still lacking detections, need the tile's current content, so it
    // does not ask for "not modified".
    let etag =
        if ctx.refresh_before.is_some() || !lacking.is_empty() { None } else { snapshot.etag.as_deref() };
    let (mut decoded, new_etag, _memory) =
        match fetch_tile(&ctx.api, &ctx.memory, times, c.tileset, c.tile, etag).await? {
            Fetched::NotModified => {
                // Unchanged: the tile still holds what the database has of it.
                let deps = ctx.dependents_of(c.tileset, !snapshot.live.is_empty());
                commit_tile(&ctx.store, &lease, &empty_write(c, snapshot.etag.clone(), true), deps).await?;
                ctx.counters.unchanged();
                return Ok(TileEnd::Written);
            }
            Fetched::Decoded { tile, etag, memory } => (tile, etag, memory),
        };
    let mut w = empty_write(c, new_etag, false);
    let had_live = !snapshot.live.is_empty();
    let far_edge: HashSet<i64> = decoded.far_edge.iter().copied().collect();
    let listed: HashSet<i64> = if c.tileset.is_coverage() {
        decoded.images.iter().map(|r| r.id.0).collect()
    } else {
        decoded.features.iter().map(|r| r.id.0).collect()
    };
    // A point region: only records inside its circle go on (the listing above still says what vanished).
    if let Some(circle) = &ctx.circle {
        super::within::listed(circle, c.tileset, &mut decoded);
    }
    let vanished = match diff::vanishing(&snapshot.live, &listed, c.empty_reads) {
        Vanishing::ReadAgain => return Ok(TileEnd::Recheck),
        Vanishing::Nothing => Vec::new(),
        Vanishing::Check(ids) => ids,
    };
    let confirming = Instant::now();
    w.vanished = cancellable(confirm_vanished(&ctx.api, c.tileset, c.tile, &vanished)).await?;
    times.add(Stage::Enrich, confirming);
    let policy = Policy { enrich: harvest.enrich, refresh_before: ctx.refresh_before };
    let mut detections_fetched: Vec<i64> = Vec::new();
    if c.tileset.is_coverage() {
        let mut d = diff_against_db(ctx, snapshot.live, decoded.images, &far_edge, policy, true).await?;
        // Detections need the image's size, so images lacking them are enriched again too.
        let lacking_here: Vec<i64> =
            d.rows.iter().map(|(r, _)| r.id()).filter(|id| lacking.contains(id)).collect();
        d.needed.extend(lacking_here);
        let mut details = HashMap::new();
        if harvest.enrich && !d.needed.is_empty() {
            let enriching = Instant::now();
            let e = cancellable(enrich::images(&ctx.api, c.tile, &d.located(), &d.needed)).await?;
            times.add(Stage::Enrich, enriching);
            ctx.counters.enriched(e.details.len(), e.missing.len());
            details = e.details;
            let ids: Vec<i64> = d
                .needed
                .iter()
                .copied()
                .filter(|id| !d.known.contains_key(id) || lacking.contains(id))
                .collect();
            if want_detections && !ids.is_empty() {
                w.detections = cancellable(fetch_detections(&ctx.api, &ids, &details)).await?;
                detections_fetched = ids;
            }
        }
        w.images = d
            .rows
            .into_iter()
            .map(|(tile, tile_hash)| ImageRow { details: details.remove(&tile.id.0), tile, tile_hash })
            .collect();
        w.sequences = decoded.sequences;
    } else {
        let d = diff_against_db(ctx, snapshot.live, decoded.features, &far_edge, policy, false).await?;
        let mut details = HashMap::new();
        if harvest.enrich && !d.needed.is_empty() {
            let enriching = Instant::now();
            let e = cancellable(enrich::features(&ctx.api, c.tile, &d.located(), &d.needed)).await?;
            times.add(Stage::Enrich, enriching);
            ctx.counters.enriched(e.details.len(), e.missing.len());
            details = e.details;
        }
        w.features = d
            .rows
            .into_iter()
            .map(|(tile, tile_hash)| FeatureRow { details: details.remove(&tile.id.0), tile, tile_hash })
            .collect();
    }
    if let Some(circle) = &ctx.circle {
        super::within::written(circle, &mut w);
    }
    // The tile's other tilesets follow when it lists images now or held live ones (a 404 that
    // kept them must not leave their map features unread).
    let deps = ctx.dependents_of(c.tileset, !w.images.is_empty() || had_live);
    let counts = commit_tile(&ctx.store, &lease, &w, deps).await?;
    ctx.store.mark_detections_fetched(&detections_fetched).await?;
    // Record counts say what was committed, not what an interrupted task had in hand.
    ctx.counters.written(w.images.len(), w.features.len(), &counts);
    ctx.analyze_when_grown().await;
    Ok(TileEnd::Written)
}

/// The diff stage with its one database read: what the database knows of the tile's records
/// that are not live in it (see [`diff::others_to_look_up`]).
async fn diff_against_db<T: TileRecord>(
    ctx: &RunCtx,
    live: HashMap<i64, Known>,
    records: Vec<T>,
    far_edge: &HashSet<i64>,
    policy: Policy,
    images: bool,
) -> Result<Diff<T>, TileFailure> {
    let looking = Instant::now();
    let others = diff::others_to_look_up(&records, &live, far_edge, policy.enrich);
    let others = match (others.is_empty(), images) {
        (true, _) => HashMap::new(),
        (false, true) => ctx.store.known_images(&others).await?,
        (false, false) => ctx.store.known_features(&others).await?,
    };
    let d = diff::diff(live, others, records, far_edge, policy);
    ctx.store.times().add(Stage::Lookup, looking);
    Ok(d)
}
