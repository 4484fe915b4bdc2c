import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_data():
    """Path to ``../shared/data``; skips the test when the shared folder is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is absent")
    return path


@pytest.fixture(scope="session")
def shared_models():
    """Path to ``../shared/models``; skips the test when the shared folder is absent."""
    path = SHARED / "models"
    if not path.is_dir():
        pytest.skip("../shared/models is absent")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cpzarr cache (``CPZARR_CACHE``), so tests neither read nor write the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CPZARR_CACHE")
    os.environ["CPZARR_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["CPZARR_CACHE"]
    else:
        os.environ["CPZARR_CACHE"] = old
