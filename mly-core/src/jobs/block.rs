//! The tile server's per-IP block (§13.1 of the API notes), remembered in the database.
//!
//! A redirect or an HTML page where a tile should be means the tile server has blocked this
//! machine's IP for about a day, and every request during the block extends it. The first such
//! answer is written to `mly_harvest_global.tile_block` (migration 0006), which every harvest
//! schema of the database sees; runs on this machine that start before `resume_after` stop at
//! once without asking the tile server anything, and so does every process of a run that is
//! already under way (it checks before each tile request).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::store::{Store, StoreError, query_err};

/// The active block of a tile server for a machine.
const ACTIVE: &str = "
SELECT blocked_at, resume_after, detail FROM mly_harvest_global.tile_block
WHERE tile_server = $1 AND client_host = $2 AND resume_after > now()";

/// Records a block; the newest observation wins (a block met with `--ignore-block` restarts it).
const RECORD: &str = "
INSERT INTO mly_harvest_global.tile_block AS b
    (tile_server, client_host, blocked_at, resume_after, detail, schema_name, run_id)
VALUES ($1, $2, $3, $3 + $4 * interval '1 second', $5, $6, $7)
ON CONFLICT (tile_server, client_host) DO UPDATE SET
    blocked_at = EXCLUDED.blocked_at, resume_after = EXCLUDED.resume_after, detail = EXCLUDED.detail,
    schema_name = EXCLUDED.schema_name, run_id = EXCLUDED.run_id
RETURNING blocked_at, resume_after, detail";

/// A recorded block.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// When the block answer arrived.
    pub at: DateTime<Utc>,
    /// When `sync` may ask the tile server again.
    pub resume_after: DateTime<Utc>,
    /// What the answer was (status and redirect host or content type; never the URL).
    pub detail: String,
}

impl Block {
    /// The one line a run ends with.
    pub fn message(&self) -> String {
        let hours = (self.resume_after - self.at).num_minutes() as f64 / 60.0;
        format!(
            "the tile server blocked this IP at {} ({}); `sync` resumes after {} (T + {hours:.0} h; asking sooner \
             extends the block, `--ignore-block` overrides)",
            self.at.format("%Y-%m-%dT%H:%M:%SZ"),
            self.detail,
            self.resume_after.format("%Y-%m-%dT%H:%M:%SZ"),
        )
    }
}

/// Where the block applies: the tile server's origin (scheme://host:port), and this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKey {
    pub tile_server: String,
    pub client_host: String,
}

impl BlockKey {
    /// The key for the configured tiles URL on this machine.
    pub fn new(tiles_url: &str) -> BlockKey {
        let tile_server = reqwest::Url::parse(tiles_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| tiles_url.trim_end_matches('/').to_string());
        BlockKey { tile_server, client_host: crate::jobs::hostname() }
    }
}

/// The block in force for `key`, if any.
pub async fn active(store: &Store, key: &BlockKey) -> Result<Option<Block>, StoreError> {
    let row = sqlx::query(ACTIVE)
        .bind(&key.tile_server)
        .bind(&key.client_host)
        .fetch_optional(store.pool())
        .await
        .map_err(query_err("looking for a recorded tile server block"))?;
    row.map(|r| block_of(&r)).transpose()
}

/// Writes a block met at `at`, lasting `pause`, and returns it as stored.
pub async fn record(
    store: &Store,
    key: &BlockKey,
    at: DateTime<Utc>,
    pause: Duration,
    detail: &str,
    run_id: i64,
) -> Result<Block, StoreError> {
    let row = sqlx::query(RECORD)
        .bind(&key.tile_server)
        .bind(&key.client_host)
        .bind(at)
        .bind(pause.as_secs_f64())
        .bind(detail)
        .bind(store.schema())
        .bind(run_id)
        .fetch_one(store.pool())
        .await
        .map_err(query_err("recording the tile server block"))?;
    block_of(&row)
}

fn block_of(r: &sqlx::postgres::PgRow) -> Result<Block, StoreError> {
    let ctx = "reading a tile server block";
    Ok(Block {
        at: r.try_get(0).map_err(query_err(ctx))?,
        resume_after: r.try_get(1).map_err(query_err(ctx))?,
        detail: r.try_get(2).map_err(query_err(ctx))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_origin() {
        let k = BlockKey::new("https://tiles.mapillary.com/");
        assert_eq!(k.tile_server, "https://tiles.mapillary.com");
        assert_eq!(BlockKey::new("http://127.0.0.1:8080/x").tile_server, "http://127.0.0.1:8080");
        assert!(!k.client_host.is_empty());
    }

    #[test]
    fn message_is_one_line_with_both_times() {
        let at = DateTime::parse_from_rfc3339("2026-07-29T02:30:00Z").unwrap().with_timezone(&Utc);
        let b = Block {
            at,
            resume_after: at + chrono::Duration::hours(24),
            detail: "HTTP 302 redirect to x".into(),
        };
        let m = b.message();
        assert!(m.starts_with("the tile server blocked this IP at 2026-07-29T02:30:00Z"), "{m}");
        assert!(m.contains("`sync` resumes after 2026-07-30T02:30:00Z") && m.contains("T + 24 h"), "{m}");
        assert!(!m.contains('\n'));
    }
}
