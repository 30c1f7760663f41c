"""Shared fixtures: where the real data sets live, and temporary run directories."""
import os
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("C2F_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Trained judges and tokenizers go to a per-session folder, never the user's cache."""
    old = os.environ.get("C2F_CACHE")
    os.environ["C2F_CACHE"] = str(tmp_path_factory.mktemp("c2f_cache"))
    yield
    if old is None:
        os.environ.pop("C2F_CACHE", None)
    else:
        os.environ["C2F_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder of real data sets (MNIST, graph splits, ERA5 sample)."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set C2F_SHARED_DATA)")
    return path
