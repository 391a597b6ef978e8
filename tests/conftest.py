"""Shared fixtures: the tiny offline models, the two trainer environments, the offline environment."""

import os
from pathlib import Path

import pytest

from tools.offline import OFFLINE_ENV
from tools.trainers import REPO_ROOT, venv_bin

TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-models"

# Everything the tests start inherits this, so no test can reach a hub by accident.
os.environ.update(OFFLINE_ENV)


@pytest.fixture(scope="session")
def tiny_model_dir():
    """tiny_model_dir(family) -> Path of the tiny random checkpoint of that family, built once and cached."""
    from tools.tiny_models import ensure_tiny_models

    def get(family: str) -> Path:
        return ensure_tiny_models(TINY_MODEL_CACHE, [family])[family]

    return get


@pytest.fixture(scope="session")
def lf_bin() -> Path:
    return venv_bin("llamafactory")


@pytest.fixture(scope="session")
def swift_bin() -> Path:
    return venv_bin("swift")
