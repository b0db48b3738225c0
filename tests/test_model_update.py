"""Safe model updates: chunked resumable uploads, verification before activation, atomic activation,
rollback on verification failure, on run-time failure and on corruption found on disk."""

import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_util import bundle, flight_apps

from flight.commands import encode_command
from flight.dictionary import EVENTS, Mode
from flight.model_update import (
    ModelStore,
    ModelUpdateError,
    Uploads,
    pack_bundle,
    parse_ranges,
    ranges,
    unpack_bundle,
    upload_id_of,
)
from flight.ops_report import bundle_campaign
from payload_sim.ops_support import active_model_file


@pytest.fixture(scope="module")
def good_bundle():
    return bundle("1.0.1")


def test_bundle_round_trips():
    from flight.inference import model_path

    parts = unpack_bundle(pack_bundle(model_path("cloud_screen")))
    assert json.loads(parts[1])["name"] == "cloud_screen" and len(parts) == 3


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=500))
def test_random_bundles_raise_model_update_error_only(data):
    for blob in (data, b"MDLPKG1\n" + data):
        try:
            unpack_bundle(blob)
        except ModelUpdateError:
            pass


def test_bundle_campaign_refuses_everything_and_keeps_the_active_version(tmp_path):
    r = bundle_campaign(40, seed=5, root=tmp_path)
    assert r["refused"] + r["accepted_harmless"] == 40 and r["accepted"] == r["accepted_harmless"]
    assert r["active_version_unchanged_and_verifies"]


@pytest.mark.parametrize("ranges_in", [[], [0], [1, 2, 3, 7], [0, 2, 4, 5, 6, 9]])
def test_ranges_round_trip(ranges_in):
    assert parse_ranges(ranges(ranges_in)) == ranges_in


# --- uploads ----------------------------------------------------------------------------------------------


def test_chunks_in_any_order_with_repeats_and_a_restart_in_between(tmp_path, good_bundle):
    sha = hashlib.sha256(good_bundle).digest()
    up = Uploads(tmp_path, 1 << 24)
    m, held = up.begin("cloud_screen", len(good_bundle), 1000, sha)
    assert held == 0 and m.upload_id == upload_id_of(sha)
    order = list(range(m.chunks))
    random.Random(1).shuffle(order)
    half = order[: len(order) // 2]
    for i in half + half[:3]:  # some repeated
        up.chunk(m.upload_id, i, good_bundle[i * 1000 : (i + 1) * 1000])
    up2 = Uploads(tmp_path, 1 << 24)  # the flight restarted
    m2, held2 = up2.begin("cloud_screen", len(good_bundle), 1000, sha)  # begin again: a resume
    assert m2 == m and held2 == len(half)
    assert sorted(up2.missing(m.upload_id)) == sorted(order[len(order) // 2 :])
    with pytest.raises(ModelUpdateError, match="missing"):
        up2.assemble(m.upload_id)
    for i in up2.missing(m.upload_id):
        up2.chunk(m.upload_id, i, good_bundle[i * 1000 : (i + 1) * 1000])
    assert up2.assemble(m.upload_id)[1] == good_bundle


def test_bad_chunks_and_a_wrong_hash_are_refused(tmp_path, good_bundle):
    up = Uploads(tmp_path, 1 << 24)
    sha = hashlib.sha256(b"something else").digest()
    m, _ = up.begin("cloud_screen", len(good_bundle), 1000, sha)
    with pytest.raises(ModelUpdateError, match="outside"):
        up.chunk(m.upload_id, m.chunks, b"x" * 1000)
    with pytest.raises(ModelUpdateError, match="expected 1000"):
        up.chunk(m.upload_id, 0, b"x" * 999)
    for i in range(m.chunks):
        up.chunk(m.upload_id, i, good_bundle[i * 1000 : (i + 1) * 1000])
    with pytest.raises(ModelUpdateError, match="announced"):
        up.assemble(m.upload_id)
    with pytest.raises(ModelUpdateError, match="different upload"):
        up.begin("cloud_screen", len(good_bundle) + 1, 1000, sha)
    with pytest.raises(ModelUpdateError, match="limit"):
        up.begin("cloud_screen", 1 << 25, 1000, hashlib.sha256(b"big").digest())


# --- versions ------------------------------------------------------------------------------------------------


def test_install_activates_atomically_and_rolls_back(tmp_path, good_bundle):
    store = ModelStore(tmp_path / "models")
    factory = store.active["cloud_screen"]
    active, model = store.install_bundle("cloud_screen", good_bundle, "tile_fraction")
    assert active.version == "1.0.1" and active.history == (factory.folder,)
    on_disk = json.loads((tmp_path / "models" / "active.json").read_text())["cloud_screen"]
    assert on_disk["version"] == "1.0.1"
    assert ModelStore(tmp_path / "models").active["cloud_screen"].version == "1.0.1"  # after a restart too
    back, _, skipped = store.rollback("cloud_screen")
    assert back.folder == factory.folder and not skipped


@pytest.mark.parametrize("arena", [False, True])
def test_every_loaded_version_gets_the_configured_memory_arena(tmp_path, good_bundle, arena):
    store = ModelStore(tmp_path / "models", arena=arena)
    models = [store.load("cloud_screen"), store.install_bundle("cloud_screen", good_bundle, "tile_fraction")[1],
              store.rollback("cloud_screen")[1]]  # factory copy, an upload, a rollback
    assert [m.session.get_session_options().enable_cpu_mem_arena for m in models] == [arena] * 3


@pytest.mark.parametrize("make, fragment", [
    (lambda: bundle("1.0.2", golden_int8=np.zeros((2,), np.float32)), "golden vectors differ"),
    (lambda: bundle("1.0.3", onnx=b"\x08\x01" + bytes(100)), "load refused"),
    (lambda: bundle("1.0.4", name="cloud_screen")[:-10], "does not fit"),
])
def test_a_bundle_failing_verification_leaves_the_active_version(tmp_path, make, fragment):
    store = ModelStore(tmp_path / "models")
    before = store.active["cloud_screen"]
    with pytest.raises(ModelUpdateError, match=fragment):
        store.install_bundle("cloud_screen", make(), "tile_fraction")
    assert store.active["cloud_screen"] == before
    assert not list((tmp_path / "models" / "versions" / "cloud_screen").glob("*.staging"))
    store.load("cloud_screen")


def test_a_bundle_of_another_model_or_kind_is_refused(tmp_path, good_bundle):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelUpdateError, match="names model"):
        store.install_bundle("fire_detect", good_bundle, None)
    with pytest.raises(ModelUpdateError, match="kind"):
        store.install_bundle("cloud_screen", good_bundle, "heatmap")


def test_scrub_finds_a_corrupted_file_and_rollback_restores_the_factory_copy(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.scrub("cloud_screen") is None
    path = active_model_file(tmp_path, "cloud_screen")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "sha256" in store.scrub("cloud_screen")
    with pytest.raises(ModelUpdateError):
        store.load("cloud_screen")
    active, model, _ = store.rollback("cloud_screen")
    assert active.factory and store.scrub("cloud_screen") is None and model is not None


def test_a_torn_index_reseeds_from_the_factory(tmp_path):
    ModelStore(tmp_path / "models")
    (tmp_path / "models" / "active.json").write_text('{"cloud_screen": {"fol')
    store = ModelStore(tmp_path / "models")
    assert store.corrupt_index and store.load("cloud_screen") is not None


def _previous_release(tmp_path, version="1.9.0", break_it=False):
    """A copy of the packaged models as a previous release shipped them: cloud_screen's ONNX file
    differs in bytes (its doc string), not in what it computes, under another version and hash."""
    import shutil

    onnx = pytest.importorskip("onnx")
    from flight.inference import model_path

    src, dst = model_path("cloud_screen").parent, tmp_path / "release"
    (dst / "golden").mkdir(parents=True)
    for p in list(src.glob("*.card.json")) + list(src.glob("*.onnx")) + list((src / "golden").glob("*.npz")):
        shutil.copy(p, dst / p.relative_to(src))
    m = onnx.load(str(dst / "cloud_screen.onnx"))
    m.doc_string = f"release {version}"
    onnx.save(m, str(dst / "cloud_screen.onnx"))
    data = (dst / "cloud_screen.onnx").read_bytes()
    card = json.loads((dst / "cloud_screen.card.json").read_text())
    card.update(version=version, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    if break_it:
        card["size_bytes"] += 1
    (dst / "cloud_screen.card.json").write_text(json.dumps(card))
    with np.load(dst / "golden" / "cloud_screen.npz") as g:
        arrays = {k: g[k] for k in g.files}
    arrays["sha256"] = np.array(card["sha256"])
    np.savez_compressed(dst / "golden" / "cloud_screen.npz", **arrays)
    return dst


def test_a_software_update_activates_its_packaged_models_in_place_of_the_previous_release(tmp_path):
    from flight.inference import ModelCard, model_path

    ModelStore(tmp_path / "models", factory_dir=_previous_release(tmp_path))  # the board ran the old release
    store = ModelStore(tmp_path / "models")  # then the new package was installed and the flight started
    now = ModelCard.load(model_path("cloud_screen"))
    a = store.active["cloud_screen"]
    assert (a.version, a.sha256, a.factory) == (now.version, now.sha256, True)
    assert [(n, prev, act.version) for n, prev, act in store.factory_updates] == [("cloud_screen", "1.9.0", now.version)]
    assert store.load("cloud_screen").card.sha256 == now.sha256
    # the previous release's copy is one ROLLBACK_MODEL away, and that choice then survives restarts
    back, _, _ = store.rollback("cloud_screen")
    assert back.version == "1.9.0" and not back.factory
    again = ModelStore(tmp_path / "models")
    assert again.active["cloud_screen"].version == "1.9.0" and again.factory_updates == []


def test_a_software_update_leaves_uploaded_versions_and_refuses_a_bad_packaged_model(tmp_path, good_bundle):
    root = tmp_path / "models"
    release = _previous_release(tmp_path / "a")
    ModelStore(root, factory_dir=release)
    up = ModelStore(root, factory_dir=release)
    up.install_bundle("cloud_screen", good_bundle, "tile_fraction")  # an operator's upload: 1.0.1
    store = ModelStore(root)
    assert store.active["cloud_screen"].version == "1.0.1" and store.factory_updates == []
    # a package whose model does not verify: the previous release's stays active, with the reason
    other = tmp_path / "other"
    ModelStore(other, factory_dir=_previous_release(tmp_path / "b"))
    store = ModelStore(other, factory_dir=_previous_release(tmp_path / "c", version="3.0.0", break_it=True))
    assert store.active["cloud_screen"].version == "1.9.0"
    ((name, prev, why),) = store.factory_updates
    assert (name, prev) == ("cloud_screen", "1.9.0") and "size" in why


# --- through the flight application ------------------------------------------------------------------------


@pytest.fixture
def flight(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128"], 1000.0) as (make, key):
        yield make, key


class Uplink:
    def __init__(self, app, key):
        self.app, self.key, self.counter = app, key, 0

    def __call__(self, name, **args):
        self.counter += 1
        self.app.on_uplink(encode_command(self.key, self.counter, 1000, name, args))

    def upload(self, data, chunk=1000, skip=(), model="cloud_screen"):
        sha = hashlib.sha256(data).digest()
        uid = upload_id_of(sha)
        self("UPLOAD_BEGIN", model=model, size_bytes=len(data), chunk_bytes=chunk, sha256=sha)
        for i in range(-(-len(data) // chunk)):
            if i not in skip:
                self("UPLOAD_CHUNK", upload_id=uid, index=i, data=data[i * chunk : (i + 1) * chunk])
        return uid


def last_report(app):
    from flight.products import decode_tm

    (pkt,) = app.store.db.execute("SELECT packet FROM products WHERE apid = 0x106 ORDER BY id DESC LIMIT 1").fetchone()
    return decode_tm(pkt)[1]


def event_ids(app):
    from flight.products import Event, decode_tm

    return [p.event_id for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
        "SELECT packet FROM products WHERE apid = 0x105 ORDER BY id")) if isinstance(p, Event)]


def test_upload_over_commands_activates_between_frames(flight, good_bundle):
    from test_modes import feed_frame

    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    make, key = flight
    app, sc = make()
    send = Uplink(app, key)
    uid = send.upload(good_bundle, skip={3})
    send("UPLOAD_ACTIVATE", upload_id=uid)
    assert last_report(app).report == 8 and "missing" in last_report(app).message  # FAILED, upload kept
    send("UPLOAD_STATUS", upload_id=uid)
    assert last_report(app).message.endswith("missing=3")
    send("UPLOAD_CHUNK", upload_id=uid, index=3, data=good_bundle[3000:4000])
    # a frame is half way through when the activation comes: it finishes on the old version
    _, raw = render(sc, make_sensor(sc), 0)
    meta = frame_meta(sc, make_orbit(sc, app.clock), 0)
    app.on_frame_message([b"frame", meta.to_json()])
    app.on_frame_message([b"strip", json.dumps({"frame_id": 0, "row0": 0, "rows": 128}).encode(), raw[:, :128].tobytes()])
    old = app.pipeline.models["cloud_screen"].model.card.version
    send("UPLOAD_ACTIVATE", upload_id=uid)
    assert last_report(app).report == 7, last_report(app).message
    assert app.pipeline.models["cloud_screen"].model.card.version == old
    app.on_frame_message([b"strip", json.dumps({"frame_id": 0, "row0": 128, "rows": 128}).encode(), raw[:, 128:].tobytes()])
    assert app.counts["frames_processed"] == 1
    assert app.pipeline.models["cloud_screen"].model.card.version == "1.0.1"
    feed_frame(app, sc, 1)
    assert app.counts["frames_processed"] == 2
    assert EVENTS["MODEL_ACTIVATED"].id in event_ids(app)
    assert not app.uploads.open_ids()  # the upload's chunks are gone once activated


def test_a_new_version_failing_at_run_time_is_rolled_back_and_the_frame_kept(flight, good_bundle):
    from test_modes import feed_frame

    make, key = flight
    app, sc = make(['faults.fail_model="cloud_screen:1.0.1"'])
    send = Uplink(app, key)
    send("UPLOAD_ACTIVATE", upload_id=send.upload(good_bundle))
    assert app.pipeline.models["cloud_screen"].model.card.version == "1.0.1"
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1 and app.counts["frames_rejected"] == 0  # nothing lost
    assert app.model_store.active["cloud_screen"].version != "1.0.1"
    assert app.counts["models_rolled_back"] == 1 and app.modes.mode == Mode.DEGRADED
    assert EVENTS["MODEL_ROLLED_BACK"].id in event_ids(app)


def test_a_bad_upload_fails_with_an_event_and_changes_nothing(flight):
    make, key = flight
    app, sc = make()
    send = Uplink(app, key)
    before = app.model_store.active["cloud_screen"]
    send("UPLOAD_ACTIVATE", upload_id=send.upload(bundle("2.0.0", golden_int8=np.ones((2,), np.float32))))
    assert last_report(app).report == 8 and "golden" in last_report(app).message
    assert app.model_store.active["cloud_screen"] == before and app.modes.mode == Mode.NOMINAL
    assert EVENTS["MODEL_UPDATE_FAILED"].id in event_ids(app)


def test_a_model_corrupted_on_disk_is_rolled_back_at_start_up(flight, tmp_path):
    make, _ = flight
    app, _ = make()
    app.watchdog.close()
    app.store.close()
    path = active_model_file(tmp_path, "cloud_screen")
    path.write_bytes(path.read_bytes()[:-7])
    app, _ = make()
    ids = event_ids(app)
    assert EVENTS["MODEL_CORRUPTED"].id in ids and EVENTS["MODEL_ROLLED_BACK"].id in ids
    assert app.modes.mode == Mode.DEGRADED and "cloud_screen" in app.pipeline.models


def test_the_flight_starts_on_the_new_release_s_models_with_an_event(flight, tmp_path):
    from flight.inference import ModelCard, model_path

    ModelStore(tmp_path / "models", factory_dir=_previous_release(tmp_path / "old"))  # the previous release ran here
    make, _ = flight
    app, _ = make()
    assert EVENTS["MODEL_ACTIVATED"].id in event_ids(app)
    assert app.pipeline.models["cloud_screen"].card.sha256 == ModelCard.load(model_path("cloud_screen")).sha256


def test_the_flight_runs_frames_with_the_memory_arena_on_and_off_alike(tmp_path, monkeypatch):
    """flight.onnx_memory_arena reaches every model session and the pipeline's reused strip
    arrays, and a frame gives the same products either way."""
    import json

    from ops_util import flight_apps

    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    results = {}
    cascade = ('flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water", contrast_band="nir", min_contrast=150.0},'
               ' {model="fire_detect", when="clear_land"}]')
    with flight_apps(tmp_path, monkeypatch, ["scenario.clock_rate=1.0", cascade], 500.0) as (make, _):
        for arena in (False, True):
            app, sc = make([f"flight.onnx_memory_arena={str(arena).lower()}"])
            sessions = [m.model.session.get_session_options().enable_cpu_mem_arena for m in app.pipeline.models.values()]
            assert sessions == [arena] * len(sessions) and len(sessions) == 3
            assert (app.pipeline.scratch is not None) == arena
            got = []
            finish = app.pipeline.finish  # a spy on the results, the real call underneath
            app.pipeline.finish = lambda finish=finish, got=got: got.append(finish()) or got[-1]
            sensor = make_sensor(sc)
            for fid in range(2):
                _, raw = render(sc, sensor, fid)
                meta = frame_meta(sc, make_orbit(sc, app.clock), fid)
                app.on_frame_message([b"frame", meta.to_json()])
                rows = sc.sensor.strip_rows
                for r in range(0, meta.height, rows):
                    hdr = json.dumps({"frame_id": fid, "row0": r, "rows": rows}).encode()
                    app.on_frame_message([b"strip", hdr, raw[:, r : r + rows].tobytes()])
            assert app.counts["frames_processed"] == 2 and app.counts["errors"] == 0
            results[arena] = [(r.tile_cloud.tolist(), [(d.class_id, d.row_px, d.col_px, d.confidence) for d in r.detections])
                              for r in got]
            app.watchdog.close()
            app.store.close()
    assert results[True] == results[False]


def test_a_new_detector_version_gets_no_prescreen_cut_its_card_does_not_validate(tmp_path, monkeypatch):
    """The prescreen cut of the scenario (ship_detect, nir, 150) was validated with the packaged
    version only. An uploaded version runs with at most its own card's cut: none when the card
    validates none or another band, the card's cut when lower, the scenario's when higher. Each
    limit is reported once per version, and frames go on."""
    from test_modes import feed_frame

    from flight.products import Event, decode_tm

    cascade = ('flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water", contrast_band="nir",'
               ' min_contrast=150.0}, {model="fire_detect", when="clear_land"}]')
    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128", cascade], 1000.0) as (make, key):
        app, sc = make()
        ship = app.pipeline.cfg.cascade[1]
        assert app.pipeline.prescreen_cut(ship) == (150.0, "")  # the packaged card validates up to 150
        send = Uplink(app, key)
        nir = {"band": "nir", "basis": "test"}
        for version, prescreen, want in (("2.2.0", None, 0.0), ("2.2.1", dict(nir, max_cut=100), 100.0),
                                         ("2.2.2", {"band": "swir22", "max_cut": 400}, 0.0),
                                         ("2.2.3", dict(nir, max_cut=400), 150.0)):
            data = bundle(version, name="ship_detect", card_changes={"prescreen": prescreen})
            send("UPLOAD_ACTIVATE", upload_id=send.upload(data, model="ship_detect"))
            assert last_report(app).report == 7, last_report(app).message
            assert app.pipeline.models["ship_detect"].card.version == version
            assert app.pipeline.prescreen_cut(ship)[0] == want
            app.report_prescreen()  # nothing new to say: no second event for the same version
        limited = [p.message for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
            "SELECT packet FROM products WHERE apid = 0x105 ORDER BY id"))
            if isinstance(p, Event) and p.event_id == EVENTS["PRESCREEN_LIMITED"].id]
        assert len(limited) == 3, limited
        assert "2.2.0" in limited[0] and "-> 0" in limited[0] and "validates no prescreen" in limited[0]
        assert "2.2.1" in limited[1] and "150 -> 100" in limited[1]
        assert "2.2.2" in limited[2] and "in swir22, not nir" in limited[2]
        feed_frame(app, sc, 0)
        assert app.counts["frames_processed"] == 1 and app.counts["errors"] == 0


def test_a_damaged_upload_folder_neither_fails_housekeeping_nor_holds_a_slot_for_good(flight, good_bundle):
    """An upload whose meta.json or chunk map is damaged on disk (and a stray folder beside them):
    housekeeping still counts the others' chunks, and UPLOAD_ABORT frees the damaged one. Before,
    the chunk count raised in housekeeping and the abort said "no such upload" for good."""
    make, key = flight
    app, _ = make()
    send = Uplink(app, key)
    bad_meta = send.upload(good_bundle, skip={1})
    bad_map = send.upload(bundle("1.0.2"), skip={1})
    good = send.upload(bundle("1.0.3"), skip={1})
    root = app.uploads.root
    (root / f"{bad_meta:08x}" / "meta.json").write_text("{not json")
    (root / f"{bad_map:08x}" / "have.bin").unlink()
    (root / "zzzzzzzz").mkdir()
    app.housekeeping(force=True)
    assert app.counts["software_faults"] == 0 and app.counts["errors"] == 0
    assert app.uploads.open_ids() == sorted([bad_meta, bad_map, good])
    assert app.uploads.received(bad_map) == 0 and app.uploads.received(good) == app.uploads.meta(good).chunks - 1
    for uid in (bad_meta, bad_map):
        send("UPLOAD_ABORT", upload_id=uid)
        assert last_report(app).report == 7, last_report(app).message
    assert app.uploads.open_ids() == [good]
    send("UPLOAD_ABORT", upload_id=0x12345678)  # none such: still refused
    assert last_report(app).report == 8 and "no such upload" in last_report(app).message
