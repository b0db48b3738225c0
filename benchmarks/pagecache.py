"""Put the shared libraries the measuring children map into one page-cache state before each child.

Why: peak RSS counts the file pages a process maps, and on this kernel (6.18, ext4 with large
folios) how many pages one fault maps depends on how the file came into the page cache. Just after
`pip install` wrote them, importing numpy, OpenCV and onnxruntime is 96.6 MiB resident (70.4 MiB of
it file-backed); after their pages are written back and dropped, the same imports map them from
disk on demand: 61.3 MiB (35.0 MiB file-backed). The same code measured 143.3 and 112.5 MiB peak
in two `make bench` runs minutes apart, the first on a fresh venv (docs/benchmarks.md, seventh
round). A board reads its libraries from storage after boot, which is the second state; dropping
the pages before each child measures every run in it.

Standard library only. Pages that some running process maps (the harness itself maps numpy) are
not dropped by the kernel; `mapped_here` names those the harness maps, so the report says so.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any


def shared_libraries() -> list[Path]:
    """The interpreter's own shared library and every shared object under its site-packages."""
    roots = {Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    found: set[Path] = set()
    for root in roots:
        if root.is_dir():
            found.update(p for p in root.rglob("*.so*") if p.is_file() and (p.suffix == ".so" or ".so." in p.name))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        found.update(p for p in Path(libdir).glob("libpython*.so*") if p.is_file())
    return sorted(found)


def evict(paths: list[Path]) -> dict:
    """Write back and drop each file's cached pages. Returns what was done, errors counted, never raised:
    a file we cannot open leaves the measurement as it would have been, which the report says."""
    done: dict[str, Any] = {"files": 0, "bytes": 0, "errors": 0, "first_error": None}
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            done["errors"] += 1
            done["first_error"] = done["first_error"] or f"{path}: {exc.strerror}"
            continue
        try:
            os.fdatasync(fd)  # dirty pages (a fresh install) are not dropped until written back
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done["files"] += 1
            done["bytes"] += os.fstat(fd).st_size
        except OSError as exc:
            done["errors"] += 1
            done["first_error"] = done["first_error"] or f"{path}: {exc.strerror}"
        finally:
            os.close(fd)
    return done


def mapped_here(paths: list[Path]) -> list[str]:
    """Which of ``paths`` this process maps now (their pages stay as they are)."""
    wanted = {str(p) for p in paths}
    try:
        with open("/proc/self/maps") as f:
            maps = {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}
    except OSError:
        return []
    return sorted(Path(m).name for m in maps & wanted)


def drop_libraries() -> dict[str, Any]:
    """evict(shared_libraries()), and which of them this process maps (those are left as they were)."""
    libs = shared_libraries()
    return dict(evict(libs), mapped_by_harness=mapped_here(libs))


if __name__ == "__main__":  # python -m benchmarks.pagecache: drop them by hand before a measurement
    r = drop_libraries()
    print(f"{r['files']} shared libraries ({r['bytes'] / 2**20:.0f} MiB) written back and dropped from the page cache; "
          f"{r['errors']} errors{': ' + r['first_error'] if r['first_error'] else ''}", file=sys.stderr)
