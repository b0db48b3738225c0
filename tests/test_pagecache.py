"""benchmarks.pagecache: the libraries' cached pages are written back and dropped, so peak RSS does not
depend on how an install left them (docs/benchmarks.md, seventh round). Real files, real page cache."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import pagecache


def _resident_pages(path) -> int:
    """Pages of ``path`` in the page cache, by util-linux fincore (mincore(2) underneath)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux fincore not installed: cannot read page-cache residency")
def test_a_freshly_written_file_leaves_the_page_cache(tmp_path):
    path = tmp_path / "lib.so"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())  # dirty pages
    assert _resident_pages(path) > 0
    done = pagecache.evict([path])
    assert done == {"files": 1, "bytes": 4 << 20, "errors": 0, "first_error": None}
    assert _resident_pages(path) == 0


def test_a_file_it_cannot_open_is_counted_not_raised(tmp_path):
    ok = tmp_path / "ok.so"
    ok.write_bytes(b"\0" * 4096)
    done = pagecache.evict([tmp_path / "gone.so", ok])
    assert done["files"] == 1 and done["errors"] == 1 and "gone.so" in done["first_error"]


def test_it_finds_the_libraries_the_children_map_and_names_those_this_process_maps():
    import onnxruntime  # noqa: F401  (mapped by this process now)

    libs = pagecache.shared_libraries()
    names = {p.name for p in libs}
    assert any(n.startswith("onnxruntime_pybind11_state") for n in names)
    assert any(n.startswith("cv2") for n in names)
    assert all(p.is_file() for p in libs)
    here = pagecache.mapped_here(libs)
    assert any(n.startswith("onnxruntime_pybind11_state") for n in here)
    assert not any(n.startswith("cv2") for n in here) or "cv2" in sys.modules


def test_the_command_line_reports_what_it_dropped():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pagecache"], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert "written back and dropped from the page cache; 0 errors" in proc.stderr
