"""Benchmark: extraction recall against sampling budget, with and without triage by each detector.

    python scripts/bench_triage.py [--samples-per-prompt 16] [--x1 45] [--nonmembers 60]
                                   [--agreement-guidance 1,1.5,2.5,5,10]

One run on the demo world: every demo prompt is mass-sampled (the exhaustive baseline) and
scored by the triage detector; the prompts the exhaustive scan flags are the ones to find.
For each triage fraction it prints the recall reached by mass-sampling only that top fraction,
and the cost (triage + sampling) relative to exhaustive sampling; and the triage cost per prompt
as a ratio of the full sampling cost per prompt. Goal: the same recall for at most a tenth of
the cost. ``--agreement-guidance`` also ranks by seed agreement sampled at each of those guidance
scales (the detector itself uses half the scan's).
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.mia import metrics
    from scanner.mia.triage import DETECTORS, detector_scores, seed_agreement
    from scanner.models.diffusers_t2i import DiffusersT2I
    from scanner.scan import run_scan
    from scanner.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--x1", type=int, default=45)
    parser.add_argument("--nonmembers", type=int, default=60)
    parser.add_argument("--agreement-guidance", default="", help="comma-separated guidance scales for a seed agreement sweep")
    args = parser.parse_args()

    rows = demo_world.membership_items(per_bucket=15, x1=args.x1, nonmembers=args.nonmembers)
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in rows]
    model = DiffusersT2I.load(demo_world.SD_MODEL)
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=args.samples_per_prompt, batch_size=64))

    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.duckdb") as store:
        result = run_scan(store, model, prompts, config, show_progress=False)
        flagged = {r[0] for r in store.execute("SELECT DISTINCT prompt_id FROM candidates WHERE run_id = ?", [result.run_id])}
    sampling_seconds = result.timings["sampling_s"]
    per_prompt_sampling = sampling_seconds / len(prompts)
    print(f"{len(prompts)} prompts; exhaustive: {args.samples_per_prompt} samples each, {sampling_seconds:.1f}s, "
          f"{len(flagged)} prompts flagged")
    labels = np.array([p.prompt_id in flagged for p in prompts])
    steps = config.sampling.num_inference_steps
    rankers = [(detector, functools.partial(detector_scores, model, [p.text for p in prompts], detector, (0, 1, 2, 3), steps,
                                            config.sampling.guidance_scale)) for detector in DETECTORS]
    rankers += [(f"seed_agreement at guidance {g}", functools.partial(seed_agreement, model, [p.text for p in prompts],
                                                                      (0, 1), steps, float(g)))
                for g in args.agreement_guidance.split(",") if g]
    for name, ranker in rankers:
        start = time.perf_counter()
        scores = ranker()
        triage_seconds = time.perf_counter() - start
        per_prompt_triage = triage_seconds / len(prompts)
        print(f"\n{name}: AUC {metrics.roc_auc(scores, labels):.3f} at telling flagged prompts from the others; "
              f"cost per prompt {per_prompt_triage * 1000:.1f} ms = {per_prompt_triage / per_prompt_sampling:.3f} "
              f"of the full sampling cost per prompt ({per_prompt_sampling * 1000:.1f} ms)")
        order = np.argsort(-scores, kind="stable")

        def recall(fraction: float) -> float:
            top = {prompts[i].prompt_id for i in order[: math.ceil(fraction * len(prompts))]}
            return len(top & flagged) / max(1, len(flagged))

        def cost(fraction: float) -> float:
            return (triage_seconds + fraction * sampling_seconds) / sampling_seconds

        print(f"{'fraction':>8} {'recall':>7} {'cost vs exhaustive':>19}")
        for fraction in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
            print(f"{fraction:8.2f} {recall(fraction):7.2f} {cost(fraction):19.3f}")
        within_budget = max(0.0, 0.1 - triage_seconds / sampling_seconds)
        needed = next(f for f in np.linspace(0.01, 1, 100) if recall(f) == 1.0)
        print(f"at the goal's cost (0.10 of exhaustive: the top {within_budget:.3f} of the prompts): recall {recall(within_budget):.2f}; "
              f"exhaustive recall reached at fraction {needed:.2f}: cost {cost(needed):.3f} of exhaustive sampling "
              f"(the demo's share of flagged prompts, {len(flagged) / len(prompts):.3f}, bounds it from below)")


if __name__ == "__main__":
    main()
