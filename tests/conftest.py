from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def require_shared_real() -> Path:
    """The real scenes live beside the repository in ../shared (CI has it; a user's clone may not)."""
    if not (SHARED_REAL / "landsat7.npz").exists():
        pytest.skip(f"real scenes not found at {SHARED_REAL} (../shared is not beside this clone)")
    return SHARED_REAL

# the HIL test API's fixtures (hil_run), as a HIL user gets them from the installed package
pytest_plugins = ["payload_sim.pytest_plugin"]
