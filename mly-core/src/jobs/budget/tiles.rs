//! The daily tile budget and the tile pace, shared by every process and every harvest schema that
//! uses one token's app (`mly_harvest_global.tile_budget`, migration 0007; the pace is the app's
//! `tiles` timeline, migration 0010).
//!
//! The live tile server blocks an IP for about a day after a few thousand tile requests (API
//! notes §13.1), and Mapillary counts its 50,000/day per app id (§13.2). So the budget is not the
//! schema's: two schemas harvested with one token spend one `limits.tiles_per_day`, and the pace
//! (`limits.tiles_per_minute`) spaces tile requests evenly across all of their processes.

use std::time::Duration;

use chrono::NaiveDate;

use super::{AppKey, timeline};
use crate::store::{Store, StoreError, query_err};
use mly_contract::Family;

/// Creates the app's row of the day (affects one row only the first time).
const SEED_DAY: &str = "INSERT INTO mly_harvest_global.tile_budget (app_key, day, used) VALUES ($1, $2, 0) \
     ON CONFLICT (app_key, day) DO NOTHING";
/// Whether the harvest schema still has its pre-0007 per-schema `tile_budget`.
const HAS_LEGACY: &str = "SELECT to_regclass(format('%I.tile_budget', current_schema())) IS NOT NULL";
/// A new day row starts from what the schema's pre-0007 `tile_budget` counted that day, so an
/// upgrade mid-day does not reset the count (the unqualified name resolves as in HAS_LEGACY).
const CARRY_LEGACY: &str = "UPDATE mly_harvest_global.tile_budget \
     SET used = used + coalesce((SELECT used FROM tile_budget WHERE day = $2), 0) \
     WHERE app_key = $1 AND day = $2";
/// The row lock serialises every taker of the app's budget, in any process or schema.
const LOCK_DAY: &str =
    "SELECT used FROM mly_harvest_global.tile_budget WHERE app_key = $1 AND day = $2 FOR UPDATE";
const SPEND: &str =
    "UPDATE mly_harvest_global.tile_budget SET used = used + $3 WHERE app_key = $1 AND day = $2";
/// Tiles of one app's day already granted.
const USED: &str = "SELECT used::bigint FROM mly_harvest_global.tile_budget WHERE app_key = $1 AND day = $2";

/// The configured tile limits (`limits.tiles_per_day`, `limits.tiles_per_minute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileLimits {
    pub per_day: u32,
    pub per_minute: u32,
}

impl TileLimits {
    /// Time between two tile requests of the app at the configured pace.
    pub fn spacing(&self) -> Duration {
        Duration::from_secs_f64(60.0 / f64::from(self.per_minute.max(1)))
    }
}

/// What [`take`] granted: how many tiles, and when each may start (relative to the grant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// Tiles granted; fewer than asked when the day's budget ran out.
    pub tiles: u32,
    /// Wait before the first granted tile (other processes hold the slots before it).
    pub first_in: Duration,
    /// Time between two granted tiles.
    pub spacing: Duration,
}

impl Grant {
    /// Nothing granted.
    pub fn none() -> Grant {
        Grant { tiles: 0, first_in: Duration::ZERO, spacing: Duration::ZERO }
    }

    /// When the `i`-th granted tile may start, from the moment of the grant.
    pub fn start_of(&self, i: u32) -> Duration {
        self.first_in.saturating_add(self.spacing.saturating_mul(i))
    }
}

/// Atomically grants min(n, remaining) tiles of the app's UTC-day budget and reserves their
/// slots in the app's pace; concurrent takers (any process, any schema) never overspend and
/// never share a slot.
pub async fn take(
    store: &Store,
    app: &AppKey,
    day: NaiveDate,
    limits: TileLimits,
    n: u32,
) -> Result<Grant, StoreError> {
    let ctx = || format!("taking tile budget of {app} for {day}");
    let mut tx = store.pool().begin().await.map_err(query_err(ctx()))?;
    let created = sqlx::query(SEED_DAY)
        .bind(app.as_str())
        .bind(day)
        .execute(&mut *tx)
        .await
        .map_err(query_err(ctx()))?;
    if created.rows_affected() == 1 {
        let legacy: bool =
            sqlx::query_scalar(HAS_LEGACY).fetch_one(&mut *tx).await.map_err(query_err(ctx()))?;
        if legacy {
            sqlx::query(CARRY_LEGACY)
                .bind(app.as_str())
                .bind(day)
                .execute(&mut *tx)
                .await
                .map_err(query_err(ctx()))?;
        }
    }
    let used: i32 = sqlx::query_scalar(LOCK_DAY)
        .bind(app.as_str())
        .bind(day)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_err(ctx()))?;
    let remaining = i64::from(limits.per_day) - i64::from(used);
    // Within 0..=n, so it fits u32 and i32 (n is at most the concurrency).
    let granted = remaining.clamp(0, i64::from(n)) as u32;
    if granted == 0 {
        tx.commit().await.map_err(query_err(ctx()))?;
        return Ok(Grant::none());
    }
    sqlx::query(SPEND)
        .bind(app.as_str())
        .bind(day)
        .bind(granted as i32)
        .execute(&mut *tx)
        .await
        .map_err(query_err(ctx()))?;
    // The granted tiles' slots of the app's tile timeline, in the budget's transaction: a
    // rolled-back grant reserves nothing.
    let spacing = limits.spacing();
    let slots = timeline::reserve(&mut *tx, app, Family::Tiles, spacing * granted).await?;
    tx.commit().await.map_err(query_err(ctx()))?;
    Ok(Grant { tiles: granted, first_in: slots.first_in, spacing })
}

/// Tiles of the app's UTC-day budget already granted (0 when nothing was taken that day).
pub async fn used(store: &Store, app: &AppKey, day: NaiveDate) -> Result<i64, StoreError> {
    let used: Option<i64> = sqlx::query_scalar(USED)
        .bind(app.as_str())
        .bind(day)
        .fetch_optional(store.pool())
        .await
        .map_err(query_err(format!("reading the tile budget of {app} for {day}")))?;
    Ok(used.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_slots_are_spaced() {
        let l = TileLimits { per_day: 10, per_minute: 20 };
        assert_eq!(l.spacing(), Duration::from_secs(3));
        let g = Grant { tiles: 3, first_in: Duration::from_secs(1), spacing: l.spacing() };
        assert_eq!(g.start_of(0), Duration::from_secs(1));
        assert_eq!(g.start_of(2), Duration::from_secs(7));
    }
}
