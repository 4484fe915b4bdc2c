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
