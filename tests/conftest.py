from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"


def require_shared_real() -> Path:
    """The real scenes live beside the repository in ../shared (CI has it; a user's clone may not)."""
    if not (SHARED_REAL / "landsat7.npz").exists():
        pytest.skip(f"real scenes not found at {SHARED_REAL} (../shared is not beside this clone)")
    return SHARED_REAL

# The HIL test API's fixtures (hil_run) come from the installed package's pytest11 entry point
# (payload_sim.pytest_plugin), as a HIL user gets them.
