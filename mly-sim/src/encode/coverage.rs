//! The coverage tilesets at z14 (`mly1_public`, `mly1_computed_public`): the `sequence` and
//! `image` layers.

use std::collections::HashMap;
use std::sync::Arc;

use geozero::mvt::tile::{GeomType, Layer};

use super::layer::{LayerBuilder, ValueKey, line_parts, lines_geometry, point_geometry};
use super::pixels::{buffer_pixel, home_pixel, image_position};
use crate::world::{SimImage, SimSequence, TileWorld};

/// The properties of an image point, in the (alphabetical) key order of real tiles; the computed
/// tileset also carries `foot` and `quality_score` (§13.6).
fn image_props(img: &SimImage, computed: bool) -> Vec<(&'static str, ValueKey)> {
    let mut props = vec![
        ("captured_at", ValueKey::Int(img.captured_at_ms)),
        ("compass_angle", ValueKey::Double(img.compass_angle.to_bits())),
        ("creator_id", ValueKey::Int(img.creator_id)),
    ];
    if computed {
        props.push(("foot", ValueKey::Bool(img.foot)));
    }
    props.push(("id", ValueKey::Int(img.id)));
    props.push(("is_pano", ValueKey::Bool(img.is_pano)));
    if let Some(org) = img.organization_id {
        props.push(("organization_id", ValueKey::Int(org)));
    }
    if computed && let Some(q) = img.quality_score {
        props.push(("quality_score", ValueKey::Double(q.to_bits())));
    }
    props.push(("sequence_id", ValueKey::Str(img.sequence_id.clone())));
    props
}

pub(super) fn coverage_layers(tw: &TileWorld, neighbours: &[Arc<TileWorld>], computed: bool) -> Vec<Layer> {
    let tile = tw.tile;
    let buffered: Vec<(&SimImage, (i64, i64))> = neighbours
        .iter()
        .flat_map(|n| n.images.iter())
        .filter_map(|img| {
            let (lon, lat) = image_position(img, computed);
            buffer_pixel(tile, lon, lat).map(|p| (img, p))
        })
        .collect();
    if tw.images.is_empty() && buffered.is_empty() {
        return Vec::new();
    }
    let by_id: HashMap<i64, &SimImage> = tw.images.iter().map(|i| (i.id, i)).collect();
    let mut next_id = 0u64;
    let mut seq_layer = LayerBuilder::new("sequence");
    for seq in &tw.sequences {
        // The sequence's in-tile images in capture order: synthetic ids grow along a drive, but real
        // (fixture) ids do not, so the sequence's own order is the one to follow.
        let imgs: Vec<&SimImage> = seq.image_ids.iter().filter_map(|id| by_id.get(id).copied()).collect();
        if imgs.is_empty() {
            continue;
        }
        let pts: Vec<(i64, i64)> = imgs
            .iter()
            .map(|i| {
                let (lon, lat) = image_position(i, computed);
                home_pixel(tile, lon, lat)
            })
            .collect();
        let parts = line_parts(&pts);
        seq_layer.push(
            next_id,
            GeomType::Linestring,
            lines_geometry(&parts),
            SequenceTags::of(seq, imgs[0]).props(computed),
        );
        next_id += 1;
    }
    let mut img_layer = LayerBuilder::new("image");
    for img in &tw.images {
        let (lon, lat) = image_position(img, computed);
        img_layer.push(
            next_id,
            GeomType::Point,
            point_geometry(home_pixel(tile, lon, lat)),
            image_props(img, computed),
        );
        next_id += 1;
    }
    for (img, p) in buffered {
        img_layer.push(next_id, GeomType::Point, point_geometry(p), image_props(img, computed));
        next_id += 1;
    }
    let mut layers = Vec::with_capacity(2);
    if !seq_layer.layer.features.is_empty() {
        layers.push(seq_layer.layer);
    }
    layers.push(img_layer.layer);
    layers
}

/// What a `sequence` line carries, at z14 and (from the z14 summaries) below it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SequenceTags {
    pub(super) id: String,
    /// The sequence's first image (wherever it lies).
    pub(super) image_id: i64,
    pub(super) captured_at_ms: i64,
    pub(super) creator_id: i64,
    pub(super) is_pano: bool,
    pub(super) organization_id: Option<i64>,
    pub(super) foot: bool,
    /// Of the sequence's first image in the z14 tile (the computed tileset reports it).
    pub(super) quality_score: Option<f64>,
}

impl SequenceTags {
    /// The tags of `seq`, whose first image in the z14 tile is `first`.
    pub(super) fn of(seq: &SimSequence, first: &SimImage) -> SequenceTags {
        SequenceTags {
            id: seq.id.clone(),
            image_id: seq.image_ids.first().copied().unwrap_or(0),
            captured_at_ms: seq.captured_at_ms,
            creator_id: seq.creator_id,
            is_pano: seq.is_pano,
            organization_id: seq.organization_id,
            foot: seq.foot,
            quality_score: first.quality_score,
        }
    }

    /// The line's properties in the (alphabetical) key order of real tiles; the computed tileset
    /// adds `foot` and `quality_score` (§13.6).
    pub(super) fn props(&self, computed: bool) -> Vec<(&'static str, ValueKey)> {
        let mut props = vec![
            ("captured_at", ValueKey::Int(self.captured_at_ms)),
            ("creator_id", ValueKey::Int(self.creator_id)),
        ];
        if computed {
            props.push(("foot", ValueKey::Bool(self.foot)));
        }
        props.push(("id", ValueKey::Str(self.id.clone())));
        props.push(("image_id", ValueKey::Int(self.image_id)));
        props.push(("is_pano", ValueKey::Bool(self.is_pano)));
        if let Some(org) = self.organization_id {
            props.push(("organization_id", ValueKey::Int(org)));
        }
        if computed && let Some(q) = self.quality_score {
            props.push(("quality_score", ValueKey::Double(q.to_bits())));
        }
        props
    }
}
