"""Shared fixtures: the tiny offline models, the two trainer environments, the offline environment."""

import os
from pathlib import Path

import pytest

from tools.offline import OFFLINE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-models"

# Everything the tests start inherits this, so no test can reach a hub by accident.
os.environ.update(OFFLINE_ENV)


def venv_bin(name: str, override_var: str) -> Path:
    """bin/ of one of the trainer environments built by `make install` (overridable for other layouts)."""
    return Path(os.environ.get(override_var, REPO_ROOT / name)) / "bin"


LF_BIN = venv_bin(".venv-llamafactory", "QVR_LLAMAFACTORY_VENV")
SWIFT_BIN = venv_bin(".venv-swift", "QVR_SWIFT_VENV")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir():
    """tiny_model_dir(family) -> Path of the tiny random checkpoint of that family, built once and cached."""
    from tools.tiny_models import ensure_tiny_models

    def get(family: str) -> Path:
        return ensure_tiny_models(TINY_MODEL_CACHE, [family])[family]

    return get


@pytest.fixture(scope="session")
def lf_bin() -> Path:
    return LF_BIN


@pytest.fixture(scope="session")
def swift_bin() -> Path:
    return SWIFT_BIN
