"""Shared fixtures: everything runs offline on the demo world's small models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (ldm_checkpoint)


@pytest.fixture(scope="session")
def demo_sd():
    from scanner.demo import SD_MODEL
    from scanner.models.diffusers_t2i import DiffusersT2I

    return DiffusersT2I.load(SD_MODEL, device="cpu")


@pytest.fixture(scope="session")
def demo_clip():
    from scanner.demo import CLIP_MODEL
    from scanner.models.open_clip_model import OpenClip

    return OpenClip.load(CLIP_MODEL, device="cpu")


@pytest.fixture
def foreign_db(tmp_path):
    """A DuckDB file that some other program made: not a memscan database."""
    import duckdb

    path = tmp_path / "other.duckdb"
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.close()
    return path
