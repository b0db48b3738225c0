"""Onboard models that can be replaced over the radio without risk.

Layout of the flight's writable model folder (STATE/models):

    versions/<name>/<version>-<sha8>/   one verified version: <name>.card.json, its .onnx, golden.npz
    active.json                          per model: the active version's folder and older ones (history)
    uploads/<id>/                        an upload in progress: meta.json, data.bin, have.bin

Bounded on mass memory: per model the active version, its history (at most 4) and the newest
`keep_other` (2) other versions (rolled back, or dropped from the history; for analysis) are
kept, older ones deleted with a log line at each activation or rollback (the factory copy is
re-installed from the package when a rollback needs it). At most `Uploads.MAX_OPEN` uploads are
open. Staging folders a crash or a failed write left behind are deleted at start.

The packaged models (the `models` package) are the factory copies, never written: the first start
seeds the folder from them, and they are the last resort of a rollback.

Upload: UPLOAD_BEGIN names the model, size, chunk size and the SHA-256 of the whole bundle;
chunks come in any order, repeats are harmless, every chunk is on disk (fsync) before it counts,
so an upload resumes across passes and flight restarts. UPLOAD_ACTIVATE checks the SHA-256, unpacks
the bundle into a staging folder, verifies it (the card's sha256 against the ONNX bytes by
TileModel, then the golden vectors bit-exact), renames the folder into place and replaces
active.json atomically (write, fsync, os.replace). A failure at any step leaves the active
version untouched. A version that fails at run time within its probation is rolled back to the
previous one; a model file found corrupted on disk is rolled back too.

Bundle format (`pack_bundle`): b"MDLPKG1\\n", then three entries (card JSON, ONNX, golden .npz),
each `kind u8 | size u32 | bytes`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

import numpy as np

from flight.inference import ModelCard, ModelError, TileModel, model_path

MAGIC = b"MDLPKG1\n"
CARD, ONNX, GOLDEN = 1, 2, 3
ENTRY_LIMITS = {CARD: 64 * 1024, ONNX: 64 << 20, GOLDEN: 8 << 20}
GOLDEN_MAX_TILES = 256
GOLDEN_MAX_UNPACKED = 32 << 20
# a card's version names its folder (versions/<name>/<version>-<sha8>): one plain path component,
# never "..", "/" or a NUL (the card itself allows any string of 1..32 characters)
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")


class ModelUpdateError(Exception):
    """A model update step failed: the model, the upload id when known, the reason."""

    def __init__(self, reason: str, model: str | None = None, upload_id: int | None = None):
        super().__init__(f"model {model or '?'}" + (f" upload {upload_id:08x}" if upload_id is not None else "") + f": {reason}")
        self.reason, self.model, self.upload_id = reason, model, upload_id


# --- bundle -------------------------------------------------------------------------------------------


def pack_bundle(card_path: Path, golden_path: Path | None = None) -> bytes:
    """The upload bundle of a model: its card, INT8 ONNX file and golden vectors (ground side)."""
    card_path = Path(card_path)
    card = ModelCard.load(card_path)
    golden_path = golden_path or card_path.parent / "golden" / f"{card.name}.npz"
    parts = [(CARD, card_path.read_bytes()), (ONNX, card.model_file().read_bytes()), (GOLDEN, Path(golden_path).read_bytes())]
    return MAGIC + b"".join(struct.pack(">BI", k, len(b)) + b for k, b in parts)


def unpack_bundle(data: bytes) -> dict[int, bytes]:
    """The three entries of a bundle; ModelUpdateError on anything else."""
    if not data.startswith(MAGIC):
        raise ModelUpdateError("not a model bundle (bad magic)")
    parts: dict[int, bytes] = {}
    pos = len(MAGIC)
    while pos < len(data):
        if pos + 5 > len(data):
            raise ModelUpdateError(f"truncated entry header at byte {pos}")
        kind, size = struct.unpack_from(">BI", data, pos)
        pos += 5
        if kind not in ENTRY_LIMITS or kind in parts:
            raise ModelUpdateError(f"unknown or repeated entry kind {kind}")
        if size > ENTRY_LIMITS[kind] or pos + size > len(data):
            raise ModelUpdateError(f"entry {kind} of {size} bytes does not fit (limit {ENTRY_LIMITS[kind]}, {len(data) - pos} left)")
        parts[kind] = data[pos : pos + size]
        pos += size
    if set(parts) != {CARD, ONNX, GOLDEN}:
        raise ModelUpdateError(f"bundle holds entries {sorted(parts)}, needs card, onnx and golden")
    return parts


class Golden(TypedDict):
    tiles: np.ndarray
    int8: np.ndarray
    sha256: str


def load_golden(path: Path) -> Golden:
    """Golden vectors (.npz: tiles, int8, sha256), with sizes checked before anything is unpacked."""
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
            if unpacked > GOLDEN_MAX_UNPACKED:
                raise ModelUpdateError(f"golden vectors unpack to {unpacked} bytes, limit {GOLDEN_MAX_UNPACKED}")
        with np.load(path, allow_pickle=False) as g:
            tiles, want, sha = g["tiles"], g["int8"], str(g["sha256"])
    except ModelUpdateError:
        raise
    except Exception as exc:  # zipfile, numpy and KeyError all signal a malformed file
        raise ModelUpdateError(f"golden vectors unreadable: {type(exc).__name__}: {exc}") from None
    if tiles.dtype != np.uint16 or tiles.ndim != 4 or not 0 < len(tiles) <= GOLDEN_MAX_TILES:
        raise ModelUpdateError(f"golden tiles are {tiles.dtype} {tiles.shape}, need uint16 (1..{GOLDEN_MAX_TILES}, 64, 64, 6)")
    return {"tiles": tiles, "int8": want, "sha256": sha}


def verify_model_dir(folder: Path, name: str, threads: int = 1, batch: int = 64, kind: str | None = None,
                     arena: bool = False) -> TileModel:
    """Load a model folder (hash of the ONNX bytes against the card) and run its golden vectors
    (bit-exact INT8). Returns the loaded model; ModelUpdateError naming the failed check."""
    card_path = folder / f"{name}.card.json"
    try:
        model = TileModel(card_path, intra_op_threads=threads, enable_cpu_mem_arena=arena, batch_size=batch)
    except (ModelError, OSError) as exc:
        # the cause first, without the folder's path: events carry the first 150 characters
        why = (f"key {exc.key!r} = {exc.value!r}: {exc.reason}" if exc.key else exc.reason) if isinstance(exc, ModelError) else exc
        raise ModelUpdateError(f"load refused: {why}", name) from None
    card = model.card
    if card.name != name:
        raise ModelUpdateError(f"card names model {card.name!r}", name)
    if kind is not None and card.kind != kind:
        raise ModelUpdateError(f"kind {card.kind}, the active model is {kind}", name)
    g = load_golden(folder / "golden.npz")
    if g["sha256"] != card.sha256:
        raise ModelUpdateError(f"golden vectors made for sha256 {g['sha256'][:12]}, card has {card.sha256[:12]}", name)
    try:
        got = model.run(g["tiles"])
    except Exception as exc:
        raise ModelUpdateError(f"golden run failed: {type(exc).__name__}: {exc}", name) from None
    want = g["int8"]
    if got.shape != want.shape or not np.array_equal(got, want):
        raise ModelUpdateError("golden vectors differ (INT8 must be bit-exact)", name)
    return model


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def version_number(version: str) -> float:
    """'1.2.3' -> 10203 (telemetry is float32); -1 when not of that form."""
    try:
        parts = [int(p) for p in version.split(".")[:3]]
    except ValueError:
        return -1.0
    parts += [0] * (3 - len(parts))
    return float(parts[0] * 10000 + parts[1] * 100 + parts[2]) if all(0 <= p < 100 for p in parts) else -1.0


# --- versions and the active one ----------------------------------------------------------------------


@dataclass(frozen=True)
class Active:
    name: str
    folder: str  # relative to the models folder
    version: str
    sha256: str
    history: tuple[str, ...] = ()  # older verified folders, oldest first
    factory: bool = False


class ModelStore:
    def __init__(self, root: Path, threads: int = 1, batch: int = 64, factory_dir: Path | None = None,
                 arena: bool = False, log: Callable[[str], None] | None = None, keep_other: int = 2):
        self.root = Path(root)
        self.threads, self.batch, self.arena = threads, batch, arena
        self.factory_dir = factory_dir or model_path("cloud_screen").parent
        self.log = log or (lambda _m: None)
        self.keep_other = keep_other  # per model: versions neither active nor in its history, newest first
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "versions").mkdir(exist_ok=True)
        for left in sorted(self.root.glob("versions/*/*.old")):  # a repair cut between its two renames
            final = left.with_name(left.name.removesuffix(".old"))
            if not final.exists():
                left.rename(final)  # the version as it was: load() verifies it
            else:
                shutil.rmtree(left, ignore_errors=True)
                self.log(f"models: {left.relative_to(self.root)} left by an interrupted install: deleted")
        for left in sorted(self.root.glob("versions/*/*.staging")):  # an install cut by a crash: never verified
            shutil.rmtree(left, ignore_errors=True)
            self.log(f"models: {left.relative_to(self.root)} left by an interrupted install: deleted")
        self.active: dict[str, Active] = {}
        self.corrupt_index: str | None = None  # why active.json had to be rebuilt, for an event
        # (model, previous version, the new Active or why the new release's model was refused), for events
        self.factory_updates: list[tuple[str, str, Active | str]] = []
        path = self.root / "active.json"
        if path.exists():
            try:
                raw = json.loads(path.read_text())
                self.active = {n: Active(n, e["folder"], e["version"], e["sha256"], tuple(e.get("history", ())),
                                         bool(e.get("factory"))) for n, e in raw.items()}
            except (ValueError, KeyError, TypeError) as exc:  # a torn or corrupt file: start again from the factory
                self.corrupt_index = f"active.json unreadable ({exc}); reseeded from factory"
                self.active = {}
        if not self.active:
            self.seed()
        else:
            self.adopt_factory_updates()

    def _verify(self, folder: Path, name: str, kind: str | None = None) -> TileModel:
        """verify_model_dir with this store's session settings (threads, batch, arena)."""
        return verify_model_dir(folder, name, self.threads, self.batch, kind, self.arena)

    def _save(self) -> None:
        data = {n: {"folder": a.folder, "version": a.version, "sha256": a.sha256, "history": list(a.history),
                    "factory": a.factory} for n, a in sorted(self.active.items())}
        _write_atomic(self.root / "active.json", json.dumps(data, indent=1).encode())

    def factory_names(self) -> list[str]:
        return sorted(p.name.removesuffix(".card.json") for p in self.factory_dir.glob("*.card.json"))

    def seed(self) -> None:
        """First start: every packaged model becomes the active version."""
        for name in self.factory_names():
            try:
                self.active[name] = self._install_factory(name)[0]
            except (ModelError, OSError, ModelUpdateError):
                continue  # a packaged model that does not even load is simply not offered
        self._save()

    def adopt_factory_updates(self) -> None:
        """After a software update the package holds new factory models. Where the active version
        is the previous release's factory copy (not a version an operator uploaded), the new
        packaged model is installed, verified like an upload, and made active; the old copy stays
        in the history, so ROLLBACK_MODEL goes back to it. A model new in the release is installed
        too. Without this the flight went on running the old release's stored copies, silently."""
        for name in self.factory_names():
            old = self.active.get(name)
            try:
                packaged = ModelCard.load(self.factory_dir / f"{name}.card.json")
                if old is not None and (not old.factory or old.sha256 == packaged.sha256):
                    continue
                active, _ = self._install_factory(name)
            except (ModelError, OSError, ModelUpdateError) as exc:
                if old is not None and not old.factory:
                    continue  # an uploaded version is active: the package's model is not in question
                self.factory_updates.append((name, old.version if old else "none", str(exc)[:150]))
                continue
            adopted = self.activate(name, active.folder, packaged, factory=True)
            self.factory_updates.append((name, old.version if old else "none", adopted))

    def _install(self, name: str, card: bytes, onnx: bytes, golden: bytes,
                 kind: str | None = None) -> tuple[str, ModelCard, TileModel]:
        """Write one version folder via a staging folder, verify it there, rename it into place."""
        try:
            obj = json.loads(card)
            c = ModelCard.from_dict(obj)
        except (ValueError, UnicodeDecodeError, RecursionError, ModelError) as exc:  # deep nesting: RecursionError
            raise ModelUpdateError(f"card refused: {exc}", name) from None
        if c.name != name:
            raise ModelUpdateError(f"bundle card names model {c.name!r}", name)
        if not _VERSION_RE.fullmatch(c.version):  # else "../../x" writes (and keeps) a version outside the models folder
            raise ModelUpdateError(f"card version {c.version[:40]!r} is not a plain version name ([0-9A-Za-z.+-], "
                                   "at most 32, first a letter or digit)", name)
        rel = f"versions/{name}/{c.version}-{c.sha256[:8]}"
        final = self.root / rel
        staging = final.with_name(final.name + ".staging")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            for fname, data in ((f"{name}.card.json", card), (c.file, onnx), ("golden.npz", golden)):
                with open(staging / fname, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            model = self._verify(staging, name, kind)
        except BaseException:  # refused, or a write failed (disk full): one staging folder per bundle stayed
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if final.exists():  # the same version again (a repair): swap the folders
            trash = final.with_name(final.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)
        _fsync_dir(final.parent)
        return rel, c, model

    def _install_factory(self, name: str) -> tuple[Active, TileModel]:
        card_path = self.factory_dir / f"{name}.card.json"
        c = ModelCard.load(card_path)
        rel, _, model = self._install(name, card_path.read_bytes(), c.model_file().read_bytes(),
                                      (self.factory_dir / "golden" / f"{name}.npz").read_bytes())
        return Active(name, rel, c.version, c.sha256, factory=True), model

    def install_bundle(self, name: str, bundle: bytes, kind: str | None) -> tuple[Active, TileModel]:
        """Stage, verify and activate an uploaded bundle. The active version is untouched on failure."""
        parts = unpack_bundle(bundle)
        rel, card, model = self._install(name, parts[CARD], parts[ONNX], parts[GOLDEN], kind)
        return self.activate(name, rel, card), model

    def activate(self, name: str, rel: str, card: ModelCard, factory: bool = False) -> Active:
        old = self.active.get(name)
        history = () if old is None else tuple(h for h in old.history + (old.folder,) if h != rel)[-4:]
        new = Active(name, rel, card.version, card.sha256, history, factory)
        self.active[name] = new
        self._save()
        self._prune(name)
        return new

    def _prune(self, name: str) -> None:
        """Delete the version folders of `name` that are neither active nor in any history, but
        the newest `keep_other`: every upload (or rollback) left one more folder for good."""
        keep = {self.root / a.folder for a in self.active.values()}
        keep |= {self.root / h for a in self.active.values() for h in a.history}
        try:
            others = [p for p in (self.root / "versions" / name).iterdir()
                      if p.is_dir() and p not in keep and not p.name.endswith((".staging", ".old"))]
            others.sort(key=lambda p: (p.stat().st_mtime, p.name))
        except OSError as exc:
            self.log(f"models: versions of {name} not pruned ({exc})")
            return
        drop = others[: max(0, len(others) - self.keep_other)]
        for p in drop:
            shutil.rmtree(p, ignore_errors=True)
        if drop:
            self.log(f"models: {len(drop)} older version folder(s) of {name} deleted "
                     f"({', '.join(p.name for p in drop)[:200]}); active, its history and the newest "
                     f"{self.keep_other} others kept")

    def load(self, name: str) -> TileModel:
        """The active version, verified (hash and golden vectors)."""
        a = self.active.get(name)
        if a is None:
            raise ModelUpdateError("no such model onboard", name)
        return self._verify(self.root / a.folder, name)

    def rollback(self, name: str) -> tuple[Active, TileModel, list[str]]:
        """Go back to the newest older version that still verifies, else the factory copy.
        Returns the new active entry, its model and the reasons older versions were skipped."""
        a = self.active.get(name)
        skipped: list[str] = []
        history = list(a.history) if a else []
        while history:
            rel = history.pop()
            try:
                model = self._verify(self.root / rel, name)
            except ModelUpdateError as exc:
                skipped.append(f"{rel}: {exc.reason}")
                continue
            new = Active(name, rel, model.card.version, model.card.sha256, tuple(history))
            self.active[name] = new
            self._save()
            self._prune(name)
            return new, model, skipped
        try:
            fac, model = self._install_factory(name)
        except (ModelError, OSError, ModelUpdateError) as exc:
            raise ModelUpdateError(f"no version to roll back to ({'; '.join(skipped + [str(exc)])})", name) from None
        self.active[name] = Active(name, fac.folder, fac.version, fac.sha256, tuple(history), factory=True)
        self._save()
        self._prune(name)
        return self.active[name], model, skipped

    def scrub(self, name: str) -> str | None:
        """Re-hash the active version's files on disk; the problem found, or None."""
        a = self.active.get(name)
        if a is None:
            return None
        folder = self.root / a.folder
        try:
            card = ModelCard.load(folder / f"{name}.card.json")
            if card.sha256 != a.sha256:
                return f"card sha256 {card.sha256[:12]} != active {a.sha256[:12]}"
            digest = file_sha256(card.model_file())
        except (ModelError, OSError) as exc:
            return str(exc)[:150]
        if digest != a.sha256:
            return f"onnx sha256 {digest[:12]} != card {a.sha256[:12]}"
        return None

    def onnx_path(self, name: str) -> Path | None:
        a = self.active.get(name)
        if a is None:
            return None
        return ModelCard.load(self.root / a.folder / f"{name}.card.json").model_file()


# --- uploads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadMeta:
    upload_id: int
    model: str
    size_bytes: int
    chunk_bytes: int
    sha256: str

    @property
    def chunks(self) -> int:
        return -(-self.size_bytes // self.chunk_bytes)

    def chunk_len(self, index: int) -> int:
        return self.chunk_bytes if index < self.chunks - 1 else self.size_bytes - self.chunk_bytes * (self.chunks - 1)


def upload_id_of(sha256: bytes) -> int:
    return int.from_bytes(sha256[:4], "big")


_UPLOAD_DIR = re.compile(r"[0-9a-f]{8}")  # an upload folder: its id, 8 hex digits

class Uploads:
    """Chunked uploads persisted chunk by chunk."""

    MAX_OPEN = 4

    def __init__(self, root: Path, max_bytes: int, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        for left in sorted(self.root.glob("*.new")):  # a begin cut by a crash: not an upload, never counted
            shutil.rmtree(left, ignore_errors=True)
            (log or (lambda _m: None))(f"uploads: {left.name} left by an interrupted UPLOAD_BEGIN: deleted")

    def _dir(self, upload_id: int) -> Path:
        return self.root / f"{upload_id:08x}"

    def meta(self, upload_id: int) -> UploadMeta:
        try:
            m = json.loads((self._dir(upload_id) / "meta.json").read_text())
            return UploadMeta(m["upload_id"], m["model"], m["size_bytes"], m["chunk_bytes"], m["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelUpdateError("no such upload (begin it first)", upload_id=upload_id) from None

    def open_ids(self) -> list[int]:
        return sorted(int(p.name, 16) for p in self.root.iterdir() if p.is_dir() and _UPLOAD_DIR.fullmatch(p.name))

    def exists(self, upload_id: int) -> bool:
        """An upload folder is there, readable or not (a damaged one can still be aborted)."""
        return self._dir(upload_id).is_dir()

    def begin(self, model: str, size_bytes: int, chunk_bytes: int, sha256: bytes) -> tuple[UploadMeta, int]:
        """Start an upload, or resume the same one; returns it and the chunks already held."""
        uid = upload_id_of(sha256)
        want = UploadMeta(uid, model, size_bytes, chunk_bytes, sha256.hex())
        if size_bytes > self.max_bytes:
            raise ModelUpdateError(f"{size_bytes} bytes > limit {self.max_bytes}", model, uid)
        d = self._dir(uid)
        if d.exists():
            have = self.meta(uid)
            if have != want:
                raise ModelUpdateError("upload id in use by a different upload (abort it first)", model, uid)
            return have, self.received(uid)
        if len(self.open_ids()) >= self.MAX_OPEN:
            raise ModelUpdateError(f"{self.MAX_OPEN} uploads already open (abort one)", model, uid)
        staging = d.with_name(d.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            with open(staging / "data.bin", "wb") as f:
                f.truncate(size_bytes)
            with open(staging / "have.bin", "wb") as f:
                f.write(bytes(want.chunks))
            (staging / "meta.json").write_text(json.dumps(want.__dict__))
            staging.rename(d)
        except BaseException:  # a full disk: each failed begin left a folder (up to size_bytes) not counted as open
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        return want, 0

    def chunk(self, upload_id: int, index: int, data: bytes) -> tuple[UploadMeta, int, bool]:
        """Store one chunk durably; returns the upload, how many chunks it now holds, and whether
        this chunk was new."""
        m = self.meta(upload_id)
        if not 0 <= index < m.chunks:
            raise ModelUpdateError(f"chunk {index} outside 0..{m.chunks - 1}", m.model, upload_id)
        if len(data) != m.chunk_len(index):
            raise ModelUpdateError(f"chunk {index} is {len(data)} bytes, expected {m.chunk_len(index)}", m.model, upload_id)
        d = self._dir(upload_id)
        new = not self.have(upload_id)[index]
        with open(d / "data.bin", "r+b") as f:  # the data is on disk before the chunk is marked held
            f.seek(index * m.chunk_bytes)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with open(d / "have.bin", "r+b") as f:
            f.seek(index)
            f.write(b"\1")
            f.flush()
            os.fsync(f.fileno())
        return m, self.received(upload_id), new

    def have(self, upload_id: int) -> bytes:
        try:
            return (self._dir(upload_id) / "have.bin").read_bytes()
        except OSError:
            raise ModelUpdateError("no such upload", upload_id=upload_id) from None

    def received(self, upload_id: int) -> int:
        """Chunks held; 0 for an upload whose chunk map cannot be read (housekeeping counts every
        open upload: one damaged folder must not fail it)."""
        try:
            have = self.have(upload_id)
        except ModelUpdateError:
            return 0
        return len(have) - have.count(0)

    def missing(self, upload_id: int) -> list[int]:
        return [i for i, b in enumerate(self.have(upload_id)) if not b]

    def assemble(self, upload_id: int) -> tuple[UploadMeta, bytes]:
        """The whole file, once every chunk is held and its SHA-256 is the one announced."""
        m = self.meta(upload_id)
        missing = self.missing(upload_id)
        if missing:
            raise ModelUpdateError(f"{len(missing)} of {m.chunks} chunks missing: {ranges(missing)}", m.model, upload_id)
        data = (self._dir(upload_id) / "data.bin").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != m.sha256:
            raise ModelUpdateError(f"sha256 {digest[:16]} != announced {m.sha256[:16]}", m.model, upload_id)
        return m, data

    def abort(self, upload_id: int) -> None:
        shutil.rmtree(self._dir(upload_id), ignore_errors=True)


def ranges(indices: list[int], limit: int = 12) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (at most `limit` ranges, then '...')."""
    out: list[str] = []
    start = prev = None
    for i in indices + [None]:
        if start is not None and (i is None or i != cast(int, prev) + 1):  # prev is set whenever start is
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(out[:limit]) + (",..." if len(out) > limit else "")


def parse_ranges(text: str) -> list[int]:
    """Inverse of ranges() (without the '...'): '1-3,7' -> [1, 2, 3, 7]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        if part == "...":
            continue
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def bundle_name(bundle: bytes) -> str:
    """The model name inside a bundle (ground side, for UPLOAD_BEGIN)."""
    card = json.loads(unpack_bundle(bundle)[CARD])
    return str(card["name"])


def golden_bytes(tiles: np.ndarray, int8: np.ndarray, sha256: str) -> bytes:
    """A golden-vector .npz in memory (tests and tools)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, tiles=tiles, int8=int8, sha256=np.array(sha256))
    return buf.getvalue()
