"""Measure every attack and detector on each family model of the demo world (docs/MEASUREMENTS.md).

    python scripts/calibrate_criterion.py scan --model sdxl --per-bucket 40 --nulls 64   # first: the extraction scan
    python scripts/measure_families.py --family sdxl [--paper-timesteps]
    python scripts/measure_families.py --family sd3 --timesteps 400,500,600 --timesteps 700,800,900   # noise levels compared
    python scripts/measure_families.py --family ddpm --timesteps 50,100,200   # unconditional: membership and extraction

For one family model (``scanner.demo.FAMILY_MODELS``):

- membership inference, ``memscan mia eval`` on the demo's labelled sets with every registered
  attack: AUC and TPR at 1% FPR overall and AUC per duplication bucket (members of the bucket
  against all evaluation non-members), stored in ``runs/families-<family>.duckdb``;
- with ``--paper-timesteps`` also loss and CLiD at the CLiD paper's timesteps for Stable
  Diffusion (440, 450, 460) against memscan's (100, 200, 300), and at each ``--timesteps`` set
  given (for a flow model the noise levels are sigma x 1000);
- for an unconditional model (no prompt), extraction instead of triage: a scan at its defaults
  matching every generation, scored against the world's truth (``score_unconditional``);
- triage: each detector's AUC at separating the prompts the family's extraction scan flagged
  (``runs/criterion-<family>-g5.duckdb``, written by ``calibrate_criterion.py scan``) from the
  other audit prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

RUNS = Path("runs")


def membership(family: str, model, embedder, paper_timesteps: bool, extra_timesteps: list[str]) -> None:
    from scanner import demo as demo_world
    from scanner.mia.attacks import ATTACKS
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import LabelledItem, run_mia_eval
    from scanner.models.base import LABEL, TEXT
    from scanner.store import Store

    condition = "shape" if LABEL in model.capabilities else "caption"  # the demo's class-conditional model: its class
    items = [LabelledItem(r["item_id"], r[condition], demo_world.decode_png(r["image_png"]), r["dup_count"] > 0,
                          demo_world.bucket_of(r["dup_count"])) for r in demo_world.membership_items()]
    protocols = {"memscan's (100, 200, 300)": NoiseProtocol(timesteps=(100, 200, 300))}
    if paper_timesteps:
        protocols["the CLiD paper's (440, 450, 460)"] = NoiseProtocol(timesteps=(440, 450, 460))
    for text in extra_timesteps:
        timesteps = tuple(int(t) for t in text.split(","))
        protocols[f"{timesteps}"] = NoiseProtocol(timesteps=timesteps)
    with Store(RUNS / f"families-{family}.duckdb") as store:
        for label, protocol in protocols.items():
            # the reference attacks need a fine-tune's base: none here (scripts/measure_finetune.py measures them)
            # an unconditional model runs only the attacks that need no prompt
            everything = [name for name, attack in ATTACKS.items() if not attack.reference
                          and (TEXT in model.capabilities or not attack.text)]
            attacks = everything if label.startswith("memscan") else [a for a in ("loss", "clid_th", "clid_vec") if a in everything]
            _, results, per_bucket = run_mia_eval(store, model, items, attacks, protocol, embedder=embedder)
            print(f"\n{family}, timesteps {label}: attack | AUC | TPR@1%FPR | " + " | ".join(
                f"AUC {b}" for b in demo_world.BUCKETS[:-1]))
            for attack, result in results.items():
                buckets = {b["bucket"]: b["auc"] for b in per_bucket if b["attack"] == attack}
                print(f"| {attack} | {result.auc:.3f} | {result.tpr_at_1_fpr:.2f} | "
                      + " | ".join(f"{buckets.get(b, float('nan')):.3f}" for b in demo_world.BUCKETS[:-1]) + " |", flush=True)


def triage(family: str, model) -> None:
    from scanner.calibration import NULL_SOURCE
    from scanner.mia import metrics
    from scanner.mia.attacks import DETECTORS
    from scanner.mia.triage import scores_on_pool
    from scanner.store import Store

    db = RUNS / f"criterion-{family}-g5.duckdb"
    if not db.exists():
        print(f"\n{family}: no extraction scan at {db}; run calibrate_criterion.py scan --model {family} first")
        return
    with Store(db, read_only=True) as store:
        run_id = store.execute("SELECT run_id FROM runs WHERE kind = 'calibration' ORDER BY started_at DESC LIMIT 1")[0][0]
        rows = store.execute("SELECT p.text, EXISTS (SELECT 1 FROM candidates c WHERE c.run_id = p.run_id AND "
                             "c.prompt_id = p.prompt_id) FROM prompts p WHERE p.run_id = ? AND p.source IS DISTINCT FROM ? "
                             "ORDER BY p.prompt_id", [run_id, NULL_SOURCE])
    texts, flagged = [r[0] for r in rows], np.array([bool(r[1]) for r in rows])
    print(f"\n{family}: triage AUC at separating the {flagged.sum()} flagged of {len(texts)} audit prompts")
    for detector in DETECTORS:
        scores = scores_on_pool(model, texts, detector, seeds=(0, 1, 2, 3), num_inference_steps=20, guidance_scale=5.0)
        print(f"| {detector} | {metrics.roc_auc(scores, flagged):.3f} |", flush=True)


def unconditional_extraction(family: str, model, embedder, seeds: int | None, guidance: float | None) -> None:
    """A model without text prompts: a scan at its defaults (every class of a class-conditional
    model; every generation matched against the demo index), scored against the world's truth:
    which training images its generations reproduce (``scanner.demo.evaluate``), which of them were judged
    extracted, and the verdict's precision."""
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.evaluate import score_extraction, score_unconditional
    from scanner.demo.pipeline import demo_index
    from scanner.scan import run_scan, unconditional_prompts
    from scanner.store import Store

    index = demo_index(embedder, Path("indexes"), RUNS)
    config = ScanConfig(sampling=SamplingConfig(samples_per_prompt=seeds, guidance_scale=guidance, batch_size=64))
    with Store(RUNS / f"families-{family}-extraction.duckdb") as store:
        result = run_scan(store, model, unconditional_prompts(model), config, show_progress=False, embedder=embedder, index=index)
        truth, verdicts = score_unconditional(store, result.run_id), score_extraction(store, result.run_id)
    print(f"\n{family}: guidance {config.sampling.for_model(model).guidance_scale:g}, {truth.generations} generations; training images reproduced (found extracted) per bucket: "
          + ", ".join(f"{bucket} {found[0]} ({found[1]})" for bucket, found in truth.by_bucket().items()))
    duplicated = sum(found[0] for bucket, found in truth.by_bucket().items() if bucket != "x1")
    print(f"recall {truth.recall:.2f} of {duplicated} duplicated images reproduced; extracted verdicts {verdicts.judged}: "
          f"{verdicts.correct} right, {verdicts.wrong} wrong, {verdicts.ambiguous} ambiguous (precision {verdicts.precision:.2f}); "
          f"generations per reproduced image: {sorted(truth.reproduced.values(), reverse=True)}", flush=True)


def main() -> None:
    from scanner import demo as demo_world
    from scanner.config import FeatureConfig
    from scanner.models.base import TEXT
    from scanner.models.loading import load_embedder
    from scanner.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(demo_world.FAMILY_MODELS), required=True)
    parser.add_argument("--paper-timesteps", action="store_true")
    parser.add_argument("--timesteps", action="append", default=[], help="another set of loss timesteps, T,T,T (repeatable)")
    parser.add_argument("--skip", choices=["membership", "triage", "extraction"], action="append", default=[])
    parser.add_argument("--seeds", type=int, help="an unconditional model's seeds, per class for a class-conditional one "
                                                  "(default: the family's)")
    parser.add_argument("--guidance", type=float, help="a class-conditional model's guidance scale (default: the family's)")
    args = parser.parse_args()
    model = load_model(demo_world.FAMILY_MODELS[args.family])
    embedder = load_embedder(FeatureConfig())
    if "membership" not in args.skip:
        membership(args.family, model, embedder, args.paper_timesteps, args.timesteps)
    prompted = TEXT in model.capabilities
    if "triage" not in args.skip and prompted:  # the detectors work through a prompt
        triage(args.family, model)
    if "extraction" not in args.skip and not prompted:  # a prompted family's extraction: calibrate_criterion.py
        unconditional_extraction(args.family, model, embedder, args.seeds, args.guidance)


if __name__ == "__main__":
    main()
