//! The command line of `mly-harvest simulate`: its options and the behaviours `--help` lists.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cdn;
use crate::latency::LatencySpec;

/// How tiles without any data answer (the real behaviour is undocumented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmptyTile {
    /// 200 with a zero-length body.
    #[value(name = "200-empty")]
    Empty200,
    /// 204 No Content.
    #[value(name = "204")]
    NoContent,
    /// 404 with an error body.
    #[value(name = "404")]
    NotFound,
    /// 403 with an error body (the old tiles doc: "tile does not exist, safe to ignore").
    #[value(name = "403")]
    Forbidden,
    /// 200 with an MVT holding one empty layer `mapillary-empty`.
    #[value(name = "mvt-empty")]
    MvtEmpty,
}

/// What `mly-harvest simulate --help` lists after the options: every behaviour of the service the
/// simulator reproduces, on by default or switched by the faults file.
pub const HELP: &str = "\
Graph API behaviours (always on, like the live service):
  - one trailing '/' accepted on every Graph and tile path (/{id}/, /{id}/detections/, /images/,
    .../{z}/{x}/{y}/), as the official SDK sends them
  - 'id' on every object whatever 'fields' lists; absent values omitted (never null)
  - merge_cc as a JSON float of 14 significant digits (4.546427159383e+18); about one image in 200
    reports altitude as an unsigned-wrapped int32 (4294967281 = -15 m)
  - x-app-usage {\"call_count\":P,...} on answers to the app's own calls (a token it issued): P is
    the percent of the family's quota those calls used
  - /images with bbox: one page of at most 'limit' (<= 2000) records, no cursor; refused with
    'Please reduce the amount of data' when filling the page means reading more than
    --dense-limit matches (limit=1 on the densest bbox answers); bbox over 0.010 deg2 refused
  - /images filters: creator_username, organization_id, sequence_id / sequence_ids (lists),
    start_captured_at / end_captured_at (inclusive), is_pano, image_ids
  - /images without bbox (image_ids, sequence_id(s) or creator_username; organization_id alone
    is refused): newest first, pages of 'limit', paging.cursors.after and paging.next (a URL
    without the token); no overlap between pages
  - thumb_256/1024/2048/original_url: signed URLs on --public-url (default: the simulator's own
    address) serving a flat JPEG of that exact width and height; no token needed; an expired
    'oe=' (after --url-ttl) or altered URL answers 403 like the CDN

Tile behaviours (/maps/vtp/TILESET/2/Z/X/Y):
  - the token is taken only as ?access_token= ; a token only in the Authorization header (or none)
    answers 403, like the live tile server (always on)
  - z14: layers image + sequence (mly1_public, mly1_computed_public), point, traffic_sign; the
    computed tileset draws SfM-computed positions and adds quality_score and foot (always on)
  - z6-13: the sequence layer, z0-5: the overview layer, for both coverage tilesets, drawn from
    per-z14 summaries of a sample of the z14 tiles (every one from z10 on); feature tilesets: z14 only
  - render buffer: records within 64 px of a z14 tile's edge also appear in the neighbouring tile,
    at coordinates quantised to it and outside [0, 4096) (on by default; --no-render-buffer: off)
  - ETag / If-None-Match -> 304; tiles without data answer as --empty-tile says

Latency (--latency SPEC, off by default; 'realistic' = '1s' for every family, or per family as
'tiles=1.2s,search=1s,entity=0.6s,cdn=0.3s', cdn being the image URLs):
  - every answer of a family with a median m (304s, errors, throttles and faults included) is
    held until m x f after the request arrived: f = exp(0.35 Z) for a standard normal Z, clamped
    to [0.4, 3]; for 3 % of requests f is uniform in [3, 5] (the heavy tail). So never sooner than
    0.4 m nor later than 5 m; median m, mean about 1.15 m
  - deterministic for --seed: a hash of the request (path and query without the token) and how
    often it was made before, whatever the order of concurrent requests; a timer, so any number
    of requests wait at once
  - /__sim/stats \"latency\": per family its median_ms and the count, mean_ms and max_ms applied

Files: nothing outside the binary is read unless named: --faults FILE, --access-log FILE, and
--fixtures DIR (the real Zurich tile 14/8574/5735 served verbatim, its images on the Graph API).

Where the real behaviour is unknown the simulator takes the harsher side: bbox searches match the
tile pixel grid; an unknown id in ?ids= fails the whole request; 'Bearer' counts as no token.
";

/// The single token the simulator has "issued" unless `--token` says otherwise.
pub(crate) const DEFAULT_TOKEN: &str = "MLY|4000000000000001|0123456789abcdef0123456789abcdef";

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
    /// TOML file of faults, each off unless given: `[tiles]`/`[search]`/`[entity]` probabilities
    /// (error_5xx, throttle, slow + slow_secs, truncate, reset; tiles: corrupt, transient_404;
    /// search/entity: query_timeout), `permanent = ["z/x/y"]`, and the per-IP tile block
    /// `[block] after_tiles = N, secs = S` (302 to the login page after N tile requests, lasting S
    /// seconds after the last request made during it).
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Write one line per request here (tokens redacted).
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Tile requests allowed per UTC day.
    #[arg(long, default_value_t = 50_000)]
    pub tiles_per_day: u64,
    /// Search requests (`/images`, `/map_features`, `/image_ids`) allowed per sliding minute.
    #[arg(long, default_value_t = 10_000)]
    pub search_per_minute: u64,
    /// Entity requests (`/{id}`, `/?ids=`, `/{id}/detections`) allowed per sliding minute.
    #[arg(long, default_value_t = 60_000)]
    pub entity_per_minute: u64,
    /// HTTP status of the code-4 "Application request limit reached" answer (403 is how the live
    /// service is reported to send it, §13.9).
    #[arg(long, default_value_t = 429)]
    pub throttle_status: u16,
    /// A token the simulator accepts (repeatable).
    #[arg(long = "token", default_values_t = [DEFAULT_TOKEN.to_string()])]
    pub token: Vec<String>,
    /// How tiles without data answer.
    #[arg(long, value_enum, default_value = "200-empty")]
    pub empty_tile: EmptyTile,
    /// A bbox search matching more records than this fails with "Please reduce the amount of data".
    #[arg(long, default_value_t = 5000)]
    pub dense_limit: usize,
    /// Most ids one `?ids=` / `image_ids=` call may name.
    #[arg(long, default_value_t = 50)]
    pub max_ids: usize,
    /// Directory of the real captures (e.g. `../shared/fixtures/real`): the real Zürich tile
    /// 14/8574/5735 is then served verbatim and its images answer on the Graph API. Without it
    /// the simulator reads no file and every tile is synthetic.
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    /// Turn off the render buffer (on by default, like the real service): coverage images and
    /// map features near a z14 tile's edge also appear in the neighbouring tile, at coordinates
    /// quantised to that tile and lying outside [0, 4096).
    #[arg(long)]
    pub no_render_buffer: bool,
    /// Base of the URLs the simulator hands out (image URLs, `paging.next`), e.g. when it runs
    /// behind a proxy; default: its own listening address.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Seconds an image URL stays valid after the Graph API hands it out (`oe=`); an expired URL
    /// answers 403 like the CDN.
    #[arg(long, value_name = "SECS", default_value_t = cdn::URL_TTL_SECS)]
    pub url_ttl: i64,
    /// How long answers take: `off` (default: at once), `realistic` or `1s` (every family about
    /// 1 s, like the live API), or per family, e.g. `tiles=1.2s,search=1s,entity=0.6s,cdn=0.3s`
    /// (`cdn`: the image URLs). Log-normal around the median (σ 0.35, within 0.4–3×) and 3 % of
    /// answers 3–5× the median; deterministic for a seed; `/__sim/stats` reports what was applied.
    #[arg(long, value_name = "SPEC", default_value = "off", value_parser = LatencySpec::parse)]
    pub latency: LatencySpec,
}

impl SimulateArgs {
    /// Defaults of every option (as the command line gives them), listening on `listen`.
    pub fn with_listen(listen: SocketAddr) -> SimulateArgs {
        SimulateArgs {
            listen,
            seed: 1,
            epoch: 0,
            faults: None,
            access_log: None,
            tiles_per_day: 50_000,
            search_per_minute: 10_000,
            entity_per_minute: 60_000,
            throttle_status: 429,
            token: vec![DEFAULT_TOKEN.to_string()],
            empty_tile: EmptyTile::Empty200,
            dense_limit: 5000,
            max_ids: 50,
            fixtures: None,
            no_render_buffer: false,
            public_url: None,
            url_ttl: cdn::URL_TTL_SECS,
            latency: LatencySpec::default(),
        }
    }
}
