"""Runs every call of the official Mapillary SDK that issue 10 lists against the simulator.

Usage: python conformance.py INPUT.json OUTPUT.json

INPUT names the token, a bbox, a point, an image id and a map feature id (chosen by
tests/sdk_conformance.rs from what the simulator serves). OUTPUT gets, per call, either
{"ok": true, "result": <what the SDK returned, as JSON>} or {"ok": false, "error": "..."}; the Rust
test compares the results with the simulator's own answers. The SDK is used unmodified; only its
hosts are redirected (sitecustomize.py).
"""

import json
import sys
import traceback

import requests

import mapillary.interface as mly


def as_json(value):
    """The SDK returns JSON strings, GeoJSON objects or dicts depending on the call."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def main():
    with open(sys.argv[1]) as f:
        inp = json.load(f)
    out = {"sdk_version": None}
    try:
        from importlib.metadata import version

        out["sdk_version"] = version("mapillary")
    except Exception:  # noqa: BLE001 - informational only
        pass

    def call(name, fn):
        try:
            out[name] = {"ok": True, "result": as_json(fn())}
        except Exception as e:  # noqa: BLE001 - every failure is reported to the Rust test
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}

    mly.set_access_token(inp["token"])
    bbox = inp["bbox"]
    lng, lat = inp["point"]
    call("images_in_bbox", lambda: mly.images_in_bbox(bbox))
    call("sequences_in_bbox", lambda: mly.sequences_in_bbox(bbox))
    call("map_feature_points_in_bbox", lambda: mly.map_feature_points_in_bbox(bbox))
    call("traffic_signs_in_bbox", lambda: mly.traffic_signs_in_bbox(bbox))
    call("get_image_close_to", lambda: mly.get_image_close_to(latitude=lat, longitude=lng))
    call("get_image_looking_at", lambda: mly.get_image_looking_at(at={"lng": lng, "lat": lat}))
    call("image_from_key", lambda: mly.image_from_key(inp["image_id"]))
    call("feature_from_key", lambda: mly.feature_from_key(inp["feature_id"]))
    call("get_detections_with_image_id", lambda: mly.get_detections_with_image_id(inp["image_id"]))
    # The SDK's default `fields=None` crashes (`len(None)`) before any request, against the real
    # API too: pass the SDK's own list of detection fields.
    call(
        "get_detections_with_map_feature_id",
        lambda: mly.get_detections_with_map_feature_id(
            inp["feature_id"], fields=["id", "created_at", "geometry", "image", "value"]
        ),
    )

    def thumbnail():
        url = mly.image_thumbnail(inp["image_id"], 256)
        # The image bytes come from the URL the SDK was given (the simulator's CDN route).
        r = requests.get(url, timeout=60)
        return {
            "url": url,
            "status": r.status_code,
            "content_type": r.headers.get("content-type"),
            "jpeg_hex": r.content.hex(),
        }

    call("image_thumbnail", thumbnail)
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
