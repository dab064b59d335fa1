//! Scope harvests (`sync --creator`, `sync --organization`) and point regions (`lon,lat@radius`),
//! end to end: the binary against the simulator over HTTP, into a real PostGIS.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Malmö's dense core tile and its neighbours (three z14 tiles).
const CORE: &str = "12.99,55.595,13.03,55.600";

/// Every images column a scope harvest and an area harvest both fill (not `tile_hash`, which
/// only a tile read gives, nor the harvest timestamps), as one digest and a count.
fn images_digest(db: &str, filter: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(concat_ws('|', id, sequence_id, captured_at, compass_angle,
                computed_compass_angle, is_pano, creator_id, creator_username, organization_id, camera_type, make,
                model, width, height, altitude, computed_altitude, quality_score, ST_AsEWKT(geom),
                ST_AsEWKT(computed_geom), tile_x, tile_y, deleted_at IS NULL, enriched_at IS NULL), ',' ORDER BY id)), '')
             FROM mapillary.images WHERE {filter}"
        ),
    )
}

/// The sequences of the images selected by `filter`.
fn sequences_digest(db: &str, filter: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(concat_ws('|', id, ST_AsEWKT(geom), image_count,
                first_captured_at, last_captured_at, is_pano, creator_id, organization_id), ',' ORDER BY id)), '')
             FROM mapillary.sequences WHERE id IN (SELECT sequence_id FROM mapillary.images WHERE {filter})"
        ),
    )
}

/// The map features seen in the images selected by `filter`, and all their image links.
fn features_digest(db: &str, filter: &str) -> String {
    let seen = format!(
        "SELECT l.map_feature_id FROM mapillary.map_feature_images l JOIN mapillary.images i ON i.id = l.image_id WHERE {filter}"
    );
    psql(
        db,
        &format!(
            "SELECT (SELECT count(*) || ' ' || coalesce(md5(string_agg(concat_ws('|', id, object_value, object_type,
                first_seen_at, last_seen_at, aligned_direction, ST_AsEWKT(geom), tile_x, tile_y, deleted_at IS NULL),
                ',' ORDER BY id)), '') FROM mapillary.map_features WHERE id IN ({seen}))
             || ' / ' || (SELECT count(*) || ' ' || coalesce(md5(string_agg(map_feature_id || '-' || image_id, ','
                ORDER BY map_feature_id, image_id)), '') FROM mapillary.map_feature_images WHERE map_feature_id IN ({seen}))"
        ),
    )
}

fn ids(db: &str, sql: &str) -> BTreeSet<i64> {
    psql(db, sql).lines().filter(|l| !l.is_empty()).map(|l| l.parse().unwrap()).collect()
}

/// A Graph API GET on the simulator, as JSON.
fn graph(sim: &Sim, path: &str) -> serde_json::Value {
    let (status, body) =
        http_get(&format!("{}{path}", sim.url), &[("Authorization", &format!("OAuth {SIM_TOKEN}"))]);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Every image the simulator lists for `creator` (id and capture time), paging as a client does.
fn listing(sim: &Sim, creator: &str) -> std::collections::BTreeMap<i64, i64> {
    let mut out = std::collections::BTreeMap::new();
    let mut after = String::new();
    loop {
        let v = graph(
            sim,
            &format!("/images?creator_username={creator}&fields=id,captured_at&limit=2000{after}"),
        );
        for i in v["data"].as_array().unwrap() {
            out.insert(
                i["id"].as_str().unwrap().parse::<i64>().unwrap(),
                i["captured_at"].as_i64().unwrap_or(0),
            );
        }
        match v["paging"]["next"].as_str() {
            Some(_) => after = format!("&after={}", v["paging"]["cursors"]["after"].as_str().unwrap()),
            None => return out,
        }
    }
}

/// Lines of the simulator's access log from line `from` on that request `path_prefix`.
fn requests(log: &Path, from: usize, path_prefix: &str) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .skip(from)
        .filter(|l| l.split_whitespace().nth(4).is_some_and(|p| p.starts_with(path_prefix)))
        .count()
}

fn log_len(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

/// A paged `/images` search (no bbox): the creator listing.
const PAGED: &str = "/images?creator_username=";
const FEATURE_SEARCH: &str = "/map_features?";

#[test]
fn a_creator_or_organization_harvest_equals_the_region_harvest_filtered_to_them() {
    let sim = Sim::start(&[]);
    let area = fresh_db("scope_area");
    sync_ok(&run(&["sync", CORE], &harvest_env(&sim, &area)));
    let creator = psql(
        &area,
        "SELECT creator_username FROM mapillary.images GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    );
    let mine = format!("creator_username = '{creator}'");

    let scoped = fresh_db("scope_creator");
    let before = sim.stats();
    let out = sync_ok(&run(&["sync", CORE, "--creator", &creator], &harvest_env(&sim, &scoped)));
    let after = sim.stats();
    assert!(out.contains("Done"), "{out}");
    let d = |k: &str| after["requests"][k].as_u64().unwrap() - before["requests"][k].as_u64().unwrap();
    assert_eq!(d("tiles"), 0, "a scope harvest asks for no tile");
    assert_eq!(d("entity"), 0, "the search gives the enrichment fields: no per-image call");

    let expected = images_digest(&area, &mine);
    let n: usize = expected.split(' ').next().unwrap().parse().unwrap();
    assert!(n > 500, "the creator has {n} images in the region");
    assert_eq!(images_digest(&scoped, "true"), expected, "images of {creator}");
    assert_eq!(sequences_digest(&scoped, "true"), sequences_digest(&area, &mine), "their sequences");
    let features = features_digest(&scoped, "true");
    assert!(!features.starts_with("0 "), "map features seen in the creator's images: {features}");
    assert_eq!(features, features_digest(&area, &mine), "map features seen in their images");
    assert_eq!(
        psql(&scoped, "SELECT count(*) FROM mapillary.images WHERE creator_username <> ''"),
        n.to_string()
    );

    // An organization alone is listed cell by cell over the region: the same rows again.
    let org = psql(
        &area,
        "SELECT organization_id FROM mapillary.images WHERE organization_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    );
    let theirs = format!("organization_id = {org}");
    let by_org = fresh_db("scope_org");
    let out = sync_ok(&run(&["sync", CORE, "--organization", &org], &harvest_env(&sim, &by_org)));
    assert!(out.contains("Done"), "{out}");
    let expected = images_digest(&area, &theirs);
    assert!(!expected.starts_with("0 "), "{expected}");
    assert_eq!(images_digest(&by_org, "true"), expected, "images of organization {org}");
    assert_eq!(features_digest(&by_org, "true"), features_digest(&area, &theirs), "their map features");
}

/// One creator through epochs 0 and 1: a first harvest, an unchanged re-run, the next epoch's
/// incremental pass and a complete pass. Uploads new at epoch 1 captured after the last pass's
/// newest capture are found by the incremental pass; uploads of older captures (there are some
/// when `late`) only by the complete pass.
fn epoch_story(sims: [(&Sim, &Path); 2], creator: &str, late_expected: bool) {
    let [(sim0, log0), (sim1, log1)] = sims;
    let db = fresh_db("scope_epoch");
    let from = log_len(log0);
    let out = sync_ok(&run(&["sync", "--creator", creator], &harvest_env(sim0, &db)));
    assert!(out.contains("Complete pass") && out.contains("Done"), "{out}");
    let images: usize = psql(&db, "SELECT count(*) FROM mapillary.images").parse().unwrap();
    let pages = requests(log0, from, PAGED);
    let searches = requests(log0, from, "/");
    assert_eq!(pages, images.div_ceil(2000), "pages of 2,000 for {images} images");
    eprintln!(
        "first harvest of {creator}: {images} images, {pages} pages, {} feature searches: {:.2} requests per 1,000 images",
        requests(log0, from, FEATURE_SEARCH),
        searches as f64 * 1000.0 / images as f64
    );
    let then: BTreeSet<i64> = listing(sim0, creator).keys().copied().collect();
    assert_eq!(ids(&db, "SELECT id FROM mapillary.images_live"), then);

    // The same world again: one page (the newest captures, inclusive), nothing written.
    let written = psql(&db, "SELECT max(last_harvested_at) || ' ' || count(*) FROM mapillary.images");
    let seqs = psql(&db, "SELECT max(updated_at) FROM mapillary.sequences");
    let from = log_len(log0);
    let out = sync_ok(&run(&["sync", "--creator", creator], &harvest_env(sim0, &db)));
    assert!(out.contains("Incremental pass"), "{out}");
    assert_eq!(requests(log0, from, PAGED), 1, "{out}");
    assert_eq!(requests(log0, from, "/"), 1, "an unchanged re-run asks for one page and nothing else");
    assert_eq!(psql(&db, "SELECT max(last_harvested_at) || ' ' || count(*) FROM mapillary.images"), written);
    assert_eq!(psql(&db, "SELECT max(updated_at) FROM mapillary.sequences"), seqs);

    // The next epoch: one page finds the uploads captured after the last pass's newest capture.
    let newest_ms: i64 = psql(
        &db,
        "SELECT (extract(epoch FROM newest_captured_at) * 1000)::bigint FROM mapillary.harvest_scope ORDER BY run_id LIMIT 1",
    )
    .parse()
    .unwrap();
    let now = listing(sim1, creator);
    let fresh: Vec<(i64, i64)> =
        now.iter().filter(|(id, _)| !then.contains(id)).map(|(i, t)| (*i, *t)).collect();
    let recent: BTreeSet<i64> = fresh.iter().filter(|(_, t)| *t >= newest_ms).map(|(i, _)| *i).collect();
    let late: BTreeSet<i64> = fresh.iter().filter(|(_, t)| *t < newest_ms).map(|(i, _)| *i).collect();
    assert!(!recent.is_empty() || late_expected, "{creator} has no recent upload at epoch 1");
    assert_eq!(!late.is_empty(), late_expected, "{creator}: late uploads {late:?}");
    let from = log_len(log1);
    let out = sync_ok(&run(&["sync", "--creator", creator], &harvest_env(sim1, &db)));
    assert!(out.contains("Incremental pass"), "{out}");
    assert_eq!(requests(log1, from, PAGED), 1, "{out}");
    let stored = ids(&db, "SELECT id FROM mapillary.images");
    assert!(recent.is_subset(&stored), "every upload captured after the last pass is stored: {out}");
    let missed: BTreeSet<i64> = now.keys().filter(|id| !stored.contains(id)).copied().collect();
    assert_eq!(missed, late, "the incremental pass misses exactly the uploads of older captures");
    eprintln!(
        "{creator} at epoch 1: {} recent uploads found, {} late uploads of old captures missed; {} requests ({} feature searches)",
        recent.len(),
        late.len(),
        requests(log1, from, "/"),
        requests(log1, from, FEATURE_SEARCH)
    );

    // A complete pass: the stored live images are exactly the listing, and the tombstones are
    // exactly the images the listing no longer has (each confirmed gone by id).
    let out =
        sync_ok(&run(&["sync", "--creator", creator, "--refresh-older-than", "0s"], &harvest_env(sim1, &db)));
    assert!(out.contains("Complete pass"), "{out}");
    let listed: BTreeSet<i64> = now.keys().copied().collect();
    assert_eq!(ids(&db, "SELECT id FROM mapillary.images_live"), listed, "{out}");
    let gone = ids(&db, "SELECT id FROM mapillary.images WHERE deleted_at IS NOT NULL");
    let deleted: BTreeSet<i64> = then.difference(&listed).copied().collect();
    assert!(!deleted.is_empty(), "about 1% of images are deleted at each epoch");
    assert_eq!(gone, deleted, "{out}");
}

#[test]
fn a_second_run_costs_only_the_newer_pages_and_finds_the_next_epochs_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (log0, log1) = (dir.path().join("epoch0.log"), dir.path().join("epoch1.log"));
    let sim0 = Sim::start(&["--access-log", log0.to_str().unwrap()]);
    let sim1 = Sim::start(&["--epoch", "1", "--access-log", log1.to_str().unwrap()]);
    // Creators with new uploads at epoch 1 in the core: what an area harvest of it holds at
    // epoch 1 and not at 0 (at least 10 images: a new sequence, not an image that moved in).
    // Epoch 0's captures end 30 days before 2025-01-01; epoch 1's recent uploads are later.
    let (core0, core1) = (fresh_db("scope_core0"), fresh_db("scope_core1"));
    sync_ok(&run(&["sync", CORE], &harvest_env(&sim0, &core0)));
    sync_ok(&run(&["sync", CORE], &harvest_env(&sim1, &core1)));
    let before = ids(&core0, "SELECT id FROM mapillary.images");
    let rows = psql(
        &core1,
        "SELECT id || '|' || creator_username || '|' || (captured_at > '2024-12-10') FROM mapillary.images",
    );
    let mut by: std::collections::BTreeMap<(bool, String), usize> = std::collections::BTreeMap::new();
    for l in rows.lines() {
        let v: Vec<&str> = l.split('|').collect();
        if !before.contains(&v[0].parse::<i64>().unwrap()) {
            *by.entry((v[2] == "true", v[1].to_string())).or_default() += 1;
        }
    }
    let top = |recent: bool| {
        by.iter()
            .filter(|((r, _), n)| *r == recent && **n >= 10)
            .max_by_key(|((_, name), n)| (**n, std::cmp::Reverse(name.clone())))
            .map(|((_, name), _)| name.clone())
    };
    let sims = [(&sim0, log0.as_path()), (&sim1, log1.as_path())];
    epoch_story(sims, &top(true).expect("a recent upload in the core at epoch 1"), false);
    epoch_story(sims, &top(false).expect("an upload of an old capture in the core at epoch 1"), true);
}

/// When a kill is due, judged from the database.
type Ready = dyn Fn(&str) -> bool;

/// Kills the harvester with SIGKILL once `ready(db)` holds (or after `at_most`).
fn killed_when(sim: &Sim, db: &str, args: &[&str], at_most: Duration, ready: &Ready) -> bool {
    let mut c = Command::new(bin());
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null()).env_remove("MAPILLARY_ACCESS_TOKEN");
    for (k, v) in harvest_env(sim, db) {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + at_most;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready(db) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

/// The scope's progress: (phase, pages, feature cells done), or None before the run exists.
fn progress(db: &str) -> Option<(String, i64, i64)> {
    let out = std::process::Command::new("psql")
        .args([
            db,
            "-tA",
            "-c",
            "SELECT phase || '|' || pages || '|' || (SELECT count(*) FROM mapillary.harvest_scope_cell c WHERE c.run_id = s.run_id AND c.done)
             FROM mapillary.harvest_scope s ORDER BY run_id DESC LIMIT 1",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut p = s.split('|');
    Some((p.next()?.to_string(), p.next()?.parse().ok()?, p.next()?.parse().ok()?))
}

#[test]
fn sigkill_mid_run_then_rerun_gives_the_tables_of_an_uninterrupted_run() {
    let sim = Sim::start(&[]);
    let area = fresh_db("scope_kill_pick");
    sync_ok(&run(&["sync", "12.99,55.595,13.0,55.6"], &harvest_env(&sim, &area)));
    let creator = psql(
        &area,
        "SELECT creator_username FROM mapillary.images GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    );
    let args = ["sync", "--creator", creator.as_str()];
    let clean = fresh_db("scope_kill_clean");
    sync_ok(&run(&args, &harvest_env(&sim, &clean)));
    let expected = checksum(&clean);
    let pages: i64 = psql(&clean, "SELECT pages FROM mapillary.harvest_scope").parse().unwrap();
    assert!(pages >= 3, "the creator needs several pages: {pages}");

    // Kills mid-listing (after 1 and after pages-1 pages), mid-features (after a few cells and
    // after most), and at seeded random moments (mid-page, mid-COPY); then a rerun.
    let db = fresh_db("scope_kill");
    let seed: u64 = std::env::var("SCOPE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261208);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    let points: Vec<Box<Ready>> = vec![
        Box::new(|db| progress(db).is_some_and(|(_, p, _)| p >= 1)),
        Box::new(move |db| progress(db).is_some_and(|(_, p, _)| p >= pages - 1)),
        Box::new(|db| progress(db).is_some_and(|(ph, _, c)| ph == "features" && c >= 3)),
        Box::new(|db| progress(db).is_some_and(|(ph, _, c)| ph == "features" && c >= 20)),
    ];
    // A clean stop first: SIGTERM mid-listing ends with 130, the run `stopped`, the lease given back.
    let mut c = Command::new(bin());
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null()).env_remove("MAPILLARY_ACCESS_TOKEN");
    for (k, v) in harvest_env(&sim, &db) {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && progress(&db).is_none_or(|(_, p, _)| p < 1) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(child.wait().unwrap().code(), Some(130), "SIGTERM ends a scope run with 130");
    assert_eq!(
        psql(
            &db,
            "SELECT r.status || ' ' || (s.lease_owner IS NULL) FROM mapillary.harvest_run r JOIN mapillary.harvest_scope s ON s.run_id = r.id"
        ),
        "stopped true"
    );
    for ready in &points {
        if killed_when(&sim, &db, &args, Duration::from_secs(120), ready.as_ref()) {
            kills += 1;
        }
    }
    for _ in 0..3 {
        let ms = rng.u64(200..4000);
        eprintln!("random kill after {ms} ms (seed {seed})");
        if killed_when(&sim, &db, &args, Duration::from_millis(ms), &|_| false) {
            kills += 1;
        }
    }
    let out = sync_ok(&run(&args, &harvest_env(&sim, &db)));
    assert!(kills >= 4, "only {kills} kills landed mid-run");
    assert!(out.contains("resumed") && out.contains("Done"), "{out}");
    assert_eq!(checksum(&db), expected, "tables differ from an uninterrupted run");
    for t in ["images", "sequences", "map_features", "map_feature_images"] {
        let q = format!("SELECT count(*) FROM mapillary.{t}");
        assert_eq!(psql(&db, &q), psql(&clean, &q), "{t}");
    }
    assert_eq!(
        psql(
            &db,
            "SELECT string_agg(phase || ' ' || pages || ' ' || listed, ',') FROM mapillary.harvest_scope"
        ),
        psql(
            &clean,
            "SELECT string_agg(phase || ' ' || pages || ' ' || listed, ',') FROM mapillary.harvest_scope"
        )
    );
    assert_eq!(
        psql(
            &db,
            "SELECT (SELECT count(*) FROM mapillary.harvest_scope_seen) + (SELECT count(*) FROM mapillary.harvest_scope_cell)"
        ),
        "0"
    );
}

/// The circle used by the point-region tests: 400 m around a point of Malmö's dense core.
const POINT: (f64, f64, f64) = (13.0, 55.5975, 400.0);

fn within_sql(table: &str) -> String {
    let (lon, lat, r) = POINT;
    format!(
        "SELECT count(*) FILTER (WHERE ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint({lon}, {lat}), 4326)::geography, {r})),
                count(*) FROM mapillary.{table}"
    )
}

#[test]
fn a_point_region_keeps_only_records_inside_its_circle() {
    let sim = Sim::start(&[]);
    let (lon, lat, r) = POINT;
    let point = format!("{lon},{lat}@{r}m");
    let db = fresh_db("scope_point");
    let out = sync_ok(&run(&["sync", &point], &harvest_env(&sim, &db)));
    assert!(out.contains("Done"), "{out}");
    for t in ["images", "map_features"] {
        let counts = psql(&db, &within_sql(t));
        let (inside, all) = counts.split_once('|').unwrap();
        assert_eq!(inside, all, "{t}: every stored record is inside the circle");
        assert!(all.parse::<u64>().unwrap() > 20, "{t}: {all}");
    }
    // Nothing inside is lost: an area harvest of the circle's tiles holds the same records inside.
    let area = fresh_db("scope_point_area");
    let envelope = "12.993,55.593,13.007,55.602";
    sync_ok(&run(&["sync", envelope], &harvest_env(&sim, &area)));
    let inside = |t: &str| {
        format!(
            "SELECT id FROM mapillary.{t} WHERE ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint({lon}, {lat}), 4326)::geography, {r}) ORDER BY id"
        )
    };
    for t in ["images", "map_features"] {
        assert_eq!(
            ids(&db, &format!("SELECT id FROM mapillary.{t} ORDER BY id")),
            ids(&area, &inside(t)),
            "{t}"
        );
    }
    // A point region's tiles keep no ETag: an area harvest of them later reads them in full.
    assert_eq!(psql(&db, "SELECT count(*) FROM mapillary.tile_state WHERE etag IS NOT NULL"), "0");
    sync_ok(&run(&["sync", envelope], &harvest_env(&sim, &db)));
    assert_eq!(
        psql(&db, "SELECT count(*) FROM mapillary.images_live"),
        psql(&area, "SELECT count(*) FROM mapillary.images_live")
    );

    // A creator's harvest in a point region: inside the circle too.
    let creator = psql(
        &db,
        "SELECT creator_username FROM mapillary.images GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    );
    let scoped = fresh_db("scope_point_creator");
    sync_ok(&run(&["sync", &point, "--creator", &creator], &harvest_env(&sim, &scoped)));
    let counts = psql(&scoped, &within_sql("images"));
    let (inside, all) = counts.split_once('|').unwrap();
    assert_eq!(inside, all);
    assert_eq!(
        all,
        psql(
            &db,
            &format!(
                "SELECT count(*) FROM mapillary.images WHERE creator_username = '{creator}' AND ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint({lon}, {lat}), 4326)::geography, {r})"
            )
        )
    );
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn bad_point_regions_and_scopes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mly-harvest.toml");
    std::fs::write(&cfg, "[regions.spot]\npoint = \"13.0,55.6@70km\"\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    // No database is needed: the region is refused first.
    let env = [("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"), ("MAPILLARY_ACCESS_TOKEN", SIM_TOKEN)];
    let cases: &[(&[&str], i32, &str)] = &[
        (&["sync", "13.0,55.6@200"], 4, "needs a unit"),
        (&["sync", "13.0,55.6@200mi"], 4, "not m or km"),
        (&["sync", "13.0,55.6@0m"], 4, "greater than 0"),
        (&["sync", "13.0,55.6@-1km"], 4, "greater than 0"),
        (&["sync", "13.0,55.6@50.5km"], 4, "50 km"),
        (&["sync", "181,55.6@1km"], 4, "longitude 181"),
        (&["sync", "13.0,86@1km"], 4, "latitude 86"),
        (&["sync", "13.0,NaN@1km"], 4, "not a number"),
        (&["sync", "x,55@1km"], 4, "not a number"),
        (&["sync", "13.0@1km"], 4, "lon,lat@radius"),
        (&["sync", "--config", cfg, "spot"], 4, "50 km"),
        (&["plan", "13.0,55.6@1e9m"], 4, "50 km"),
        (&["sync", "--creator", "someone", "13.0,55.6@5"], 4, "needs a unit"),
        (&["sync", "--organization", "5"], 2, "needs a region"),
        (&["sync", "--creator", "a b"], 2, "not a mapillary username"),
        (&["sync", "--creator", "x", "--since", "2024-02-01", "--until", "2024-01-31"], 2, "later than"),
    ];
    for (args, code, needle) in cases {
        let o = run(args, &env);
        let err = text(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        assert!(lines[0].to_lowercase().contains(needle), "{args:?}: {needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // clap's own usage errors (exit 2).
    for args in [
        &["sync", "--since", "2024-01-01"][..],
        &["sync", "--creator", "x", "--since", "yesterday"][..],
        &["sync", "--creator", "x", "--max-tiles", "3"][..],
        &["sync", "--organization", "0", "13.0,55.6@1km"][..],
        &["sync"][..],
    ] {
        let o = run(args, &env);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).starts_with("error:"), "{args:?}: {}", text(&o));
    }
}
