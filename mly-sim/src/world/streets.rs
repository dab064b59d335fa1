//! The streets of a tile: its local metric frame (metres east and north of its south-west corner),
//! a rotated street grid, drives along it and walks around a plaza.

use super::random::{P_GRID, Rng, hash};
use mly_contract::hash::{splitmix64 as mix, unit};
use mly_contract::tiles::TileId;

#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) west: f64,
    pub(super) south: f64,
    pub(super) dlon: f64,
    pub(super) dlat: f64,
    pub(super) w: f64,
    pub(super) h: f64,
}

impl Frame {
    pub(super) fn new(tile: TileId) -> Frame {
        let b = tile.bounds();
        let clat = ((b.south + b.north) / 2.0).to_radians();
        let (dlon, dlat) = (b.east - b.west, b.north - b.south);
        Frame {
            west: b.west,
            south: b.south,
            dlon,
            dlat,
            w: dlon * 111_320.0 * clat.cos(),
            h: dlat * 110_540.0,
        }
    }
    pub(super) fn lonlat(&self, x: f64, y: f64) -> (f64, f64) {
        (self.west + x / self.w * self.dlon, self.south + y / self.h * self.dlat)
    }
    /// Inside with a sliver of margin so rounding to lon/lat never lands on a neighbour.
    pub(super) fn inside(&self, x: f64, y: f64) -> bool {
        x > 0.05 && y > 0.05 && x < self.w - 0.05 && y < self.h - 0.05
    }
    pub(super) fn clamp(&self, x: f64, y: f64) -> (f64, f64) {
        (x.clamp(0.1, self.w - 0.1), y.clamp(0.1, self.h - 0.1))
    }
}

/// A street point an image was taken at, with the travel bearing (degrees clockwise from north).
#[derive(Clone, Copy)]
pub(super) struct StreetPoint {
    pub(super) x: f64,
    pub(super) y: f64,
    pub(super) bearing: f64,
}

/// The street grid of a tile: rotated blocks, finer in dense tiles.
pub(super) struct Grid {
    pub(super) spacing: f64,
    pub(super) e1: (f64, f64),
    pub(super) e2: (f64, f64),
    pub(super) origin: (f64, f64),
    pub(super) reach: i32,
}

impl Grid {
    pub(super) fn new(seed: u64, tile: TileId, frame: &Frame, n: u32) -> Grid {
        let h = hash(seed, &[P_GRID, u64::from(tile.x), u64::from(tile.y)]);
        let spacing = if n > 10_000 {
            80.0
        } else if n > 2_000 {
            130.0
        } else {
            220.0
        } * (0.85 + 0.3 * unit(h));
        let theta = unit(mix(h ^ 1)) * std::f64::consts::FRAC_PI_2;
        let origin = (frame.w / 2.0 + spacing * unit(mix(h ^ 2)), frame.h / 2.0 + spacing * unit(mix(h ^ 3)));
        let reach = (frame.w.max(frame.h) * 0.75 / spacing).ceil() as i32 + 1;
        Grid { spacing, e1: (theta.cos(), theta.sin()), e2: (-theta.sin(), theta.cos()), origin, reach }
    }
    pub(super) fn node(&self, i: i32, j: i32) -> (f64, f64) {
        let (u, v) = (f64::from(i) * self.spacing, f64::from(j) * self.spacing);
        (self.origin.0 + u * self.e1.0 + v * self.e2.0, self.origin.1 + u * self.e1.1 + v * self.e2.1)
    }
}

/// A drive along the grid: street points inside the frame, `count` of them at most.
pub(super) fn drive(grid: &Grid, frame: &Frame, rng: &mut Rng, count: usize, step: f64) -> Vec<StreetPoint> {
    const DIRS: [(i32, i32); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
    let r = grid.reach - 1;
    // Start at a node near a random point of the tile.
    let (sx, sy) = (rng.range(0.0, frame.w), rng.range(0.0, frame.h));
    let (dx, dy) = (sx - grid.origin.0, sy - grid.origin.1);
    let mut cur = (
        ((dx * grid.e1.0 + dy * grid.e1.1) / grid.spacing).round() as i32,
        ((dx * grid.e2.0 + dy * grid.e2.1) / grid.spacing).round() as i32,
    );
    let mut dir = (rng.next() % 4) as usize;
    let mut out = Vec::with_capacity(count);
    let mut carry = rng.range(0.0, step);
    let max_segments = count * 4 / ((grid.spacing / step) as usize).max(1) + 40;
    for _ in 0..max_segments {
        if out.len() >= count {
            break;
        }
        let u = rng.unit();
        if u < 0.15 {
            dir = (dir + 1) % 4;
        } else if u < 0.3 {
            dir = (dir + 3) % 4;
        }
        let mut next = (cur.0 + DIRS[dir].0, cur.1 + DIRS[dir].1);
        if next.0.abs() > r || next.1.abs() > r {
            dir = (dir + 2) % 4;
            next = (cur.0 + DIRS[dir].0, cur.1 + DIRS[dir].1);
        }
        let (a, b) = (grid.node(cur.0, cur.1), grid.node(next.0, next.1));
        let bearing = (b.0 - a.0).atan2(b.1 - a.1).to_degrees().rem_euclid(360.0);
        let mut t = carry;
        while t < grid.spacing && out.len() < count {
            let f = t / grid.spacing;
            let (x, y) = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
            if frame.inside(x, y) {
                out.push(StreetPoint { x, y, bearing });
            }
            t += step;
        }
        carry = t - grid.spacing;
        cur = next;
    }
    out
}

/// A walk around a plaza: circles of varying radius around `centre`.
pub(super) fn plaza_walk(centre: (f64, f64), rng: &mut Rng, count: usize) -> Vec<StreetPoint> {
    let radius = rng.range(8.0, 55.0);
    let mut angle = rng.range(0.0, std::f64::consts::TAU);
    let clockwise = rng.unit() < 0.5;
    let step = rng.range(1.5, 3.0) / radius;
    (0..count)
        .map(|_| {
            let r = radius * (1.0 + 0.1 * (angle * 3.0).sin());
            let (x, y) = (centre.0 + r * angle.sin(), centre.1 + r * angle.cos());
            let tangent = angle.to_degrees() + if clockwise { 90.0 } else { -90.0 };
            angle += if clockwise { step } else { -step };
            StreetPoint { x, y, bearing: tangent.rem_euclid(360.0) }
        })
        .collect()
}
