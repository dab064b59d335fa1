#!/usr/bin/python3
"""Regenerates templates/qgis/mly-harvest.qgs, the project `mly-harvest qgis-project` stores.

QGIS writes the styles here, so the template is a project QGIS itself produced. Run against any
harvested database (schema "mapillary"); connection and schema are then replaced by placeholders:
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/qgis/make_template.py \
        "dbname='mly_demo' host=localhost port=54329 user='postgres'" templates/qgis/mly-harvest.qgs
"""
import os
import re
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import (  # noqa: E402
    QgsApplication, QgsCategorizedSymbolRenderer, QgsCoordinateReferenceSystem, QgsFillSymbol,
    QgsGraduatedSymbolRenderer, QgsLineSymbol, QgsMarkerSymbol, QgsProject, QgsRendererCategory,
    QgsRectangle, QgsReferencedRectangle, QgsRendererRange, QgsRuleBasedRenderer, QgsVectorLayer,
)

CONN, OUT = sys.argv[1], sys.argv[2]
SCHEMA = "mapillary"

app = QgsApplication([], False)
app.initQgis()
project = QgsProject.instance()
project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
project.setTitle("mly-harvest")


def layer(name, table, geom, key, subset=""):
    uri = f"{CONN} key='{key}' srid=4326 type={ 'Polygon' if table == 'coverage_freshness' else ('MultiLineString' if table == 'sequences' else 'Point') } checkPrimaryKeyUnicity='0' table=\"{SCHEMA}\".\"{table}\" ({geom})"
    if subset:
        uri += f" sql={subset}"
    lyr = QgsVectorLayer(uri, name, "postgres")
    assert lyr.isValid(), (name, uri)
    return lyr


# Coverage freshness per tile: graduated by days since the newest capture.
fresh = layer("Coverage freshness (z14 tiles)", "coverage_freshness", "geom", "id")
ranges = []
for lo, hi, colour, label in [
    (0, 90, "#1a9850", "newest capture < 3 months"),
    (90, 365, "#91cf60", "3-12 months"),
    (365, 1095, "#fee08b", "1-3 years"),
    (1095, 100000, "#d73027", "older than 3 years"),
]:
    sym = QgsFillSymbol.createSimple({"color": colour, "outline_color": "#555555", "outline_width": "0.2"})
    sym.setOpacity(0.45)
    ranges.append(QgsRendererRange(lo, hi, sym, label))
fresh.setRenderer(QgsGraduatedSymbolRenderer("capture_age_days", ranges))

# Sequences.
seqs = layer("Sequences", "sequences", "geom", "id")
seqs.setRenderer(seqs.renderer().__class__(QgsLineSymbol.createSimple({"color": "#2b8cbe", "width": "0.35"})))

# Images by capture age; deleted images hidden.
age = "day(age(now(), \"captured_at\"))"
root = QgsRuleBasedRenderer.Rule(None)
for expr, colour, label in [
    ("\"captured_at\" IS NULL OR \"captured_at\" < to_datetime('1970-01-02T00:00:00')", "#969696", "capture time unknown"),
    (f"{age} < 365", "#1a9850", "captured < 1 year ago"),
    (f"{age} >= 365 AND {age} < 1095", "#fdae61", "1-3 years"),
    (f"{age} >= 1095", "#d73027", "older than 3 years"),
]:
    sym = QgsMarkerSymbol.createSimple({"name": "circle", "color": colour, "size": "1.2", "outline_style": "no"})
    root.appendChild(QgsRuleBasedRenderer.Rule(sym, 0, 0, expr, label))
imgs = layer("Images by capture age", "images", "geom", "id", '"deleted_at" IS NULL')
imgs.setRenderer(QgsRuleBasedRenderer(root))


def by_class(name, object_type, classes, shape):
    lyr = layer(name, "map_features", "geom", "id", f"\"deleted_at\" IS NULL AND \"object_type\" = '{object_type}'")
    cats = []
    for value, colour in classes:
        sym = QgsMarkerSymbol.createSimple({"name": shape, "color": colour, "size": "2.2", "outline_color": "#333333"})
        cats.append(QgsRendererCategory(value, sym, value))
    sym = QgsMarkerSymbol.createSimple({"name": shape, "color": "#bdbdbd", "size": "2", "outline_color": "#333333"})
    cats.append(QgsRendererCategory(None, sym, "other"))
    lyr.setRenderer(QgsCategorizedSymbolRenderer("regexp_substr(\"object_value\", '^[a-z-]+?(?=--|$)')", cats))
    return lyr


feats = by_class("Map features by class", "point", [
    ("object", "#7570b3"), ("construction", "#e7298a"), ("marking", "#66a61e"), ("nature", "#1b9e77"),
    ("void", "#666666"),
], "square")
signs = by_class("Traffic signs by class", "traffic_sign", [
    ("regulatory", "#e41a1c"), ("warning", "#ff7f00"), ("information", "#377eb8"), ("complementary", "#984ea3"),
], "triangle")

for lyr in [fresh, seqs, imgs, feats, signs]:
    project.addMapLayer(lyr)
# A recognisable default view the harvester replaces with the data's extent (EPSG:3857).
project.viewSettings().setDefaultViewExtent(
    QgsReferencedRectangle(QgsRectangle(1111.0, 2222.0, 3333.0, 4444.0), project.crs()))
assert project.write(OUT + ".tmp.qgs")
text = open(OUT + ".tmp.qgs", encoding="utf-8").read()
os.remove(OUT + ".tmp.qgs")
# The connection and schema become placeholders the harvester fills in.
text = text.replace(CONN.replace("'", "&apos;"), "{{CONNECTION}}").replace(CONN, "{{CONNECTION}}")
text = text.replace(f'"{SCHEMA}".', '"{{SCHEMA}}".').replace(f"&quot;{SCHEMA}&quot;.", "&quot;{{SCHEMA}}&quot;.")
# Cached layer extents describe the database the template was made from: QGIS recomputes them.
text = re.sub(r"\s*<extent>.*?</extent>", "", text, flags=re.S)
text = re.sub(r"\s*<wgs84extent>.*?</wgs84extent>", "", text, flags=re.S)
for n, name in [("1111", "XMIN"), ("2222", "YMIN"), ("3333", "XMAX"), ("4444", "YMAX")]:
    text = re.sub(rf'"{n}(\.0+)?"', '"{{' + name + '}}"', text)
open(OUT, "w", encoding="utf-8").write(text)
print(f"{OUT}: {len(text)} bytes, connection placeholders: {text.count('{{CONNECTION}}')}")
app.exitQgis()
