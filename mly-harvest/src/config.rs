//! Configuration: `config.example.toml` documents every key. Loaded from a TOML file, then
//! `MAPILLARY_ACCESS_TOKEN` / `DATABASE_URL`, then `MLY_<SECTION>__<KEY>` variables.
//! Unknown keys and wrong types are errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use mly_contract::Tileset;
use mly_core::region::RegionSpec;
use mly_core::settings::{ApiSettings, Harvest, Limits, SyncSettings};
use mly_core::store::SchemaNameError;
use std::time::Duration;

/// Errors while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("config: {0}")]
    Invalid(String),
    #[error(
        "config key database.schema: {0:?} is not a plain identifier (letters, digits, _; not starting with a digit; at most 63 bytes)"
    )]
    Schema(String),
    #[error(
        "config key harvest.tilesets: unknown tileset {0:?} (known: mly1_public, mly1_computed_public, mly_map_feature_point, mly_map_feature_traffic_sign)"
    )]
    Tileset(String),
    #[error("config key {key}: {problem}")]
    Value { key: String, problem: String },
    #[error("{a} and {b} are both set, to different values: set only one")]
    Conflict { a: String, b: String },
    #[error(
        "the access token contains spaces or control characters inside it; check MAPILLARY_ACCESS_TOKEN / mapillary.access_token"
    )]
    Token,
}

pub use mly_contract::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mapillary: MapillaryConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub harvest: HarvestConfig,
    #[serde(default)]
    pub regions: BTreeMap<String, RegionConfig>,
}

/// The configuration in the core's terms: what each part of the harvester is given.
impl Config {
    /// The named region `name` (`[regions.NAME]`), if the config defines it.
    pub fn region_spec(&self, name: &str) -> Option<RegionSpec> {
        let r = self.regions.get(name)?;
        match (&r.bbox, &r.geojson, &r.point) {
            (Some(b), _, _) => Some(RegionSpec::Bbox(b.clone())),
            (None, Some(p), _) => Some(RegionSpec::GeoJson(p.clone())),
            (None, None, Some(p)) => Some(RegionSpec::Point(p.clone())),
            // Validation guarantees exactly one of the three.
            (None, None, None) => None,
        }
    }

    /// How the API client reaches the API (`[mapillary]` and the Graph limits).
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            graph_url: self.mapillary.graph_url.clone(),
            tiles_url: self.mapillary.tiles_url.clone(),
            token: self.mapillary.access_token.clone(),
            timeout: Duration::from_secs(self.mapillary.timeout_secs),
            max_retries: self.mapillary.max_retries,
            search_per_minute: self.limits.search_per_minute,
            entity_per_minute: self.limits.entity_per_minute,
            tiles_in_flight: mly_core::api::tiles_in_flight(self.limits.tiles_per_minute),
            breaker_after: self.mapillary.breaker_after,
        }
    }

    /// What to harvest (`[harvest]`).
    pub fn harvest_settings(&self) -> Harvest {
        let h = &self.harvest;
        Harvest {
            tilesets: h.tilesets.clone(),
            enrich: h.enrich,
            detections: h.detections,
            lease: Duration::from_secs(h.lease_secs),
            recheck: Duration::from_secs(h.recheck_secs),
            block_pause: Duration::from_secs(h.block_pause_secs),
        }
    }

    /// The limits to stay under (`[limits]`).
    pub fn limit_settings(&self) -> Limits {
        let l = &self.limits;
        Limits {
            tiles_per_day: l.tiles_per_day,
            tiles_per_minute: l.tiles_per_minute,
            search_per_minute: l.search_per_minute,
            entity_per_minute: l.entity_per_minute,
            concurrency: l.concurrency,
        }
    }

    /// Everything `sync` needs besides the region and the store.
    pub fn sync_settings(&self) -> SyncSettings {
        SyncSettings {
            api: self.api_settings(),
            harvest: self.harvest_settings(),
            limits: self.limit_settings(),
        }
    }
}

/// `[mapillary]`: where the API is and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapillaryConfig {
    pub access_token: Secret,
    pub graph_url: String,
    pub tiles_url: String,
    /// Per-request timeout.
    pub timeout_secs: u64,
    /// Retries of a transient failure before the tile is marked failed.
    pub max_retries: u32,
    /// Calls in a row of one API family that fail to connect or time out before the run stops
    /// (exit 9) instead of failing tile after tile against a host that is not there.
    pub breaker_after: u32,
}

impl Default for MapillaryConfig {
    fn default() -> Self {
        MapillaryConfig {
            access_token: Secret::default(),
            graph_url: "https://graph.mapillary.com".into(),
            tiles_url: "https://tiles.mapillary.com".into(),
            timeout_secs: 30,
            max_retries: 6,
            breaker_after: DEFAULT_BREAKER_AFTER,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub schema: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: Secret::default(), schema: "mapillary".into(), max_connections: 8 }
    }
}

/// Default of `mapillary.breaker_after`: with 8 tiles in flight, an unreachable host trips it
/// within the first few retry rounds (seconds), while a network blip of one timeout per
/// in-flight call (8 in a row) does not stop a night's run.
pub const DEFAULT_BREAKER_AFTER: u32 = 20;

/// Default of `limits.tiles_per_day`: below the lowest daily count at which the live tile server
/// has been seen blocking an IP (1,938 tile requests; API notes §13.1), with room for retries.
pub const DEFAULT_TILES_PER_DAY: u32 = 1_500;

/// Default of `limits.tiles_per_minute`: a third of the 60/min pace that was still blocked at
/// 5,013 a day, so the default day's budget takes 75 minutes instead of arriving as a spike
/// (API notes §13.2: "a sudden spike" from one IP may be blocked earlier).
pub const DEFAULT_TILES_PER_MINUTE: u32 = 20;

/// `[limits]`: the API quotas to stay under, and parallelism.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Tile requests per UTC day, shared by every process and schema on the token's app.
    pub tiles_per_day: u32,
    /// Tile requests per minute, paced evenly across every process on the token's app.
    pub tiles_per_minute: u32,
    pub search_per_minute: u32,
    pub entity_per_minute: u32,
    /// Tiles processed at once.
    pub concurrency: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            tiles_per_day: DEFAULT_TILES_PER_DAY,
            tiles_per_minute: DEFAULT_TILES_PER_MINUTE,
            search_per_minute: 10_000,
            entity_per_minute: 60_000,
            concurrency: 48,
        }
    }
}

/// `[harvest]`: what to harvest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HarvestConfig {
    #[serde(deserialize_with = "de_tilesets")]
    pub tilesets: Vec<Tileset>,
    pub enrich: bool,
    pub detections: bool,
    /// How long a worker holds a tile before another may take it.
    pub lease_secs: u64,
    /// Regions needing more tile requests (z14 tiles x tilesets) than this need `--yes`.
    pub max_tiles_without_confirm: u64,
    /// A tile that held live records and reads empty (or 403/404) is read again this many seconds
    /// later in the run (twice) before its records are checked by id.
    pub recheck_secs: u64,
    /// After the tile server blocked this IP, no tile request for this many seconds.
    pub block_pause_secs: u64,
}

impl Default for HarvestConfig {
    fn default() -> Self {
        HarvestConfig {
            tilesets: vec![Tileset::Public, Tileset::FeaturePoint, Tileset::FeatureTrafficSign],
            enrich: true,
            detections: false,
            lease_secs: 120,
            max_tiles_without_confirm: 250_000,
            recheck_secs: 60,
            // Blocks seen on the live service lifted after 20.5 to 26.3 h of silence (§13.1).
            block_pause_secs: 24 * 3600,
        }
    }
}

/// `[regions.NAME]`: exactly one of `bbox`, `geojson` or `point` (`"lon,lat@200m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub bbox: Option<String>,
    pub geojson: Option<PathBuf>,
    pub point: Option<String>,
}

fn de_tilesets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Tileset>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            Tileset::from_name(n).ok_or_else(|| serde::de::Error::custom(ConfigError::Tileset(n.clone())))
        })
        .collect()
}

/// The default config file, read when present and no `--config` is given.
pub const DEFAULT_FILE: &str = "mly-harvest.toml";

/// A config file larger than this is refused (it is read with this cap, whatever its stated size).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 1] = ["harvest.tilesets"];

/// Ranges of every count and duration: (key, min, max). Types give the rest (u32 keys cannot be
/// negative); these keep values sane (a 317-year lease overflowed in the database).
const RANGES: &[(&str, u64, u64)] = &[
    ("mapillary.timeout_secs", 1, 3_600),
    ("mapillary.max_retries", 0, 100),
    ("database.max_connections", 1, 1_000),
    ("limits.tiles_per_day", 1, u32::MAX as u64),
    ("limits.search_per_minute", 1, u32::MAX as u64),
    ("limits.entity_per_minute", 1, u32::MAX as u64),
    ("limits.concurrency", 1, 1_024),
    ("harvest.lease_secs", 3, 86_400),
    // Up to a week: a block longer than that is not one this pause should model.
    ("harvest.block_pause_secs", 1, 7 * 86_400),
    ("harvest.recheck_secs", 0, 86_400),
    ("harvest.max_tiles_without_confirm", 0, 10_000_000_000),
];

pub use mly_core::io::read_capped;

/// An environment value as a TOML value: a TOML literal (`8`, `true`, `2.7`, `"x"`) keeps its
/// type, so the strict deserialisation below refuses `concurrency = true`; anything else is a
/// string. List keys split on commas.
fn env_value(key: &str, raw: &str) -> toml::Value {
    if LIST_KEYS.contains(&key) {
        return toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        );
    }
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) if t.len() == 1 => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        _ => toml::Value::String(raw.to_string()),
    }
}

/// The dotted key of an `MLY_<SECTION>__<KEY>` variable (`MLY_REGIONS__<NAME>__BBOX` for regions).
fn env_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix("MLY_")?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(str::to_ascii_lowercase).collect())
}

/// Sets `path` (section, [name,] key) in the table, creating sections as needed.
fn set_key(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(ConfigError::Invalid(format!("{origin} names no key")));
    };
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| ConfigError::Value {
            key: p.clone(),
            problem: format!("must be a table to take {origin}"),
        })?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// One of two environment variables for the same key; both set to different values is an error,
/// not a silent winner.
fn one_of<'a>(
    env: &'a BTreeMap<String, String>,
    plain: &str,
    mly: &str,
) -> Result<Option<(&'a str, String)>, ConfigError> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    match (get(plain), get(mly)) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::Conflict { a: plain.into(), b: mly.into() }),
        (Some(a), _) => Ok(Some((a, plain.to_string()))),
        (None, Some(b)) => Ok(Some((b, mly.to_string()))),
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Loads the config: the file (explicit, or `./mly-harvest.toml` if present), then the
    /// environment. `env` is passed in so tests need not touch the process environment.
    ///
    /// Types are strict: TOML's own types and TOML literals in the environment are never
    /// converted (`concurrency = true`, `2.7` or `"8"` is an error naming the key).
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_FILE), false),
        };
        let mut table = toml::Table::new();
        if path.exists() {
            let text = read_capped(&path, MAX_CONFIG_BYTES)
                .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
            table = text.parse::<toml::Table>().map_err(|e| {
                let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                ConfigError::Invalid(format!(
                    "config file {}{}: {}",
                    path.display(),
                    line.map(|l| format!(" line {l}")).unwrap_or_default(),
                    e.message().trim()
                ))
            })?;
        } else if required {
            return Err(ConfigError::Missing(path));
        }
        let base_dir = file.and_then(Path::parent).map(Path::to_path_buf);

        // Where each environment-set key came from, for error messages.
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in env {
            if matches!(k.as_str(), "MLY_MAPILLARY__ACCESS_TOKEN" | "MLY_DATABASE__URL") {
                continue; // below, with their plain twins
            }
            let Some(path) = env_key(k) else { continue };
            let dotted = path.join(".");
            set_key(&mut table, &path, env_value(&dotted, v), k)?;
            origins.insert(dotted, k.clone());
        }
        for (plain, mly, section, key) in [
            ("MAPILLARY_ACCESS_TOKEN", "MLY_MAPILLARY__ACCESS_TOKEN", "mapillary", "access_token"),
            ("DATABASE_URL", "MLY_DATABASE__URL", "database", "url"),
        ] {
            if let Some((v, from)) = one_of(env, plain, mly)? {
                let path = [section.to_string(), key.to_string()];
                set_key(&mut table, &path, toml::Value::String(v.to_string()), &from)?;
                origins.insert(path.join("."), from);
            }
        }

        let mut cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let from = origins.get(&key).map(|o| format!(" (from {o})")).unwrap_or_default();
            ConfigError::Value { key: format!("{key}{from}"), problem: e.inner().message().to_string() }
        })?;
        // A token or URL pasted with a trailing newline is the same token or URL.
        cfg.mapillary.access_token = Secret::new(cfg.mapillary.access_token.expose().trim());
        cfg.database.url = Secret::new(cfg.database.url.expose().trim());
        // Relative GeoJSON paths in a config file are relative to that file.
        if let Some(dir) = base_dir {
            for r in cfg.regions.values_mut() {
                if let Some(g) = r.geojson.as_mut().filter(|g| g.is_relative()) {
                    *g = dir.join(&*g);
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_schema(&self.database.schema)?;
        let values = [
            ("mapillary.timeout_secs", self.mapillary.timeout_secs),
            ("mapillary.max_retries", u64::from(self.mapillary.max_retries)),
            ("database.max_connections", u64::from(self.database.max_connections)),
            ("limits.tiles_per_day", u64::from(self.limits.tiles_per_day)),
            ("limits.tiles_per_minute", u64::from(self.limits.tiles_per_minute)),
            ("mapillary.breaker_after", u64::from(self.mapillary.breaker_after)),
            ("limits.search_per_minute", u64::from(self.limits.search_per_minute)),
            ("limits.entity_per_minute", u64::from(self.limits.entity_per_minute)),
            ("limits.concurrency", u64::from(self.limits.concurrency)),
            ("harvest.lease_secs", self.harvest.lease_secs),
            ("harvest.max_tiles_without_confirm", self.harvest.max_tiles_without_confirm),
            ("harvest.block_pause_secs", self.harvest.block_pause_secs),
            ("harvest.recheck_secs", self.harvest.recheck_secs),
        ];
        for (key, v) in values {
            let Some(&(_, min, max)) = RANGES.iter().find(|(k, _, _)| *k == key) else { continue };
            if v < min || v > max {
                let problem = if min == 1 && v == 0 {
                    "must be greater than 0".to_string()
                } else {
                    format!("{v} is outside {min}..={max}")
                };
                return Err(ConfigError::Value { key: key.into(), problem });
            }
        }
        // The token goes into a header and a URL: anything but visible ASCII is a broken token
        // (refused like any bad token), not a transport error.
        let token = self.mapillary.access_token.expose();
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Token);
        }
        for (key, url) in [
            ("mapillary.graph_url", &self.mapillary.graph_url),
            ("mapillary.tiles_url", &self.mapillary.tiles_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Value {
                    key: key.into(),
                    problem: format!("{url:?} is not an http(s) URL"),
                });
            }
        }
        if self.harvest.tilesets.is_empty() {
            return Err(ConfigError::Value {
                key: "harvest.tilesets".into(),
                problem: "must name at least one tileset".into(),
            });
        }
        for (name, r) in &self.regions {
            let given = [r.bbox.is_some(), r.geojson.is_some(), r.point.is_some()];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(ConfigError::Value {
                    key: format!("regions.{name}"),
                    problem: "give exactly one of bbox, geojson or point".into(),
                });
            }
        }
        Ok(())
    }
}

/// Checks `database.schema` with the store's rule (plain identifier, not reserved).
pub fn validate_schema(s: &str) -> Result<(), ConfigError> {
    match mly_core::store::check_schema_name(s) {
        Ok(()) => Ok(()),
        Err(SchemaNameError::NotIdentifier) => Err(ConfigError::Schema(s.to_string())),
        Err(SchemaNameError::Reserved) => Err(ConfigError::Value {
            key: "database.schema".into(),
            problem: format!("{s:?} is reserved by PostgreSQL; choose another schema name"),
        }),
    }
}

pub use mly_contract::secret::{register as register_secret, scrub};

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_and_env_overrides() {
        let f = file("[limits]\nconcurrency = 3\n");
        let c = Config::load(
            Some(f.path()),
            &env(&[
                ("MLY_MAPILLARY__GRAPH_URL", "http://127.0.0.1:9/"),
                ("MAPILLARY_ACCESS_TOKEN", "MLY|1|abc"),
                ("MLY_HARVEST__TILESETS", "mly1_public"),
                ("MLY_LIMITS__TILES_PER_DAY", "12"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.concurrency, 3);
        assert_eq!(c.limits.tiles_per_day, 12);
        assert_eq!(c.mapillary.graph_url, "http://127.0.0.1:9/");
        assert_eq!(c.mapillary.access_token.expose(), "MLY|1|abc");
        assert_eq!(c.harvest.tilesets, vec![Tileset::Public]);
        assert_eq!(c.database.schema, "mapillary");
    }

    #[test]
    fn token_never_in_debug() {
        let c = Config::load(None, &env(&[("MAPILLARY_ACCESS_TOKEN", "MLY|42|deadbeefsecret")])).unwrap();
        assert!(!format!("{c:?}").contains("deadbeefsecret"));
    }

    #[test]
    fn unknown_key_is_named() {
        let f = file("[limits]\nconcurency = 3\n");
        let e = Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
        let e = Config::load(None, &env(&[("MLY_LIMITS__BOGUS", "1")])).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn other_mly_variables_are_not_config_keys() {
        let c = Config::load(
            None,
            &env(&[
                ("MLY_LOG", "debug"),
                ("MLY_CONFIG", "x.toml"),
                ("MLY_PGPORT", "54339"),
                ("MLY_LIMITS__CONCURRENCY", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.concurrency, 2);
        let e = Config::load(None, &env(&[("MLY_LIMITZ__CONCURRENCY", "2")])).unwrap_err().to_string();
        assert!(e.contains("limitz"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_schema() {
        let f = file("[limits]\nconcurrency = \"many\"\n");
        let e = Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("concurrency"), "{e}");
        let f = file("[database]\nschema = \"x; drop table\"\n");
        assert!(matches!(Config::load(Some(f.path()), &env(&[])), Err(ConfigError::Schema(_))));
        let f = file("[harvest]\ntilesets = [\"mly2\"]\n");
        let e = Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string();
        assert!(e.contains("mly2"), "{e}");
    }

    #[test]
    fn identifiers() {
        assert!(validate_schema("mapillary").is_ok());
        assert!(validate_schema("mly_2").is_ok());
        for bad in ["", "2x", "Mapillary", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}
