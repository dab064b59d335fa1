#!/usr/bin/python3
"""Opens every table and view of a harvest schema through QGIS's own PostGIS provider and checks
what a QGIS user relies on; optionally opens the stored QGIS project and renders it to PNG.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/qgis/check_layers.py \
        --conn "dbname='mly_demo' host=localhost port=54329 user='postgres'" --schema mapillary \
        [--sql-dir sql] [--project mly-harvest --png out.png]

Per layer: valid; geometry type and CRS equal the column's declared typmod (a column without a
typmod fails); the key QGIS picks is the table's primary key (a table without one fails; for a
view, the key of its single base table, else its shortest unique run of leading columns); feature
count equals count(*); a bbox filter returns the same features as PostGIS's `&&`. Every
`--sql-dir` query is installed as a view `sqlcheck_<file>` for the run and checked the same way.
Exit status 0 when everything holds, 1 otherwise (one line per failure on stdout).
"""
import argparse
import glob
import os
import re
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import (  # noqa: E402
    QgsApplication, QgsDataSourceUri, QgsFeatureRequest, QgsMapRendererSequentialJob,
    QgsMapSettings, QgsProject, QgsProviderRegistry, QgsRectangle, QgsVectorLayer, QgsWkbTypes,
    QgsCoordinateTransform,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

TYPES = {
    "POINT": QgsWkbTypes.Point, "LINESTRING": QgsWkbTypes.LineString, "POLYGON": QgsWkbTypes.Polygon,
    "MULTIPOINT": QgsWkbTypes.MultiPoint, "MULTILINESTRING": QgsWkbTypes.MultiLineString,
    "MULTIPOLYGON": QgsWkbTypes.MultiPolygon,
}

failures = []


def fail(what, msg):
    failures.append(f"FAIL {what}: {msg}")
    print(f"FAIL {what}: {msg}", flush=True)


def ident(s):
    return '"' + s.replace('"', '""') + '"'


def lit(s):
    return "'" + s.replace("'", "''") + "'"


class Db:
    def __init__(self, conn):
        md = QgsProviderRegistry.instance().providerMetadata("postgres")
        self.c = md.createConnection(QgsDataSourceUri(conn).uri(False), {})

    def rows(self, sql):
        return self.c.executeSql(sql)

    def one(self, sql):
        r = self.rows(sql)
        return r[0][0] if r else None


def expected_key(db, schema, name, kind):
    """The key a layer must use, and a reason when there cannot be one."""
    rel = f"{ident(schema)}.{ident(name)}"
    pk = db.rows(f"""SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = {lit(rel)}::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)""")
    if kind == "r":
        return [r[0] for r in pk], None if pk else "the table has no primary key"
    # A view: the primary key of its only base table when the view shows all its columns.
    bases = db.rows(f"""SELECT DISTINCT c.oid::regclass::text FROM pg_depend d
        JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class c ON c.oid = d.refobjid
        WHERE w.ev_class = {lit(rel)}::regclass AND c.oid <> w.ev_class AND c.relkind = 'r'""")
    cols = [r[0] for r in db.rows(f"""SELECT attname FROM pg_attribute WHERE attrelid = {lit(rel)}::regclass
        AND attnum > 0 AND NOT attisdropped ORDER BY attnum""")]
    if len(bases) == 1:
        bpk = [r[0] for r in db.rows(f"""SELECT a.attname FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = {lit(bases[0][0])}::regclass AND i.indisprimary""")]
        if len(bpk) == 1 and bpk[0] in cols:
            return bpk, None
    # Otherwise the shortest run of leading columns that is unique (what a user picks as key).
    for n in range(1, min(len(cols), 6) + 1):
        if check_unique(db, schema, name, cols[:n]):
            return cols[:n], None
    return cols[:1], None


def check_unique(db, schema, name, key):
    rel = f"{ident(schema)}.{ident(name)}"
    k = ", ".join(ident(c) for c in key)
    dup = db.one(f"SELECT count(*) FROM (SELECT {k} FROM {rel} GROUP BY {k} HAVING count(*) > 1) d")
    nulls = db.one(f"SELECT count(*) FROM {rel} WHERE " + " OR ".join(f"{ident(c)} IS NULL" for c in key))
    return int(dup) == 0 and int(nulls) == 0


def check_layer(db, conn, schema, t, geom):
    name = t.tableName()
    what = f"{schema}.{name}" + (f"({geom})" if geom else "")
    rel = f"{ident(schema)}.{ident(name)}"
    kind = db.one(f"SELECT relkind FROM pg_class WHERE oid = {lit(rel)}::regclass")
    key, why = expected_key(db, schema, name, kind)
    if why:
        fail(what, why)
        return
    uri = QgsDataSourceUri(db.c.tableUri(schema, name))
    declared = None
    if geom:
        row = db.rows(f"""SELECT type, srid, coord_dimension FROM geometry_columns
            WHERE f_table_schema = {lit(schema)} AND f_table_name = {lit(name)} AND f_geometry_column = {lit(geom)}""")
        declared = (row[0][0].upper(), int(row[0][1]), int(row[0][2])) if row else None
        uri.setGeometryColumn(geom)
        types = t.geometryColumnTypes()
        # What the browser does when QGIS knows a single type for the column.
        if len(types) == 1:
            uri.setWkbType(types[0].wkbType)
            uri.setSrid(str(types[0].crs.postgisSrid()))
    if kind != "r":
        # A view has no key of its own: QGIS takes the one the user chooses, here the expected one
        # (its uniqueness is checked below; QGIS would silently mix up features otherwise).
        uri.setKeyColumn(",".join(ident(c) for c in key))
    layer = QgsVectorLayer(uri.uri(False), what, "postgres")
    if not layer.isValid():
        lost = declared is not None and declared[0] not in TYPES
        fail(what, "QGIS says the layer is not valid" + (f" (declared geometry type {declared[0]}: the column lost its typmod)" if lost else ""))
        return
    if geom:
        if declared is None:
            fail(what, "not in geometry_columns")
            return
        dtype, dsrid, ddim = declared
        if dtype not in TYPES:
            fail(what, f"the column has no specific geometry type (declared {dtype}): it lost its typmod, QGIS has to guess")
            return
        want = TYPES[dtype]
        if ddim == 3:
            want = QgsWkbTypes.addZ(want)
        if layer.wkbType() != want:
            fail(what, f"QGIS sees {QgsWkbTypes.displayString(layer.wkbType())}, declared {dtype}")
        got_srid = layer.crs().postgisSrid() if layer.crs().isValid() else 0
        if got_srid != dsrid:
            fail(what, f"QGIS CRS has SRID {got_srid}, declared {dsrid}")
    fields = layer.fields()
    got_key = [fields.at(i).name() for i in layer.primaryKeyAttributes()]
    if got_key != key:
        fail(what, f"QGIS picks key {got_key}, the table's key is {key}")
    if kind != "r" and key and not check_unique(db, schema, name, key):
        fail(what, f"view key {key} is not unique")
    n = int(db.one(f"SELECT count(*) FROM {rel}"))
    if layer.featureCount() != n:
        fail(what, f"QGIS counts {layer.featureCount()} features, count(*) = {n}")
    req = QgsFeatureRequest().setFlags(QgsFeatureRequest.NoGeometry).setNoAttributes()
    it = sum(1 for _ in layer.getFeatures(req))
    if it != n:
        fail(what, f"QGIS iterates {it} features, count(*) = {n}")
    in_box = ""
    if geom and n > 0 and got_key == key:
        e = layer.extent()
        # A box around the median feature, 30% of the data's size: it cuts through the data (some
        # features in, some out) and is never empty, however sparse the layer.
        kk = ", ".join(ident(c) for c in key)
        cx, cy = db.rows(f"""SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface({ident(geom)}) AS p FROM {rel}
            WHERE {ident(geom)} IS NOT NULL AND NOT ST_IsEmpty({ident(geom)}) ORDER BY {kk} OFFSET {n // 2} LIMIT 1) x""")[0] \
            if int(db.one(f"SELECT count({ident(geom)}) FROM {rel}")) > n // 2 else (e.center().x(), e.center().y())
        w, h = max(e.width(), 1e-6) * 0.15, max(e.height(), 1e-6) * 0.15
        r = QgsRectangle(float(cx) - w, float(cy) - h, float(cx) + w, float(cy) + h)
        req = QgsFeatureRequest().setFilterRect(r).setSubsetOfAttributes(key, fields)
        q_ids = sorted(tuple(str(f[k]) for k in key) for f in layer.getFeatures(req))
        k = ", ".join(f"{ident(c)}::text" for c in key)
        env = f"ST_MakeEnvelope({r.xMinimum()!r}, {r.yMinimum()!r}, {r.xMaximum()!r}, {r.yMaximum()!r}, {declared[1]})"
        p_ids = sorted(tuple(row) for row in db.rows(f"SELECT {k} FROM {rel} WHERE {ident(geom)} && {env}"))
        p_ids = [tuple(str(v) for v in row) for row in p_ids]
        p_ids.sort()
        if q_ids != p_ids:
            fail(what, f"bbox filter: QGIS returns {len(q_ids)} features, PostGIS && returns {len(p_ids)}")
        elif not q_ids:
            fail(what, "bbox filter returned nothing: the check would prove nothing")
        in_box = f", bbox {len(q_ids)} = PostGIS"
    print(f"ok   {what}: {n} features, key {got_key}" + (f", {QgsWkbTypes.displayString(layer.wkbType())} SRID {declared[1]}" if geom else "") + in_box, flush=True)


def install_sql_views(db, schema, sql_dir):
    names = []
    for path in sorted(glob.glob(os.path.join(sql_dir, "*.sql"))):
        text = open(path, encoding="utf-8").read()
        body = "\n".join(l for l in text.splitlines() if not l.strip().startswith("--")).strip().rstrip(";")
        if not re.match(r"(?is)^\s*(select|with)\b", body):
            continue
        body = body.replace("mapillary.", f"{ident(schema)}.")
        name = "sqlcheck_" + os.path.splitext(os.path.basename(path))[0]
        db.rows(f"DROP VIEW IF EXISTS {ident(schema)}.{ident(name)}")
        try:
            # Unqualified names in a query resolve in the harvest schema, as for the harvester.
            db.rows(f"SET search_path TO {ident(schema)}, public; CREATE VIEW {ident(schema)}.{ident(name)} AS {body}")
        except Exception as e:  # noqa: BLE001 (QgsException carries the server's message)
            fail(f"sql/{os.path.basename(path)}", f"does not run as a view: {e}")
            continue
        names.append(name)
    return names


def render_project(conn, schema, project, png):
    p = QgsProject.instance()
    uri = QgsDataSourceUri(conn)
    parts = [f"service={uri.service()}"] if uri.service() else [
        f"host={uri.host()}", f"port={uri.port()}", f"dbname={uri.database()}", f"user={uri.username()}"]
    host = "" if uri.service() else f"{uri.username()}@{uri.host()}:{uri.port()}"
    puri = (f"postgresql:///?service={uri.service()}" if uri.service() else
            f"postgresql://{host}?dbname={uri.database()}") + f"&schema={schema}&project={project}"
    if not p.read(puri):
        fail("project", f"QGIS cannot open {puri}: {p.error()}")
        return
    layers = [l for l in p.layerTreeRoot().layerOrder()]
    bad = [l.name() for l in layers if not l.isValid()]
    if not layers or bad:
        fail("project", f"{len(layers)} layers, invalid: {bad}")
        return
    s = QgsMapSettings()
    s.setLayers(layers)
    s.setDestinationCrs(p.crs())
    s.setBackgroundColor(QColor(255, 255, 255))
    s.setOutputSize(QSize(800, 600))
    ext = p.viewSettings().defaultViewExtent()
    if ext.isEmpty():
        fail("project", "no default view extent")
        return
    s.setExtent(ext)
    job = QgsMapRendererSequentialJob(s)
    job.start()
    job.waitForFinished()
    img = job.renderedImage()
    img.save(png, "PNG")
    white = QColor(255, 255, 255).rgb()
    painted = sum(1 for y in range(0, img.height(), 2) for x in range(0, img.width(), 2) if img.pixel(x, y) != white)
    total = (img.height() // 2) * (img.width() // 2)
    # The images layer alone must paint too: that is the coverage, not just the tile squares.
    s.setLayers([l for l in layers if l.name().startswith("Images")])
    job = QgsMapRendererSequentialJob(s)
    job.start()
    job.waitForFinished()
    img2 = job.renderedImage()
    cov = sum(1 for y in range(0, img2.height(), 2) for x in range(0, img2.width(), 2) if img2.pixel(x, y) != white)
    print(f"project {project}: {len(layers)} layers, rendered {png}: {painted}/{total} sampled pixels painted, "
          f"images layer alone {cov}", flush=True)
    if painted < total * 0.01 or cov < total * 0.002:
        fail("project", f"the rendering is nearly empty ({painted} painted, {cov} from images, of {total})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conn", required=True)
    ap.add_argument("--schema", default="mapillary")
    ap.add_argument("--sql-dir")
    ap.add_argument("--project")
    ap.add_argument("--png")
    a = ap.parse_args()
    app = QgsApplication([], False)
    app.initQgis()
    db = Db(a.conn)
    views = install_sql_views(db, a.schema, a.sql_dir) if a.sql_dir else []
    try:
        tables = db.c.tables(a.schema)
        if not tables:
            fail(a.schema, "QGIS lists no table in the schema")
        for t in tables:
            check_layer(db, a.conn, a.schema, t, t.geometryColumn() or None)
    finally:
        for v in views:
            db.rows(f"DROP VIEW IF EXISTS {ident(a.schema)}.{ident(v)}")
    if a.project:
        render_project(a.conn, a.schema, a.project, a.png or "/dev/null")
    print(f"{len(failures)} failure(s)")
    app.exitQgis()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
