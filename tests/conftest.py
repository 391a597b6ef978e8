"""Shared fixtures: the tiny offline models, the two trainer environments, the offline environment."""

import os
from pathlib import Path

import pytest

from tools.offline import OFFLINE_ENV
from tools.trainers import REPO_ROOT, venv_bin

TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-models"

# Everything the tests start inherits this, so no test can reach a hub by accident.
os.environ.update(OFFLINE_ENV)

TRAINER_FIXTURES = {"lf_bin", "swift_bin"}


def pytest_collection_modifyitems(items):
    """Markers of pytest.ini from where a test lives and what it starts: `trainer` for tests that use a trainer's
    environment, `learning` for the end-to-end learning runs, `slow` for those and every end-to-end test."""
    sources: dict[Path, str] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in sources:
            sources[path] = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO_ROOT / "tests").as_posix()
        marks = set()
        if TRAINER_FIXTURES & set(item.fixturenames) or "venv_bin(" in sources[path] or rel.startswith("recipes/"):
            marks.add("trainer")
        if "learning" in path.stem and rel.startswith("e2e/"):
            marks.add("learning")
        if marks or rel.startswith("e2e/"):
            marks.add("slow")
        for mark in sorted(marks):
            item.add_marker(mark)


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
