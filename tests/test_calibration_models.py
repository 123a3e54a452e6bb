"""Issue 18 end to end, on a model trained after every default of memscan but the grey view (session 31,
chosen looking at all fourteen calibration models) was chosen: the calibration model sd-reseeded-64 (a
world of its own drawn at 64 pixels, its own autoencoder; scanner/demo/calibration/), scanned at every
default setting but the seeds per prompt (16, half the default, to fit CI), scored against its world's
ground truth."""

import dataclasses

import pytest

from scanner import cluster
from scanner.calibration import criterion_statement
from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
from scanner.demo import CALIBRATION_MODELS, demo_items
from scanner.demo.evaluate import score_criterion, score_extraction
from scanner.demo.pipeline import demo_index
from scanner.generate import Prompt
from scanner.models.registry import load_model
from scanner.scan import run_scan
from scanner.store import Store

MODEL = "sd-reseeded-64"


@pytest.mark.slow
def test_the_calibrated_defaults_find_what_the_demo_tuned_threshold_misses(tmp_path, demo_clip):
    """Measured at full scale (docs/CALIBRATION.md, sessions 26 and 31, by the truth that counts an item memorized
    when a quarter of its generations reproduce its particular drawing): at the default 32 seeds the
    criterion flags 25 of 27 memorized items and 7 of 320 ordinary prompts, `extracted` 35 right and none
    wrong of 74 verdicts, 35 of 35 near-copies. At this scale (measured, session 26; with the grey view,
    session 30): 19 of 23 flagged (18 without it) against 1 by the demo-tuned threshold, none of 12 ordinary
    prompts, `extracted` 17 right and none wrong of 29, 17 of 17 near-copies. Issue 18's recall goal (0.9)
    is set at 32 seeds; CI affords 16."""
    model_dir, world = CALIBRATION_MODELS[MODEL]
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"])
               for r in demo_items(per_bucket=6, world=world)]  # every x200 and x50 item, 6 each of x10, x1 and non-members
    index = demo_index(demo_clip, tmp_path / "indexes", tmp_path, world, name="demo-world-reseeded-64")
    # 16 seeds per prompt, half the default, to fit CI: the measurements behind these bounds were taken at 16
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=16, batch_size=64), cluster=ClusterConfig(null_prompts=16))
    with Store(tmp_path / "scan.duckdb") as store:
        result = run_scan(store, load_model(model_dir, device="cpu"), prompts, config, show_progress=False,
                          embedder=demo_clip, index=index)
        calibrated = score_criterion(store, result.run_id, world)
        extraction = score_extraction(store, result.run_id, world)
        statement = criterion_statement(store, result.run_id)
        cluster.cluster_run(store, result.run_id, dataclasses.replace(config.cluster, threshold=0.02, min_clique=8))
        demo_tuned = score_criterion(store, result.run_id, world)
    print(calibrated, extraction, demo_tuned, statement)
    assert statement.calibrated and statement.nulls == 16
    assert calibrated.memorized >= 16 and calibrated.recall >= 0.75 and calibrated.recall > demo_tuned.recall + 0.5
    # no false flag among the 12 ordinary prompts here (measured; 4 of 80 at full scale): issue 18's 5% of 12 is none
    assert calibrated.unmemorized >= 8 and calibrated.unmemorized_flagged == 0
    assert extraction.judged >= 5 and extraction.precision == 1.0 and extraction.recall >= 0.9
