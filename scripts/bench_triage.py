"""Benchmark: extraction recall against sampling budget, with and without triage by each detector.

    python scripts/bench_triage.py [--samples-per-prompt 16] [--min-clique 8] [--x1 45] [--nonmembers 60]
                                   [--agreement-guidance 1,1.5,2.5,5,10]

One run on the demo world: every demo prompt is mass-sampled (the exhaustive baseline) and
scored by the triage detector; the prompts the exhaustive scan flags are the ones to find.
For each triage fraction it prints the recall reached by mass-sampling only that top fraction,
and the cost (triage + sampling) relative to exhaustive sampling; and the triage cost per prompt
as a ratio of the full sampling cost per prompt. Goal: the same recall for at most a tenth of
the cost. ``--agreement-guidance`` also ranks by seed agreement sampled at each of those guidance
scales (the detector itself uses half the scan's), ``--agreement-seeds`` with other seed counts.

Costs are given twice: mass-sampling every planned seed of a kept prompt, and stopping early
(``sampling.stop_early``: a prompt gets no more seeds once its verdict cannot change). The
early-stopping cost is counted from the exhaustive run's own images, seed by seed, with the
rule the scan applies, so both columns describe the same images and the same flagged prompts.
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
    from scanner.config import ClusterConfig, SamplingConfig, ScanConfig
    from scanner.generate import Prompt
    from scanner.mia import metrics
    from scanner.mia.attacks import DETECTORS
    from scanner.mia.detectors import seed_agreement
    from scanner.mia.triage import detector_scores
    from scanner.models.registry import load_model
    from scanner.scan import run_scan
    from scanner.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--min-clique", type=int, default=8, help="the criterion's clique size (8 of 16 by default)")
    parser.add_argument("--x1", type=int, default=45)
    parser.add_argument("--nonmembers", type=int, default=60)
    parser.add_argument("--agreement-guidance", default="", help="comma-separated guidance scales for a seed agreement sweep")
    parser.add_argument("--agreement-seeds", default="", help="comma-separated seed counts for a seed agreement sweep")
    args = parser.parse_args()

    rows = demo_world.membership_items(per_bucket=15, x1=args.x1, nonmembers=args.nonmembers)
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in rows]
    model = load_model(demo_world.SD_MODEL)
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=args.samples_per_prompt, batch_size=64).for_model(model),
                        cluster=ClusterConfig(min_clique=args.min_clique))

    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.duckdb") as store:
        result = run_scan(store, model, prompts, config, show_progress=False)
        flagged = {r[0] for r in store.execute("SELECT DISTINCT prompt_id FROM candidates WHERE run_id = ?", [result.run_id])}
        drawn = samples_when_stopping_early(store, result.run_id, prompts, config)
    sampling_seconds = result.timings["sampling_s"]
    per_prompt_sampling = sampling_seconds / len(prompts)
    print(f"{len(prompts)} prompts; exhaustive: {args.samples_per_prompt} samples each, {sampling_seconds:.1f}s, "
          f"{len(flagged)} prompts flagged")
    print(f"stopping early would draw {drawn.mean():.2f} of the {args.samples_per_prompt} seeds per prompt on average "
          f"({drawn[[p.prompt_id in flagged for p in prompts]].mean():.2f} for flagged prompts), flagging the same prompts")
    labels = np.array([p.prompt_id in flagged for p in prompts])
    steps = config.sampling.num_inference_steps
    rankers = [(detector, functools.partial(detector_scores, model, [p.text for p in prompts], detector, (0, 1, 2, 3), steps,
                                            config.sampling.guidance_scale)) for detector in DETECTORS]
    rankers += [(f"seed_agreement at guidance {g}", functools.partial(seed_agreement, model, [p.text for p in prompts],
                                                                      (0, 1, 2, 3), steps, float(g)))
                for g in args.agreement_guidance.split(",") if g]
    rankers += [(f"seed_agreement with {n} seeds", functools.partial(seed_agreement, model, [p.text for p in prompts],
                                                                     tuple(range(int(n))), steps, config.sampling.guidance_scale / 2))
                for n in args.agreement_seeds.split(",") if n]
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

        def cost(fraction: float, stop_early: bool = False) -> float:
            top = order[: math.ceil(fraction * len(prompts))]
            share = drawn[top].sum() / (args.samples_per_prompt * len(prompts)) if stop_early else len(top) / len(prompts)
            return triage_seconds / sampling_seconds + share

        def best_within(budget: float, stop_early: bool) -> float:
            """The largest fraction whose cost stays within ``budget``."""
            return max([f for f in np.arange(0, 1001) / 1000 if cost(f, stop_early) <= budget], default=0.0)

        print(f"{'fraction':>8} {'recall':>7} {'cost vs exhaustive':>19} {'stopping early':>15}")
        for fraction in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
            print(f"{fraction:8.2f} {recall(fraction):7.2f} {cost(fraction):19.3f} {cost(fraction, True):15.3f}")
        needed = next(f for f in np.arange(1, 1001) / 1000 if recall(f) == 1.0)
        for stop_early in (False, True):
            within = best_within(0.1, stop_early)
            print(f"{'stopping early' if stop_early else 'every seed'}: at the goal's cost (0.10 of exhaustive: the top "
                  f"{within:.3f} of the prompts) recall {recall(within):.2f}; exhaustive recall reached at fraction "
                  f"{needed:.3f}: cost {cost(needed, stop_early):.3f} of exhaustive sampling")
        print(f"(the demo's share of flagged prompts, {len(flagged) / len(prompts):.3f}, bounds the cost from below)")


def samples_when_stopping_early(store, run_id: str, prompts, config) -> "np.ndarray":
    """Per prompt, the seeds a scan with ``stop_early`` draws, replayed on the exhaustive run's rows
    with the scan's own rule (``cluster.open_prompts`` reads only the seeds drawn so far)."""
    from scanner.cluster import open_prompts, run_criterion, verdict_checkpoints

    planned = config.sampling.samples_per_prompt
    drawn, still_open = {}, [p.prompt_id for p in prompts]
    criterion = run_criterion(store, run_id, config.cluster)  # after the first round a scan judges by the full plan's
    for checkpoint in verdict_checkpoints(planned, config.cluster.min_clique, first=config.cluster.seeds_before_judging):
        now_open = open_prompts(store, run_id, still_open, config.sampling.seed_base, checkpoint, planned, config.cluster,
                                criterion)
        drawn.update({prompt_id: checkpoint for prompt_id in still_open if prompt_id not in now_open})
        still_open = [prompt_id for prompt_id in still_open if prompt_id in now_open]
    return np.array([drawn.get(p.prompt_id, planned) for p in prompts])


if __name__ == "__main__":
    main()
