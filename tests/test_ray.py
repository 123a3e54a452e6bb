"""Scale-out on Ray, for real, on a local cluster started by the tests: the same rows as one
process, a worker killed mid-unit loses nothing, a killed driver resumes."""

import functools
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from a1111_server import A1111Server  # noqa: E402
from scanner.config import ClusterConfig, FeatureConfig, HttpConfig, RayConfig, SamplingConfig, ScanConfig  # noqa: E402
from scanner.demo import SD_MODEL, demo_items  # noqa: E402
from scanner.distributed import RayPool, connect  # noqa: E402
from scanner.generate import Prompt, SamplingJob, record_prompts, run_generation  # noqa: E402
from scanner.models.http_api import HttpModel  # noqa: E402
from scanner.models.loading import ModelSpec, load_worker_models  # noqa: E402
from scanner.scan import run_id_for, run_scan  # noqa: E402
from scanner.store import Store  # noqa: E402

ROWS = "SELECT generation_id, prompt_id, seed, status, image_sha256, phash, dhash, degenerate, embedding " \
       "FROM generations ORDER BY generation_id"
SAMPLING = SamplingConfig(samples_per_prompt=4, batch_size=2, num_inference_steps=4, guidance_scale=5.0)
FIXED = ClusterConfig(threshold=0.02, min_clique=4)  # no null prompts: the rows compared are the prompts' own


@pytest.fixture(scope="module")
def captions():
    return [r["caption"] for r in demo_items()[::15][:4]]


@pytest.fixture(scope="module")
def cluster():
    import ray

    connect("local", num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process_rows(tmp_path_factory, demo_sd, demo_clip, captions):
    """The reference, with as many torch threads as each Ray worker has (one): float32 sums
    depend on the thread count, and a 1e-6 difference can flip a uint8 pixel."""
    import torch

    db = tmp_path_factory.mktemp("single") / "scan.duckdb"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(db) as store:
            run_scan(store, demo_sd, [Prompt.from_text(c) for c in captions], ScanConfig(sampling=SAMPLING, cluster=FIXED),
                     show_progress=False, embedder=demo_clip)
            return store.execute(ROWS)
    finally:
        torch.set_num_threads(threads)


def ray_pool(workers: int) -> RayPool:
    setup = functools.partial(load_worker_models, ModelSpec.of(SD_MODEL, "cpu"), FeatureConfig())
    return RayPool(setup, RayConfig(address="local", workers=workers))


def test_a_scan_on_ray_stores_the_rows_of_a_single_process_scan(tmp_path, cluster, demo_sd, demo_clip, captions,
                                                                 single_process_rows):
    pool = ray_pool(workers=2)
    try:
        with Store(tmp_path / "ray.duckdb") as store:
            run_scan(store, demo_sd, [Prompt.from_text(c) for c in captions], ScanConfig(sampling=SAMPLING, cluster=FIXED),
                     show_progress=False, embedder=demo_clip, pool=pool)
            rows = store.execute(ROWS)
    finally:
        pool.close()
    assert len(rows) == 16
    assert rows == single_process_rows  # same ids, seeds, image bytes, hashes and embeddings


def test_a_scan_over_http_on_ray_sums_every_workers_requests(tmp_path, cluster, demo_sd, captions):
    """Workers load only a client; the run's request accounting is the driver's plus every unit's."""
    http = HttpConfig(resolution=32, in_flight=2, retries=3, backoff_s=0.01, timeout_s=120)
    with A1111Server(demo_sd, faults=[("500",)]).running() as server:
        setup = functools.partial(load_worker_models, ModelSpec.of(server.url, http=http), FeatureConfig(embeddings=False))
        pool = RayPool(setup, RayConfig(address="local", workers=2))
        try:
            with Store(tmp_path / "ray-http.duckdb") as store:
                config = ScanConfig(sampling=SAMPLING, cluster=FIXED, features=FeatureConfig(embeddings=False))
                result = run_scan(store, HttpModel(server.url, http), [Prompt.from_text(c) for c in captions[:2]], config,
                                  show_progress=False, pool=pool)
                statuses = store.execute("SELECT status, count(*) FROM generations GROUP BY status")
        finally:
            pool.close()
        served = server.requests["POST /sdapi/v1/txt2img"]
    assert statuses == [("ok", 8)] and served == 8 + 1  # every image asked once, the 500 retried once
    assert result.timings["requests_sent"] == served + 1  # and the driver's check of the served model
    assert result.timings["requests_retried"] == 1 and result.timings["requests_failed"] == 0


def test_a_worker_killed_mid_unit_is_retried_without_losing_or_duplicating_rows(tmp_path, cluster, demo_sd, captions,
                                                                                single_process_rows):
    pool = ray_pool(workers=2)
    victims = pool.worker_pids()
    killed: list[int] = []

    def kill_a_busy_worker(_rows: int) -> None:
        if not killed:  # after the first unit both workers still hold queued units
            os.kill(victims[0], signal.SIGKILL)
            killed.append(victims[0])

    prompts = [Prompt.from_text(c) for c in captions]
    run_id = run_id_for(demo_sd, demo_sd.precision, prompts, ScanConfig(sampling=SAMPLING, cluster=FIXED), "scan")
    try:
        with Store(tmp_path / "ray.duckdb") as store:
            record_prompts(store, run_id, prompts)
            job = SamplingJob(run_id, demo_sd.model_hash, demo_sd.precision, SAMPLING, str(store.files_dir), thumbnail_size=64)
            stats = run_generation(store, job, prompts, pool, on_batch=kill_a_busy_worker)
            rows = store.execute(ROWS)
        restarted = pool.worker_pids()
    finally:
        pool.close()
    assert killed and victims[0] not in restarted  # Ray restarted the actor in a new process
    assert stats["generated"] == 16
    assert rows == single_process_rows


def stored_images(db) -> int:
    folder = db.with_name(db.name + ".files")
    return sum(1 for _ in folder.rglob("*.png")) if folder.exists() else 0


def test_a_killed_driver_resumes_with_the_same_command(tmp_path, captions, single_process_rows):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(captions))
    db = tmp_path / "ray.duckdb"
    command = [sys.executable, "-m", "scanner", "scan", "--ray", "local", "--ray-workers", "2", "--prompts", str(prompts),
               "--db", str(db), "--samples-per-prompt", "4", "--batch-size", "2", "--steps", "4",
               "--threshold", str(FIXED.threshold), "--min-clique", "4", "--no-progress"]  # the reference's criterion
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while stored_images(db) < 4 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    os.killpg(driver.pid, signal.SIGKILL)  # the in-process cluster's helper processes outlive their driver
    assert 0 < stored_images(db) < 32, "the driver should have been killed part-way"

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed run" in resumed.stdout
    with Store(db, read_only=True) as store:
        assert store.execute(ROWS) == single_process_rows
        assert store.execute("SELECT status FROM runs") == [("done",)]


def test_index_build_on_ray_equals_the_single_process_build(tmp_path, cluster, demo_clip):
    import numpy as np
    import pyarrow.parquet as pq

    from scanner.demo import load_world
    from scanner.index import IndexConfig, build_index
    from scanner.models.loading import load_embedder

    source = tmp_path / "train"
    source.mkdir()
    for row in load_world(["item_id", "caption", "image_png"])[:40]:
        (source / f"{row['item_id']}.png").write_bytes(row["image_png"])
        (source / f"{row['item_id']}.txt").write_text(row["caption"])
    (source / "truncated.png").write_bytes(b"\x89PNG broken")
    config = IndexConfig(thumbnail_size=32, batch_size=8)  # five chunks over two workers
    single = build_index(source, "single", demo_clip, config, root=tmp_path)
    pool = RayPool(functools.partial(load_embedder, FeatureConfig()), RayConfig(address="local", workers=2))
    try:
        on_ray = build_index(source, "ray", demo_clip, config, root=tmp_path, pool=pool)
    finally:
        pool.close()
    assert on_ray["counts"] == single["counts"] == {"items": 40, "skipped": 1}
    assert pq.read_table(tmp_path / "ray" / "items.parquet").equals(pq.read_table(tmp_path / "single" / "items.parquet"))
    for array in ("image_emb.npy", "text_emb.npy", "thumbnails.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "ray" / array), np.load(tmp_path / "single" / array))


def test_membership_scores_on_ray_equal_the_single_process_scores(tmp_path, cluster, demo_sd):
    import numpy as np

    from scanner import demo as demo_world
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import LabelledItem, attack_scores, features_on
    from scanner.mia.triage import triage

    rows = demo_world.membership_items(per_bucket=2, x1=2, nonmembers=6)
    items = [LabelledItem(r["item_id"], r["caption"], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0) for r in rows]
    protocol = NoiseProtocol(timesteps=(100, 400), repeats=1)
    prompts = [Prompt.from_text(r["caption"]) for r in rows]
    pool = RayPool(functools.partial(load_worker_models, ModelSpec.of(SD_MODEL, "cpu"), None),
                   RayConfig(address="local", workers=2))
    try:
        on_ray = features_on(pool, demo_sd, items, ["loss", "clid_th"], protocol, chunk_size=5)
        kept_on_ray, triage_on_ray = triage(demo_sd, prompts, 0.25, pool=pool, chunk_size=5)
    finally:
        pool.close()
    here = attack_scores(demo_sd, items, ["loss", "clid_th"], protocol)
    np.testing.assert_allclose(on_ray["loss"]["score"], here["loss"]["score"], rtol=1e-5)
    np.testing.assert_allclose(on_ray["clid_th"]["d"], here["clid_th"]["d"], rtol=1e-4, atol=1e-6)
    # triage's few-step samples, chunk by chunk on the workers, scored once all are in
    kept_here, triage_here = triage(demo_sd, prompts, 0.25)
    np.testing.assert_allclose(triage_on_ray, triage_here, atol=1e-3)
    assert kept_on_ray == kept_here



def test_a_pool_with_more_workers_than_the_cluster_can_place_still_finishes(cluster):
    """Three one-CPU workers on a two-CPU cluster: the third never starts, and the units the
    pool would have queued on it run on the workers that did."""
    import operator

    pool = RayPool(functools.partial(int, 7), RayConfig(address="local", workers=3))  # each worker's state: 7
    try:
        results = dict(pool.imap_unordered(operator.mul, range(12)))
        assert pool.starting  # the worker the cluster has no CPU for
    finally:
        pool.close()
    assert results == {i: 7 * i for i in range(12)}
