//! Configuration: `config.example.toml` documents every key. Loaded from a TOML file, then
//! `MAPILLARY_ACCESS_TOKEN` / `DATABASE_URL`, then `MLY_<SECTION>__<KEY>` variables.
//! Unknown keys and wrong types are errors that name the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::model::Tileset;

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
}

/// A secret string (the access token) that never prints itself.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent to the API.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "Secret(<empty>)" } else { "Secret(<redacted>)" })
    }
}

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
            concurrency: 8,
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
    /// Regions of more z14 tiles than this need `--yes`.
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

/// `[regions.NAME]`: exactly one of `bbox` or `geojson`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub bbox: Option<String>,
    pub geojson: Option<PathBuf>,
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

impl Config {
    /// Loads the config: the file (explicit, or `./mly-harvest.toml` if present), then the
    /// environment. `env` is passed in so tests need not touch the process environment.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut b = config::Config::builder();
        let base_dir: Option<PathBuf>;
        match file {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::Missing(p.to_path_buf()));
                }
                b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
                base_dir = p.parent().map(Path::to_path_buf);
            }
            None => {
                let p = Path::new(DEFAULT_FILE);
                b = b.add_source(config::File::from(p).format(config::FileFormat::Toml).required(false));
                base_dir = None;
            }
        }
        if let Some(t) = env.get("MAPILLARY_ACCESS_TOKEN").filter(|t| !t.is_empty()) {
            b = b.set_override("mapillary.access_token", t.as_str()).map_err(invalid)?;
        }
        if let Some(u) = env.get("DATABASE_URL").filter(|u| !u.is_empty()) {
            b = b.set_override("database.url", u.as_str()).map_err(invalid)?;
        }
        // Only MLY_<SECTION>__<KEY> names are config keys (and an unknown one is an error); other
        // MLY_ variables (MLY_LOG, MLY_CONFIG, the scripts' MLY_PGPORT, ...) are not ours to judge.
        let mly: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.strip_prefix("MLY_").is_some_and(|rest| rest.contains("__")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("MLY")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("harvest.tilesets")
                .source(Some(mly)),
        );
        let raw = b.build().map_err(invalid)?;
        let mut cfg: Config = raw.try_deserialize().map_err(invalid)?;
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
        validate_identifier(&self.database.schema)?;
        let positive = [
            ("limits.tiles_per_day", u64::from(self.limits.tiles_per_day)),
            ("limits.tiles_per_minute", u64::from(self.limits.tiles_per_minute)),
            ("mapillary.breaker_after", u64::from(self.mapillary.breaker_after)),
            ("limits.search_per_minute", u64::from(self.limits.search_per_minute)),
            ("limits.entity_per_minute", u64::from(self.limits.entity_per_minute)),
            ("limits.concurrency", u64::from(self.limits.concurrency)),
            ("mapillary.timeout_secs", self.mapillary.timeout_secs),
            ("harvest.lease_secs", self.harvest.lease_secs),
            ("harvest.block_pause_secs", self.harvest.block_pause_secs),
            ("database.max_connections", u64::from(self.database.max_connections)),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::Value { key: key.into(), problem: "must be greater than 0".into() });
            }
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
            if r.bbox.is_some() == r.geojson.is_some() {
                return Err(ConfigError::Value {
                    key: format!("regions.{name}"),
                    problem: "give exactly one of bbox or geojson".into(),
                });
            }
        }
        Ok(())
    }
}

fn invalid(e: config::ConfigError) -> ConfigError {
    ConfigError::Invalid(e.to_string())
}

/// Checks that a configured SQL identifier is plain, so it can be quoted and used safely.
pub fn validate_identifier(s: &str) -> Result<(), ConfigError> {
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63;
    if ok { Ok(()) } else { Err(ConfigError::Schema(s.to_string())) }
}

static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Remembers a secret so that `scrub` removes it from any text (logs, errors, panics).
pub fn register_secret(s: &str) {
    // Very short strings would scrub ordinary text; real tokens and passwords are long.
    if s.len() < 6 {
        return;
    }
    if let Ok(mut v) = SECRETS.write()
        && !v.iter().any(|x| x == s)
    {
        v.push(s.to_string());
    }
}

/// Replaces every registered secret (raw or percent-encoded) in `text` with `REDACTED`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(secrets) = SECRETS.read() else { return text.into() };
    let mut out: std::borrow::Cow<'_, str> = text.into();
    for s in secrets.iter() {
        for form in [s.clone(), s.replace('|', "%7C"), s.replace('|', "%7c")] {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), "REDACTED").into();
            }
        }
    }
    out
}

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
        assert!(validate_identifier("mapillary").is_ok());
        assert!(validate_identifier("mly_2").is_ok());
        for bad in ["", "2x", "Mapillary", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(validate_identifier(bad).is_err(), "{bad}");
        }
    }
}
