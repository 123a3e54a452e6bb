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
    from scanner.models.registry import load_model

    return load_model(SD_MODEL, device="cpu")


@pytest.fixture(scope="session")
def demo_clip():
    from scanner.demo import CLIP_MODEL
    from scanner.models.open_clip_model import OpenClip

    return OpenClip.load(CLIP_MODEL, device="cpu")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``memscan demo`` at its defaults, run once for the slow tests that read its database (its
    findings, its report): (database, the command's stdout)."""
    import subprocess

    folder = tmp_path_factory.mktemp("demo")
    db = folder / "demo.duckdb"
    result = subprocess.run([sys.executable, "-m", "scanner", "demo", "--db", str(db), "--no-progress",
                             "--index-root", str(folder / "indexes")], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr
    return db, result.stdout


@pytest.fixture
def foreign_db(tmp_path):
    """A DuckDB file that some other program made: not a memscan database."""
    import duckdb

    path = tmp_path / "other.duckdb"
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.close()
    return path


@pytest.fixture
def finding_db(tmp_path):
    """A memscan database with one run and one finding, whose medoid image file was never written
    (as in a database copied without its files folder)."""
    from scanner.store import Store, now

    path = tmp_path / "scan.duckdb"
    with Store(path) as store:
        store.start_run("r1", "scan", "model", "abc", {"cluster": {"threshold": 0.02}}, {})
        store.insert("prompts", [{"run_id": "r1", "prompt_id": "p1", "text": "a red circle", "source": None,
                                  "source_item_id": None}])
        store.insert("generations", [{
            "run_id": "r1", "generation_id": "g1", "prompt_id": "p1", "seed": 0, "num_inference_steps": 4,
            "guidance_scale": 5.0, "scheduler": "DDIMScheduler", "height": 32, "width": 32, "batch_size": 4,
            "status": "ok", "image_path": "images/g1.png", "embedding": [0.5, 0.25], "created_at": now()}])
        store.insert("clusters", [{"run_id": "r1", "cluster_id": "c1", "scope": "prompt", "prompt_id": "p1", "size": 4,
                                   "n_generations": 4, "medoid_generation_id": "g1", "mean_distance": 0.01,
                                   "max_distance": 0.02, "distance": "tiled_l2", "threshold": 0.02, "criterion": "clique>=4"}])
        store.insert("candidates", [{"run_id": "r1", "candidate_id": "c1", "cluster_id": "c1", "prompt_id": "p1",
                                     "score": 1.0, "rank": 1, "reason": "test"}])
        store.finish_run("r1", {})
    return path
