"""Shared fixtures: everything runs offline on the demo world's small models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker, and per scan it starts: no oversubscription
    os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (ldm_checkpoint)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


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
def demo_world_index(demo_clip, tmp_path_factory):
    """The demo model's training index, built once for the session (whichever worker comes first) and
    only read by the tests that take it and by the demo run."""
    from filelock import FileLock

    from scanner.demo.pipeline import demo_index

    folder = _shared_folder(tmp_path_factory) / "demo-world-index"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        return demo_index(demo_clip, folder / "indexes", folder)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: a test deselected does not start the demo
def pytest_collection_modifyitems(config, items):
    config.demo_run_needed = any("demo_run" in getattr(item, "fixturenames", ()) for item in items)


def _shared_folder(tmp_path_factory) -> Path:
    """The whole session's folder: under xdist, the folder above each worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _demo_run_folder(tmp_path_factory) -> Path:
    return _shared_folder(tmp_path_factory) / "demo-run"


@pytest.fixture(scope="session", autouse=True)
def demo_run_started(request, tmp_path_factory):
    """``memscan demo`` is the longest test by far: when a collected test reads it, it starts in the
    background with the session (once, whichever worker comes first), so it is not the session's tail.
    It reads the session's demo index, built first here, instead of building its own."""
    if not getattr(request.config, "demo_run_needed", False):
        return
    index = request.getfixturevalue("demo_world_index")
    import subprocess

    from filelock import FileLock

    folder = _demo_run_folder(tmp_path_factory)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.exists():
            return
        folder.mkdir()
        # one thread, as every worker: beside two busy workers a second thread would only spin
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "scanner", "demo", "--db", str(folder / "demo.duckdb"), "--no-progress",
                   "--index-root", str(index.folder.parent)]
        subprocess.Popen(["bash", "-c", '"$@" > stdout.txt 2> stderr.txt; echo $? > returncode.txt', "demo", *command],
                         cwd=folder, env=environment, start_new_session=True)


@pytest.fixture(scope="session")
def demo_run(demo_run_started, tmp_path_factory):
    """``memscan demo`` at its defaults, run once for the slow tests that read its database (its
    findings, its report): (database, the command's stdout)."""
    import time

    folder = _demo_run_folder(tmp_path_factory)
    deadline = time.time() + 1500
    while not (folder / "returncode.txt").exists() and time.time() < deadline:
        time.sleep(1)
    code = (folder / "returncode.txt").read_text().strip()
    assert code == "0", (folder / "stderr.txt").read_text()
    return folder / "demo.duckdb", (folder / "stdout.txt").read_text()


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
