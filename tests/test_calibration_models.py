"""Issue 18's goal, end to end, on a model memscan's defaults were not tuned on: a calibration
model of the demo world (scanner/demo/calibration/), scanned at every default setting."""

import pytest

from scanner.calibration import criterion_statement
from scanner.config import SamplingConfig, ScanConfig
from scanner.demo import CALIBRATION_MODELS, demo_items
from scanner.demo.evaluate import score_criterion, score_extraction
from scanner.demo.pipeline import demo_index
from scanner.generate import Prompt
from scanner.models.diffusers_t2i import DiffusersT2I
from scanner.scan import run_scan
from scanner.store import Store

MODEL = "sd-short"


@pytest.mark.slow
def test_the_default_criterion_and_verdict_hold_on_a_model_they_were_not_tuned_on(tmp_path, demo_clip):
    model_dir, world = CALIBRATION_MODELS[MODEL]
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"])
               for r in demo_items(per_bucket=10)]  # every x200 and x50 item, 10 each of x10, x1, non-members
    index = demo_index(demo_clip, tmp_path / "indexes", tmp_path, world)
    with Store(tmp_path / "scan.duckdb") as store:
        result = run_scan(store, DiffusersT2I.load(model_dir, device="cpu"), prompts,
                          ScanConfig(sampling=SamplingConfig(batch_size=64)), show_progress=False, embedder=demo_clip,
                          index=index)
        criterion = score_criterion(store, result.run_id, world)
        extraction = score_extraction(store, result.run_id, world)
        statement = criterion_statement(store, result.run_id)
    assert statement.calibrated and statement.nulls == 32
    assert criterion.memorized >= 20 and criterion.recall >= 0.9
    assert criterion.unmemorized >= 10 and criterion.false_flag_rate <= 0.05
    assert extraction.judged >= 1 and extraction.precision == 1.0
    assert extraction.reproducing >= 10 and extraction.recall >= 0.9
