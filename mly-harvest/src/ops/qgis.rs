//! `mly-harvest qgis-project`: stores a styled QGIS project in the database, where QGIS opens it
//! from the PostgreSQL connection (Project > Open From > PostgreSQL). The project is the template
//! `templates/qgis/mly-harvest.qgs` (written by QGIS itself, see `scripts/qgis/make_template.py`)
//! with the connection, schema and view filled in, packed as the .qgz archive QGIS stores in
//! `qgis_projects.content`. No QGIS is needed to create it.

use std::io::Write as _;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;

use crate::config::Config;
use mly_core::store::{Store, query_err};

use super::OpsError;

/// The project template; `{{CONNECTION}}`, `{{SCHEMA}}` and `{{XMIN}}`.. are filled in.
const TEMPLATE: &str = include_str!("../../../templates/qgis/mly-harvest.qgs");

/// `qgis-project` options.
#[derive(Debug, Clone, clap::Args)]
pub struct QgisProjectArgs {
    /// Project name as QGIS lists it.
    #[arg(long, default_value = "mly-harvest")]
    pub name: String,
    /// Connect the project's layers through this pg_service.conf service instead of the
    /// database URL's host, port, database and user (the password is never stored).
    #[arg(long)]
    pub service: Option<String>,
}

const UPSERT_PROJECT: &str = "
INSERT INTO qgis_projects (name, metadata, content) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET metadata = EXCLUDED.metadata, content = EXCLUDED.content";

/// The live images' extent in web mercator, for the project's default view.
const EXTENT: &str = "
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)
FROM (SELECT ST_Transform(ST_SetSRID(ST_Extent(geom), 4326), 3857) AS e
      FROM images WHERE deleted_at IS NULL) x
WHERE e IS NOT NULL";

/// The layers' connection, in QGIS's data source syntax: a service, or host/port/dbname/user
/// from the database URL without its password.
pub fn connection(url: &str, service: Option<&str>) -> Result<String, OpsError> {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    if let Some(s) = service {
        return Ok(format!("service={}", quote(s)));
    }
    // sqlx's parse error does not echo the URL; neither do we (it may hold a password).
    let o = PgConnectOptions::from_str(url).map_err(|_| OpsError::Input {
        what: "database URL",
        problem: "expected postgres://user[:password]@host[:port]/db".into(),
    })?;
    let mut s = String::new();
    if let Some(db) = o.get_database() {
        s.push_str(&format!("dbname={} ", quote(db)));
    }
    s.push_str(&format!(
        "host={} port={} user={}",
        quote(o.get_host()),
        o.get_port(),
        quote(o.get_username())
    ));
    Ok(s)
}

/// The URI QGIS opens the stored project with.
pub fn project_uri(url: &str, service: Option<&str>, schema: &str, name: &str) -> String {
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    match service {
        Some(s) => format!("postgresql:///?service={}&schema={}&project={}", enc(s), enc(schema), enc(name)),
        None => match PgConnectOptions::from_str(url) {
            Ok(o) => format!(
                "postgresql://{}@{}:{}?dbname={}&schema={}&project={}",
                enc(o.get_username()),
                o.get_host(),
                o.get_port(),
                enc(o.get_database().unwrap_or("")),
                enc(schema),
                enc(name)
            ),
            Err(_) => String::new(),
        },
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The project XML for this connection, schema and default view (EPSG:3857 metres).
pub fn project_xml(connection: &str, schema: &str, extent: (f64, f64, f64, f64)) -> String {
    TEMPLATE
        .replace("{{CONNECTION}}", &xml_escape(connection))
        .replace("{{SCHEMA}}", &xml_escape(schema))
        .replace("{{XMIN}}", &extent.0.to_string())
        .replace("{{YMIN}}", &extent.1.to_string())
        .replace("{{XMAX}}", &extent.2.to_string())
        .replace("{{YMAX}}", &extent.3.to_string())
}

/// A zip archive holding one deflated file, as QGIS reads a .qgz.
pub fn zip_one(name: &str, data: &[u8]) -> Vec<u8> {
    let mut deflated = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = deflated.write_all(data);
    let body = deflated.finish().unwrap_or_default();
    let mut crc = flate2::Crc::new();
    crc.update(data);
    let crc = crc.sum();
    // Sizes fit u32: the template is ~150 kB (zip64 is not needed).
    let (csize, usize_) = (body.len() as u32, data.len() as u32);
    let name_len = name.len() as u16;
    // DOS time 00:00, date 2024-01-01: the archive's file time carries no meaning here.
    let (time, date) = (0u16, ((2024 - 1980) << 9 | 1 << 5 | 1) as u16);
    let mut out = Vec::with_capacity(body.len() + 2 * name.len() + 100);
    let entry = |out: &mut Vec<u8>, central: bool| {
        if central {
            out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            out.extend_from_slice(&20u16.to_le_bytes()); // version made by
        } else {
            out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        }
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&8u16.to_le_bytes()); // deflate
        out.extend_from_slice(&time.to_le_bytes());
        out.extend_from_slice(&date.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&csize.to_le_bytes());
        out.extend_from_slice(&usize_.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        if central {
            out.extend_from_slice(&[0u8; 10]); // comment length, disk, internal + external attributes
            out.extend_from_slice(&0u32.to_le_bytes()); // offset of the local header
        }
        out.extend_from_slice(name.as_bytes());
    };
    entry(&mut out, false);
    out.extend_from_slice(&body);
    let cd_start = out.len() as u32;
    entry(&mut out, true);
    let cd_size = out.len() as u32 - cd_start;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // this disk, disk with the central directory
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Runs `mly-harvest qgis-project`: writes the project into `qgis_projects` of the schema.
pub async fn run(store: &Store, cfg: &Config, args: &QgisProjectArgs) -> Result<(), OpsError> {
    if args.name.trim().is_empty() {
        return Err(OpsError::Input { what: "project name", problem: "is empty".into() });
    }
    let url = cfg.database.url.expose();
    let conn = connection(url, args.service.as_deref())?;
    let extent: Option<(f64, f64, f64, f64)> = sqlx::query_as(EXTENT)
        .fetch_optional(store.pool())
        .await
        .map_err(query_err("reading the extent of the images"))?;
    // No images yet: open on Malmö, the demo region, rather than on the whole world.
    let extent = extent.unwrap_or((1_443_000.0, 7_470_000.0, 1_452_000.0, 7_476_000.0));
    let xml = project_xml(&conn, store.schema(), extent);
    let qgz = zip_one(&format!("{}.qgs", args.name), xml.as_bytes());
    let metadata = serde_json::json!({
        "last_modified_time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
        "last_modified_user": "mly-harvest",
    });
    sqlx::query(UPSERT_PROJECT)
        .bind(&args.name)
        .bind(metadata)
        .bind(qgz)
        .execute(store.pool())
        .await
        .map_err(query_err(format!("storing QGIS project {:?}", args.name)))?;
    crate::cli::write_stdout(&format!(
        "QGIS project {:?} stored in {}.qgis_projects; open it in QGIS (Project > Open From > PostgreSQL) or as {}\n",
        args.name,
        store.schema(),
        project_uri(url, args.service.as_deref(), store.schema(), &args.name)
    ))
    .map_err(|source| OpsError::Write { path: "standard output".into(), source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_never_holds_the_password() {
        let c = connection("postgres://ann:s3cret@db.example:6543/gis", None).unwrap();
        assert_eq!(c, "dbname='gis' host='db.example' port=6543 user='ann'");
        assert_eq!(connection("", Some("mly")).unwrap(), "service='mly'");
        let u = project_uri("postgres://ann:s3cret@db.example:6543/gis", None, "mapillary", "mly-harvest");
        assert_eq!(u, "postgresql://ann@db.example:6543?dbname=gis&schema=mapillary&project=mly-harvest");
        assert!(!u.contains("s3cret"));
    }

    #[test]
    fn template_is_filled_completely_and_zipped() {
        let xml = project_xml("dbname='x' host='h' port=5432 user='u'", "my_schema", (1.0, 2.0, 3.0, 4.0));
        assert!(!xml.contains("{{"), "every placeholder is filled");
        assert!(xml.contains("&quot;my_schema&quot;") || xml.contains("\"my_schema\""));
        let z = zip_one("p.qgs", xml.as_bytes());
        assert_eq!(&z[..4], b"PK\x03\x04");
        assert!(z.len() < xml.len() / 3, "deflated");
        // The end record points at a central directory that ends right before it.
        let eocd = z.len() - 22;
        assert_eq!(&z[eocd..eocd + 4], b"PK\x05\x06");
        let cd_size = u32::from_le_bytes(z[eocd + 12..eocd + 16].try_into().unwrap()) as usize;
        let cd_start = u32::from_le_bytes(z[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
        assert_eq!(cd_start + cd_size, eocd);
        assert_eq!(&z[cd_start..cd_start + 4], b"PK\x01\x02");
        assert_eq!(cd_size, 46 + "p.qgs".len());
    }
}
