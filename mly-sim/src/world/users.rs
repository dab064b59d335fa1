//! The world's creators (users) and organizations.

use std::collections::{HashMap, HashSet};

use super::World;
use super::density::{CITIES, density};
use super::fixture_world::{FIXTURE_TILE, is_fixture_image};
use super::ids::{KIND_USER, split_id};
use super::movers::neighbour;
use super::random::{P_USER, hash};
use super::records::SimUser;
use mly_contract::hash::splitmix64 as mix;
use mly_contract::tiles::{HARVEST_ZOOM, TileId};

pub(super) const USERS: i64 = 4000;
pub(super) const ORGS: i64 = 300;

pub(super) fn user_id(k: i64) -> i64 {
    (KIND_USER << 50) | (k + 1)
}

pub(super) fn username(seed: u64, id: i64) -> String {
    const A: [&str; 8] = ["blue", "quick", "urban", "quiet", "north", "green", "swift", "lucky"];
    const N: [&str; 8] = ["mapper", "walker", "rider", "fox", "owl", "driver", "lens", "cyclist"];
    let h = hash(seed, &[P_USER, id as u64]);
    format!("{}_{}{}", A[(h % 8) as usize], N[(mix(h) % 8) as usize], mix(h ^ 1) % 1000)
}

impl World {
    /// The user with this id, if it is one of the world's creators.
    pub(crate) fn user(&self, id: i64) -> Option<SimUser> {
        if is_fixture_image(self.fx(), id) {
            return None;
        }
        let (kind, _, local) = split_id(id)?;
        let plain = id == user_id(local - 1);
        (kind == KIND_USER && plain && (1..=USERS).contains(&local))
            .then(|| SimUser { id, username: username(self.seed, id) })
    }

    /// The ids of the world's creators called `name` (generated names can repeat).
    pub(crate) fn users_named(&self, name: &str) -> Vec<i64> {
        let names = self.usernames.get_or_init(|| {
            let mut m: HashMap<String, Vec<i64>> = HashMap::new();
            for k in 0..USERS {
                let id = user_id(k);
                m.entry(username(self.seed, id)).or_default().push(id);
            }
            m
        });
        names.get(name).cloned().unwrap_or_default()
    }

    /// Every z14 tile that can hold images of creator `user` at any epoch, sorted (a superset).
    ///
    /// Creators are local (see `seq_attrs`): a z8 region's sequences come from a band of 40
    /// creators. The tiles are those with data in the regions whose band holds `user`, with a rim of
    /// one tile (drives that moved across a region border), plus the real fixture tile, whose
    /// creators are drawn from all users. Global searches by creator scan just these.
    pub(crate) fn creator_tiles(&self, user: i64) -> Vec<TileId> {
        let Some((KIND_USER, _, local)) = split_id(user) else { return Vec::new() };
        let k = (local - 1) as u64;
        let n = 1i64 << HARVEST_ZOOM;
        let mut regions = HashSet::new();
        for &(lon, lat) in &CITIES {
            // Towns and country roads exist up to 200 km from a city (see `density`).
            let dlat = 205.0 / 111.2;
            let dlon = dlat / lat.to_radians().cos().max(0.05);
            let x_of = |lon: f64| ((lon + 180.0) / 360.0 * n as f64).floor() as i64;
            let (x0, x1) = (x_of(lon - dlon), x_of(lon + dlon));
            let south = TileId::containing(HARVEST_ZOOM, lon, (lat - dlat).max(-85.0));
            let north = TileId::containing(HARVEST_ZOOM, lon, (lat + dlat).min(85.0));
            for x in x0..=x1 {
                for y in i64::from(north.y)..=i64::from(south.y) {
                    regions.insert((x.rem_euclid(n) >> 6, y >> 6));
                }
            }
        }
        let mut tiles = HashSet::new();
        for (rx, ry) in regions {
            let band = hash(self.seed, &[P_USER, ((rx as u64) << 16) | ry as u64]) % USERS as u64;
            if (k + USERS as u64 - band) % USERS as u64 >= 40 {
                continue;
            }
            for x in (rx << 6) - 1..=(rx << 6) + 64 {
                for y in ((ry << 6) - 1).max(0)..=((ry << 6) + 64).min(n - 1) {
                    let Ok(t) = TileId::new(HARVEST_ZOOM, x.rem_euclid(n) as u32, y as u32) else { continue };
                    // A tile without data of its own can still receive a neighbour's drive.
                    let busy_neighbour =
                        (0..4u8).filter_map(|e| neighbour(t, e)).any(|nb| density(self.seed, nb) >= 100);
                    if density(self.seed, t) > 0 || busy_neighbour {
                        tiles.insert(t);
                    }
                }
            }
        }
        tiles.insert(FIXTURE_TILE);
        let mut tiles: Vec<TileId> = tiles.into_iter().collect();
        tiles.sort_unstable_by_key(|t| (t.x, t.y));
        tiles
    }
}
