"""The generate stage on a scripted model: failures are rows, not crashes; degenerate images
never cluster; resuming skips what is stored."""

import numpy as np

from scanner import cluster
from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
from scanner.distributed import LocalPool
from scanner.generate import Prompt, SamplingJob, plan_units, record_prompts, run_generation, stored_work
from scanner.models.loading import WorkerModels
from scanner.store import Store


class ScriptedModel:
    """Stands in for a diffusion model: each (prompt, seed) maps to a fixed image."""

    model_ref, model_hash, resolution, scheduler_name, precision = "scripted", "f" * 64, 32, "scripted", "cpu-float32"
    failure_reasons = {}

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, seeds, num_inference_steps, guidance_scale, few_step=False):
        self.calls += len(prompts)
        images = []
        for prompt, seed in zip(prompts, seeds):
            rng = np.random.default_rng(seed if "memorized" not in prompt else 0)
            image = np.kron(rng.random((4, 4, 3)), np.ones((8, 8, 1))).astype(np.float32)
            if "black" in prompt:
                image[:] = 0.0
            if "broken" in prompt and seed == 3:
                image[0, 0, 0] = np.nan
            images.append(image)
        return np.stack(images)


def test_non_finite_and_degenerate_generations(tmp_path):
    prompts = [Prompt.from_text(t) for t in ("a broken prompt", "a black prompt", "a memorized prompt", "a varied prompt")]
    sampling = SamplingConfig(samples_per_prompt=6, batch_size=5, num_inference_steps=4, guidance_scale=5.0)
    model = ScriptedModel()
    with Store(tmp_path / "scan.duckdb") as store:
        record_prompts(store, "r1", prompts)
        job = SamplingJob("r1", model.model_hash, model.precision, sampling, str(store.files_dir), thumbnail_size=64)
        stats = run_generation(store, job, prompts, LocalPool(WorkerModels(model)))
        assert stats["generated"] == 24
        failed = store.execute("SELECT p.text, g.seed, g.error, g.image_path FROM generations g "
                               "JOIN prompts p USING (run_id, prompt_id) WHERE g.status = 'failed'")
        assert failed == [("a broken prompt", 3, "non-finite pixels in the generated image", None)]
        assert store.execute("SELECT count(*) FROM generations g JOIN prompts p USING (run_id, prompt_id) "
                             "WHERE p.text = 'a black prompt' AND g.degenerate") == [(6,)]
        counts = cluster.cluster_run(store, "r1", ClusterConfig(threshold=0.05, min_clique=4))
        flagged = store.execute("SELECT p.text, c.score FROM candidates c JOIN prompts p USING (run_id, prompt_id)")
        assert flagged == [("a memorized prompt", 1.0)]  # the black images never form a cluster
        assert counts["candidates"] == 1
        # a second pass samples nothing: every (prompt, seed) is stored
        again = run_generation(store, job, prompts, LocalPool(WorkerModels(model)))
        assert again["generated"] == 0 and model.calls == 24 and store.count("generations") == 24
        # a lost row is regenerated with the whole fixed batch it belongs to; only it is added
        store.execute("DELETE FROM generations WHERE seed = 4 AND prompt_id = ?", [prompts[1].prompt_id])
        units = plan_units(prompts, sampling, stored_work(store, "r1"))
        assert [[(w.prompt.text, w.seed) for w in u.items] for u in units] == \
            [[("a black prompt", 4), ("a black prompt", 5)] + [("a memorized prompt", s) for s in range(3)]]
        again = run_generation(store, job, prompts, LocalPool(WorkerModels(model)))
        assert again["generated"] == 1 and model.calls == 29 and store.count("generations") == 24


def test_a_worker_with_other_weights_or_an_unshared_files_folder_stops_the_scan(tmp_path):
    import pytest

    from scanner.errors import MemscanError

    prompts = [Prompt.from_text("a varied prompt")]
    sampling = SamplingConfig(samples_per_prompt=2, batch_size=2, num_inference_steps=4, guidance_scale=5.0)
    with Store(tmp_path / "scan.duckdb") as store:
        other_weights = SamplingJob("r1", "0" * 64, "cpu-float32", sampling, str(store.files_dir), thumbnail_size=64)
        with pytest.raises(MemscanError, match="different weights"):
            run_generation(store, other_weights, prompts, LocalPool(WorkerModels(ScriptedModel())))
        # a GPU worker (fp16) in a run planned in fp32 would store other images under the same keys
        other_precision = SamplingJob("r1", ScriptedModel.model_hash, "cuda-float16", sampling, str(store.files_dir),
                                      thumbnail_size=64)
        with pytest.raises(MemscanError, match="samples in cpu-float32 but the run is in cuda-float16"):
            run_generation(store, other_precision, prompts, LocalPool(WorkerModels(ScriptedModel())))
        # the worker writes images where the driver does not look (another node's local disk)
        elsewhere = SamplingJob("r1", ScriptedModel.model_hash, "cpu-float32", sampling, str(tmp_path / "node-local"), thumbnail_size=64)
        with pytest.raises(MemscanError, match="cannot see it"):
            run_generation(store, elsewhere, prompts, LocalPool(WorkerModels(ScriptedModel())))
        assert store.count("generations") == 0  # nothing ingested from a unit whose images are lost


def test_stopping_early_flags_the_same_prompts_from_fewer_generations_and_resumes(tmp_path):
    from scanner.scan import sample_until_settled

    prompts = [Prompt.from_text(t) for t in ("a memorized prompt", "a varied prompt", "a black prompt")]
    criterion = ClusterConfig(threshold=0.05, min_clique=8)
    model = ScriptedModel()
    flagged, drawn = {}, {}
    with Store(tmp_path / "scan.duckdb") as store:
        for run_id, stop_early in (("every-seed", False), ("early", True)):
            config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=16, batch_size=5, num_inference_steps=4,
                                                        guidance_scale=5.0, stop_early=stop_early), cluster=criterion)
            record_prompts(store, run_id, prompts)
            job = SamplingJob(run_id, model.model_hash, model.precision, config.sampling, str(store.files_dir), 64)
            sample_until_settled(store, job, prompts, LocalPool(WorkerModels(model)), config, lambda n, skip=False: None)
            cluster.cluster_run(store, run_id, criterion)
            flagged[run_id] = store.execute("SELECT prompt_id FROM candidates WHERE run_id = ?", [run_id])
            drawn[run_id] = dict(store.execute("SELECT p.text, count(*) FROM generations g JOIN prompts p "
                                               "USING (run_id, prompt_id) WHERE run_id = ? GROUP BY p.text", [run_id]))
        assert flagged["early"] == flagged["every-seed"] == [(prompts[0].prompt_id,)]
        # the memorized prompt settles at its 8th seed (a clique of 8), the varied one at its 10th (1 + 6 < 8),
        # the black one at its 9th (degenerate images never join a clique: 0 + 7 < 8)
        assert drawn["early"] == {"a memorized prompt": 8, "a varied prompt": 10, "a black prompt": 9}
        before = store.execute("SELECT generation_id, seed, image_sha256 FROM generations WHERE run_id = 'early' ORDER BY 1")
        # killed in the round of the 10th seed: that round is replayed, nothing else
        store.execute("DELETE FROM generations WHERE run_id = 'early' AND seed = 9")
        again = sample_until_settled(store, job, prompts, LocalPool(WorkerModels(model)), config, lambda n, skip=False: None)
        assert again["generated"] == 1
        assert store.execute("SELECT generation_id, seed, image_sha256 FROM generations WHERE run_id = 'early' ORDER BY 1") == before
