//! `mly-harvest report RUN --out FILE.png|.svg|.html`: one picture of a run — the region, its z14
//! tiles coloured by how they ended, and the harvested image coverage on top. The SVG is written
//! directly; the PNG is that SVG rendered by resvg; the HTML embeds the SVG with a table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mly_contract::tiles::TileId;
use mly_core::store::{Store, query_err};

use super::{OpsError, RunTile, TileOutcome};

/// `report` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// The run id (see `mly-harvest status`).
    pub run: i64,
    /// Output file; the format follows the extension: .png, .svg or .html.
    #[arg(long)]
    pub out: PathBuf,
    /// Width of the map in pixels.
    #[arg(long, default_value_t = 960, value_parser = clap::value_parser!(u32).range(200..=8000))]
    pub width: u32,
}

/// What the picture shows.
#[derive(Debug, Clone)]
pub struct RunPicture {
    pub run_id: i64,
    pub region_name: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Region outline: polygons of rings of (lon, lat).
    pub region: Vec<Vec<Vec<(f64, f64)>>>,
    /// Every tile of the run with its outcome (one per tileset).
    pub tiles: Vec<RunTile>,
    /// Live images per grid cell: (lon, lat) of the cell centre, count.
    pub coverage: Vec<(f64, f64, i64)>,
    /// Size of a coverage cell in degrees (lon, lat).
    pub cell: (f64, f64),
}

const RUN: &str = "
SELECT region_name, status, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
       to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC',
       coalesce(ST_AsGeoJSON(region_geom, 7), '{}')
FROM harvest_run WHERE id = $1";

/// Live images snapped to a grid inside a box: one row per non-empty cell.
const COVERAGE: &str = "
SELECT ST_X(c)::float8, ST_Y(c)::float8, n FROM (
    SELECT ST_SnapToGrid(geom, $5, $6) AS c, count(*) AS n
    FROM images
    WHERE deleted_at IS NULL AND geom && ST_MakeEnvelope($1, $2, $3, $4, 4326)
    GROUP BY 1
) g";

/// Coverage cells across the map's width.
const COVERAGE_CELLS: f64 = 320.0;

/// Reads what the picture of `run` shows.
pub async fn load(store: &Store, run: i64) -> Result<RunPicture, OpsError> {
    let row: Option<(String, String, String, Option<String>, String)> = sqlx::query_as(RUN)
        .bind(run)
        .fetch_optional(store.pool())
        .await
        .map_err(query_err(format!("reading run {run}")))?;
    let Some((region_name, status, started_at, finished_at, geojson)) = row else {
        return Err(OpsError::NoSuchRun(run));
    };
    let region = parse_multipolygon(&geojson);
    let tiles = super::run_tiles(store, run).await?;
    let mut pic = RunPicture {
        run_id: run,
        region_name,
        status,
        started_at,
        finished_at,
        region,
        tiles,
        coverage: Vec::new(),
        cell: (0.0, 0.0),
    };
    if let Some((w, s, e, n)) = pic.extent() {
        let cell = ((e - w) / COVERAGE_CELLS, (n - s) / COVERAGE_CELLS);
        pic.coverage = sqlx::query_as(COVERAGE)
            .bind(w)
            .bind(s)
            .bind(e)
            .bind(n)
            .bind(cell.0)
            .bind(cell.1)
            .fetch_all(store.pool())
            .await
            .map_err(query_err(format!("reading the coverage of run {run}")))?;
        pic.cell = cell;
    }
    Ok(pic)
}

/// The rings of a GeoJSON Polygon or MultiPolygon (read by geozero); anything else gives no outline.
fn parse_multipolygon(text: &str) -> Vec<Vec<Vec<(f64, f64)>>> {
    use geozero::ToGeo;
    let rings = |p: &geo_types::Polygon<f64>| -> Vec<Vec<(f64, f64)>> {
        std::iter::once(p.exterior())
            .chain(p.interiors())
            .map(|r| r.0.iter().map(|c| (c.x, c.y)).collect())
            .collect()
    };
    match geozero::geojson::GeoJson(text).to_geo() {
        Ok(geo_types::Geometry::Polygon(p)) => vec![rings(&p)],
        Ok(geo_types::Geometry::MultiPolygon(mp)) => mp.0.iter().map(rings).collect(),
        _ => Vec::new(),
    }
}

fn tile_bounds(t: &RunTile) -> Option<(f64, f64, f64, f64)> {
    let b = TileId::new(t.z, t.x, t.y).ok()?.bounds();
    Some((b.west, b.south, b.east, b.north))
}

/// Web-mercator y of a latitude (unitless; only ratios matter here).
fn merc_y(lat: f64) -> f64 {
    let lat = lat.clamp(-85.0511, 85.0511).to_radians();
    (std::f64::consts::FRAC_PI_4 + lat / 2.0).tan().ln()
}

/// Fill colour of each outcome (colour-blind safe where it matters: failed vs done).
pub fn colour(o: &TileOutcome) -> &'static str {
    match o {
        TileOutcome::Done => "#1b9e77",
        TileOutcome::Unchanged => "#a6cee3",
        TileOutcome::Empty => "#e0e0e0",
        TileOutcome::Failed => "#d7301f",
        TileOutcome::Blocked => "#6a3d9a",
        TileOutcome::Pending => "#fdb863",
        TileOutcome::Other(_) => "#8c6d31",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl RunPicture {
    /// West, south, east, north of the region and the tiles together.
    pub fn extent(&self) -> Option<(f64, f64, f64, f64)> {
        let pts = self
            .region
            .iter()
            .flatten()
            .flatten()
            .copied()
            .chain(self.tiles.iter().filter_map(tile_bounds).flat_map(|(w, s, e, n)| [(w, s), (e, n)]));
        let mut ext: Option<(f64, f64, f64, f64)> = None;
        for (x, y) in pts {
            ext = Some(match ext {
                None => (x, y, x, y),
                Some((w, s, e, n)) => (w.min(x), s.min(y), e.max(x), n.max(y)),
            });
        }
        ext.filter(|(w, s, e, n)| e > w && n > s)
    }

    /// One square per z14 tile: the most severe outcome over its tilesets.
    pub fn tile_squares(&self) -> BTreeMap<(u8, u32, u32), TileOutcome> {
        let mut out: BTreeMap<(u8, u32, u32), TileOutcome> = BTreeMap::new();
        for t in &self.tiles {
            let e = out.entry((t.z, t.x, t.y)).or_insert_with(|| t.outcome.clone());
            if t.outcome.severity() > e.severity() {
                *e = t.outcome.clone();
            }
        }
        out
    }

    /// Tile counts per tileset and outcome.
    pub fn counts(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for t in &self.tiles {
            *out.entry(t.tileset.clone()).or_default().entry(t.outcome.label().to_string()).or_default() += 1;
        }
        out
    }

    /// The picture as a standalone SVG document `width` pixels wide.
    pub fn svg(&self, width: u32) -> String {
        let w = f64::from(width);
        let pad = 16.0;
        let title_h = 48.0;
        let legend_h = 64.0;
        let (west, south, east, north) = self.extent().unwrap_or((-1.0, -1.0, 1.0, 1.0));
        let (my0, my1) = (merc_y(south), merc_y(north));
        let xspan = (east - west).to_radians();
        let scale = (w - 2.0 * pad) / xspan;
        let map_h = ((my1 - my0) * scale).clamp(120.0, w * 2.0);
        let scale_y = map_h / (my1 - my0);
        let px = |lon: f64| pad + (lon - west).to_radians() * scale;
        let py = |lat: f64| title_h + (my1 - merc_y(lat)) * scale_y;
        let h = title_h + map_h + legend_h + pad;

        let mut s = String::new();
        // Writing to a String cannot fail: the results of write! below are ignored for that reason.
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h:.0}" viewBox="0 0 {w} {h:.0}" font-family="DejaVu Sans, Verdana, sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
"##
        );
        let finished = self.finished_at.as_deref().map(|f| format!(", finished {f}")).unwrap_or_default();
        let _ = writeln!(
            s,
            r##"<text x="{pad}" y="22" font-size="16" font-weight="bold">mly-harvest run {} — {}</text>
<text x="{pad}" y="40" font-size="12" fill="#444">status {}, started {}{}; {} z14 tiles ({} tile jobs), {} images in view</text>"##,
            self.run_id,
            esc(&self.region_name),
            esc(&self.status),
            esc(&self.started_at),
            esc(&finished),
            self.tile_squares().len(),
            self.tiles.len(),
            self.coverage.iter().map(|c| c.2).sum::<i64>()
        );
        s.push_str("<g id=\"tiles\" stroke=\"#ffffff\" stroke-width=\"0.5\">\n");
        for ((z, x, y), outcome) in self.tile_squares() {
            let Ok(t) = TileId::new(z, x, y) else { continue };
            let b = t.bounds();
            let (x0, x1, y0, y1) = (px(b.west), px(b.east), py(b.north), py(b.south));
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.2}" y="{y0:.2}" width="{:.2}" height="{:.2}" fill="{}" fill-opacity="0.75"><title>14/{x}/{y} {}</title></rect>"#,
                x1 - x0,
                y1 - y0,
                colour(&outcome),
                esc(outcome.label())
            );
        }
        s.push_str("</g>\n<g id=\"coverage\" fill=\"#08306b\">\n");
        let max = self.coverage.iter().map(|c| c.2).max().unwrap_or(1).max(1) as f64;
        for (lon, lat, n) in &self.coverage {
            let (x0, x1) = (px(lon - self.cell.0 / 2.0), px(lon + self.cell.0 / 2.0));
            let (y0, y1) = (py(lat + self.cell.1 / 2.0), py(lat - self.cell.1 / 2.0));
            // Log scale: a dense city core and a single drive both stay visible.
            let opacity = 0.35 + 0.65 * ((*n as f64).ln_1p() / max.ln_1p());
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.2}" y="{y0:.2}" width="{:.2}" height="{:.2}" fill-opacity="{opacity:.2}"/>"#,
                (x1 - x0).max(1.0),
                (y1 - y0).max(1.0)
            );
        }
        s.push_str("</g>\n<g id=\"region\" fill=\"none\" stroke=\"#000000\" stroke-width=\"1.5\" stroke-dasharray=\"6 3\">\n");
        for poly in &self.region {
            let mut d = String::new();
            for ring in poly {
                for (i, (lon, lat)) in ring.iter().enumerate() {
                    let _ = write!(d, "{}{:.2},{:.2} ", if i == 0 { "M" } else { "L" }, px(*lon), py(*lat));
                }
                d.push_str("Z ");
            }
            let _ = writeln!(s, r#"<path d="{}"/>"#, d.trim_end());
        }
        s.push_str("</g>\n<g id=\"legend\" font-size=\"12\">\n");
        let ly = title_h + map_h + 14.0;
        let squares = self.tile_squares();
        let mut x = pad;
        for o in TileOutcome::NAMED {
            let n = squares.values().filter(|v| **v == o).count();
            let _ = writeln!(
                s,
                r##"<rect x="{x:.0}" y="{ly:.0}" width="14" height="14" fill="{}" fill-opacity="0.75" stroke="#666" stroke-width="0.5"/><text x="{:.0}" y="{:.0}">{} {n}</text>"##,
                colour(&o),
                x + 19.0,
                ly + 12.0,
                o.label()
            );
            x += 118.0;
        }
        let _ = writeln!(
            s,
            r##"<rect x="{pad}" y="{:.0}" width="14" height="14" fill="#08306b"/><text x="{:.0}" y="{:.0}">images (darker = more)</text>
<line x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#000" stroke-width="1.5" stroke-dasharray="6 3"/><text x="{:.0}" y="{:.0}">region</text>"##,
            ly + 24.0,
            pad + 19.0,
            ly + 36.0,
            pad + 236.0,
            ly + 31.0,
            pad + 266.0,
            ly + 31.0,
            pad + 272.0,
            ly + 36.0
        );
        s.push_str("</g>\n</svg>\n");
        s
    }

    /// An HTML page with the SVG and a table of tile outcomes per tileset.
    pub fn html(&self, width: u32) -> String {
        let mut t = String::from("<table>\n<tr><th>tileset</th>");
        for o in TileOutcome::NAMED {
            let _ = write!(t, "<th>{}</th>", o.label());
        }
        t.push_str("</tr>\n");
        for (ts, by) in self.counts() {
            let _ = write!(t, "<tr><td>{}</td>", esc(&ts));
            for o in TileOutcome::NAMED {
                let _ = write!(t, "<td>{}</td>", by.get(o.label()).copied().unwrap_or(0));
            }
            t.push_str("</tr>\n");
        }
        t.push_str("</table>\n");
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>mly-harvest run {}</title>\n\
             <style>body{{font-family:sans-serif;margin:1em}}td,th{{padding:2px 8px;text-align:right}}td:first-child{{text-align:left}}</style>\n\
             </head><body>\n{}\n<h2>Tiles by tileset and state</h2>\n{}</body></html>\n",
            self.run_id,
            self.svg(width),
            t
        )
    }
}

/// Renders an SVG document to PNG bytes with resvg (system fonts for the text).
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, OpsError> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| OpsError::Render(e.to_string()))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| OpsError::Render(format!("bad picture size {}x{}", size.width(), size.height())))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| OpsError::Render(e.to_string()))
}

/// Output formats by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Png,
    Svg,
    Html,
}

fn format_of(path: &Path) -> Result<Format, OpsError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        Some("html" | "htm") => Ok(Format::Html),
        _ => Err(OpsError::OutputKind(path.to_path_buf())),
    }
}

/// Runs `mly-harvest report`.
pub async fn run(store: &Store, args: &ReportArgs) -> Result<(), OpsError> {
    let format = format_of(&args.out)?;
    let pic = load(store, args.run).await?;
    let bytes = match format {
        Format::Svg => pic.svg(args.width).into_bytes(),
        Format::Html => pic.html(args.width).into_bytes(),
        Format::Png => svg_to_png(&pic.svg(args.width))?,
    };
    std::fs::write(&args.out, bytes).map_err(|source| OpsError::Write { path: args.out.clone(), source })?;
    let squares = pic.tile_squares();
    tracing::info!(run = args.run, out = %args.out.display(), tiles = squares.len(), cells = pic.coverage.len(), "report written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_format_follows_the_extension() {
        assert_eq!(format_of(Path::new("a/b.PNG")).ok(), Some(Format::Png));
        assert_eq!(format_of(Path::new("r.svg")).ok(), Some(Format::Svg));
        assert_eq!(format_of(Path::new("r.html")).ok(), Some(Format::Html));
        assert!(matches!(format_of(Path::new("r.pdf")), Err(OpsError::OutputKind(_))));
    }

    #[test]
    fn worst_outcome_colours_a_tile_and_the_png_renders() {
        let t = |ts: &str, o| RunTile { tileset: ts.into(), z: 14, x: 8785, y: 5134, outcome: o };
        let pic = RunPicture {
            run_id: 1,
            region_name: "x<y".into(),
            status: "partial".into(),
            started_at: "2026-01-01 00:00:00 UTC".into(),
            finished_at: None,
            region: parse_multipolygon(
                r#"{"type":"MultiPolygon","coordinates":[[[[13.035,55.595],[13.06,55.595],[13.06,55.6],[13.035,55.6],[13.035,55.595]]]]}"#,
            ),
            tiles: vec![t("mly1_public", TileOutcome::Done), t("mly_map_feature_point", TileOutcome::Failed)],
            coverage: vec![(13.04, 55.597, 10)],
            cell: (0.0001, 0.0001),
        };
        assert_eq!(pic.tile_squares().values().next(), Some(&TileOutcome::Failed));
        let svg = pic.svg(400);
        assert!(svg.contains("x&lt;y") && svg.contains("#d7301f"));
        let png = svg_to_png(&svg).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
