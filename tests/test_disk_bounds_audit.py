"""What the flight keeps on mass memory stays bounded over a long mission and under repeated faults
(docs/operations.md, "Mass memory: what the flight keeps on disk"). Real files in tmp_path, the
real classes; each test repeats a fault or an operation many times and asserts the bound."""

from __future__ import annotations

import builtins
import errno
import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from ops_util import bundle

import flight.model_update as mu
from flight.app import OpsState
from flight.frames import FrameMeta
from flight.model_update import ModelStore, Uploads
from flight.quicklook import RecentFrames
from flight.store import ProductStore

MiB = 1024 * 1024


def put(store, size=500):
    return store.put(1, 0x101, 0.0, lambda pid, seq: bytes([pid % 251]) * size)[0]


def quarantined(folder: Path, name: str = "s.db") -> set[str]:
    """The quarantined copies (one per corrupt store: the db and its -wal/-shm)."""
    return {p.name.removesuffix("-wal").removesuffix("-shm") for p in folder.glob(f"{name}.corrupt-*")}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- the product store's quarantined copies ---------------------------------------------------------------


def test_a_store_corrupt_at_every_restart_keeps_only_the_newest_quarantined_copies(tmp_path):
    """A store found corrupt at each of 12 restarts: each quarantine kept a copy of up to the
    store's size for good (12 copies of 100 KB here; on a long mission with a failing memory, the
    mass memory filled with them). Now the newest 3, the one just made always among them."""
    path, lines = tmp_path / "s.db", []
    for i in range(12):
        s = ProductStore(path, MiB, log=lines.append)
        for _ in range(50):
            put(s, 2000)
        moved = [kw["moved"] for name, kw in s.take_events() if name == "STORE_QUARANTINED"]
        assert (moved != []) == (i > 0)
        s.close()
        copies = quarantined(tmp_path)
        assert len(copies) <= 3, sorted(copies)
        assert not moved or moved[0] in copies  # the copy just made is kept
        path.write_bytes(random.Random(i).randbytes(100_000))  # corrupt for the next start
    assert len(quarantined(tmp_path)) == 3
    assert any("older quarantined cop" in m and "newest 3 are kept" in m for m in lines)
    assert disk_bytes(tmp_path) < 5 * 130_000  # the live store, its epoch file and 3 copies


def test_a_store_corrupted_again_at_every_reopen_mid_run_keeps_bounded_copies(tmp_path):
    """The store damaged under the running flight again and again: each reopen (every retry_s)
    quarantined it once more (products moved into a store quarantined later went with it, as
    before: the copy is for analysis, nothing reads it back)."""
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    held = []
    for i in range(8):
        s.db.execute("DROP TABLE disk.counters")  # damaged under the running flight
        held.append(put(s))  # the write fails: held in RAM
        assert s.maintain(10.0 * (i + 1)) is True  # the next retry: reopened, quarantined, a fresh store
        assert len(quarantined(tmp_path)) <= 3
    assert len(quarantined(tmp_path)) == 3
    assert held[-1] in {r[0] for r in s.db.execute("SELECT id FROM products")} and s.state == 0
    s.close()


# -- model versions, staging folders and uploads ------------------------------------------------------------


def version_folders(root: Path, name: str = "cloud_screen") -> list[str]:
    return sorted(p.name for p in (root / "versions" / name).iterdir())


def test_many_uploads_and_rollbacks_keep_a_bounded_set_of_version_folders(tmp_path):
    """Every activated upload left its version folder for good, and every rolled-back one too:
    a thousand updates over a mission were a thousand model folders. Now: the active version, its
    history (4) and the 2 newest others; each kept one still loads, after a restart too."""
    root, lines = tmp_path / "models", []
    store = ModelStore(root)
    store.log = lines.append
    factory = store.active["cloud_screen"].folder
    for i in range(1, 13):
        store.install_bundle("cloud_screen", bundle(f"1.0.{i}", tiles=1), "tile_fraction")
        if i % 3 == 0:
            store.rollback("cloud_screen")  # the new version failed on probation
        a = store.active["cloud_screen"]
        assert len(version_folders(root)) <= 1 + 4 + 2, version_folders(root)
        assert all((root / f).is_dir() for f in (a.folder, *a.history))
    a = store.active["cloud_screen"]
    assert len(version_folders(root)) == len({a.folder, *a.history}) + 2
    assert any("older version folder(s) of cloud_screen deleted" in m for m in lines)
    assert factory.rsplit("/", 1)[1] not in version_folders(root)  # dropped from the history long ago
    restarted = ModelStore(root)
    assert restarted.load("cloud_screen").card.version == store.active["cloud_screen"].version
    for _ in range(6):  # back through the whole history, then to the factory copy (re-installed)
        active, _, skipped = restarted.rollback("cloud_screen")
        assert not skipped and len(version_folders(root)) <= 7
    assert active.factory and restarted.load("cloud_screen") is not None


def test_interrupted_installs_and_upload_begins_leave_nothing_after_a_restart(tmp_path):
    """A crash in the middle of an install or an UPLOAD_BEGIN left its staging folder, one per
    bundle, for good (an upload's up to upload_max_bytes, never counted among the open uploads).
    A repair cut between its two renames is put back, not deleted: it is the version in use."""
    root = tmp_path / "models"
    store = ModelStore(root)
    active = root / store.active["cloud_screen"].folder
    versions = root / "versions" / "cloud_screen"
    for i in range(5):
        (versions / f"1.0.{i}-deadbeef.staging").mkdir()
        (versions / f"1.0.{i}-deadbeef.staging" / "x.onnx").write_bytes(bytes(50_000))
    active.rename(active.with_name(active.name + ".old"))  # the repair: old put aside, new not yet in place
    uploads = root / "uploads"
    Uploads(uploads, 10 * MiB)
    for i in range(5):
        (uploads / f"{i:08x}.new").mkdir()
        (uploads / f"{i:08x}.new" / "data.bin").write_bytes(bytes(50_000))
    store = ModelStore(root)
    up = Uploads(uploads, 10 * MiB)
    assert version_folders(root) == [active.name]
    assert store.load("cloud_screen") is not None
    assert list(uploads.iterdir()) == [] and up.open_ids() == []


def test_failed_writes_while_installing_or_beginning_uploads_leave_no_folders(tmp_path, monkeypatch):
    """A full disk during the writes of an install or an UPLOAD_BEGIN: the OSError left the staging
    folder (a new one per bundle: twenty refused bundles, twenty folders). Now nothing is left and
    the active version is untouched."""
    root = tmp_path / "models"
    store = ModelStore(root)
    before = store.active["cloud_screen"]
    up = Uploads(root / "uploads", 10 * MiB)
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and any(part.endswith((".staging", ".new")) for part in Path(file).parts):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(mu, "open", full_disk, raising=False)
    for i in range(20):
        data = bundle(f"3.0.{i}", tiles=1)
        with pytest.raises(OSError):
            store.install_bundle("cloud_screen", data, "tile_fraction")
        with pytest.raises(OSError):
            up.begin("cloud_screen", len(data), 1000, hashlib.sha256(data).digest())
    assert list((root / "uploads").iterdir()) == []
    assert version_folders(root) == [before.folder.rsplit("/", 1)[1]]
    assert store.active["cloud_screen"] == before


def test_open_uploads_are_bounded_in_count_and_bytes(tmp_path):
    """Uploads begun and never finished (a hundred of them): at most MAX_OPEN are held, each at
    most upload_max_bytes; the rest are refused until one is aborted."""
    up = Uploads(tmp_path / "uploads", 200_000)
    refused = 0
    for i in range(100):
        sha = hashlib.sha256(str(i).encode()).digest()
        try:
            up.begin("cloud_screen", 150_000, 1000, sha)
            up.chunk(mu.upload_id_of(sha), 0, bytes(1000))
        except mu.ModelUpdateError:
            refused += 1
    assert len(up.open_ids()) == Uploads.MAX_OPEN and refused == 100 - Uploads.MAX_OPEN
    assert len(list((tmp_path / "uploads").iterdir())) == Uploads.MAX_OPEN
    assert sum(p.stat().st_blocks * 512 for p in (tmp_path / "uploads").rglob("*") if p.is_file()) <= 4 * 200_000


# -- already bounded: kept so ------------------------------------------------------------------------------


def test_the_recent_frames_ring_holds_its_count_over_many_frames_and_restarts(tmp_path):
    folder = tmp_path / "recent_frames"
    cal = np.full((6, 32, 64), 1000, np.uint16)
    for restart in range(3):
        ring = RecentFrames(folder, 3)
        for fid in range(restart * 40, restart * 40 + 40):
            ring.begin(FrameMeta(frame_id=fid, capture_time_s=0.0, height=64, width=64))
            ring.add_strip(cal, 0)
            if fid % 7 == 0:
                ring.drop()  # a rejected frame
                continue
            ring.add_strip(cal, 32)
            ring.commit()
            assert len(list(folder.iterdir())) <= 3
        ring.begin(FrameMeta(frame_id=10**6, capture_time_s=0.0, height=64, width=64))  # cut by the restart
    RecentFrames(folder, 3)
    assert list(folder.iterdir()) == []


def test_ops_state_keeps_two_files_over_many_saves(tmp_path):
    state = OpsState(tmp_path / "ops_state.json")
    for i in range(300):
        state.last_counter = i
        state.error_times = [float(t) for t in range(i * 10)]
        state.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ops_state.json", "ops_state.json.prev"]
    assert (tmp_path / "ops_state.json").stat().st_size < 40_000  # error_times: the last 1000


# -- CFDP: the record of what an open transfer holds ------------------------------------------------------


def test_repeated_file_data_does_not_grow_an_open_transfer_s_record(tmp_path):
    """Each File Data PDU written appended 12 bytes to open/<src>-<seq>.have, repeats included: a
    segment sent again and again (a lossy link's retransmissions, a ground stuck re-sending) grew
    the record for the transfer's whole life (2,000 repeats of a 100-byte segment: 24 KB for a
    100-byte file). Now each range is recorded once; a restarted flight still resumes from it."""
    from spacepackets.cfdp import ChecksumType
    from spacepackets.cfdp.pdu import MetadataParams, MetadataPdu
    from test_filetransfer_audit import conf, file_data, receiver, up

    out: list[bytes] = []
    rx = receiver(tmp_path / "files", out)
    rx.on_packet(up(MetadataPdu(conf(1), MetadataParams(
        closure_requested=True, checksum_type=ChecksumType.CRC_32, file_size=5000,
        source_file_name="/g/x", dest_file_name="f.bin"))))
    for i in range(2000):
        rx.on_packet(file_data(1, (i % 5) * 100, b"x" * 100))
    have = tmp_path / "files" / "open" / "1-1.have"
    assert have.stat().st_size == 5 * 12
    rx2 = receiver(tmp_path / "files", out)  # the restarted flight resumes with the 500 bytes held
    rx2.on_packet(file_data(1, 500, b"y" * 100))
    assert rx2.counts["resumed"] == 1 and have.stat().st_size <= 7 * 12
