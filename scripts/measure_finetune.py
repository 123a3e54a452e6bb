"""Measure the fine-tune audit on the demo LoRA (issue 20), side by side in one run.

    python scripts/measure_finetune.py [--samples-per-prompt 16] [--guidance-weight 3] [--skip extraction]

1. Membership of the private items (members, by how often they were trained on) against the
   control items (never trained on): loss, CLiD, and the reference attacks that subtract the base
   model's measurement (loss_ref, clid_ref); AUC and TPR at 1% FPR on the evaluation half.
2. Dataset inference on the private x1 items against the controls, without and with the base as
   the reference model.
3. Extraction recall of the private items at equal cost in denoiser passes: plain sampling with
   classifier-free guidance (two passes a step) against FineXtract's model guidance from the base
   without classifier-free guidance (two passes a step: the fine-tune's and the base's), and model
   guidance on top of classifier-free guidance (four passes a step) for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


def main() -> None:
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.finetune import finetune_index, finetune_labelled, finetune_prompts, score_finetune_run
    from scanner.mia.dataset import run_dataset_inference
    from scanner.mia.denoising import NoiseProtocol
    from scanner.mia.evaluate import run_mia_eval
    from scanner.models.loading import ModelSpec, load_embedder
    from scanner.scan import run_scan
    from scanner.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-prompt", type=int, default=16)
    parser.add_argument("--guidance-weight", type=float, default=3.0, help="model guidance W (FineXtract's runs use 3)")
    parser.add_argument("--skip", action="append", default=[], choices=["membership", "extraction"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="memscan-finetune-")))
    args = parser.parse_args()

    spec = ModelSpec.of(demo_world.SD_MODEL, loras=[str(demo_world.FINETUNE_LORA)])
    fine_tune, base = spec.load(), ModelSpec.of(demo_world.SD_MODEL).load()
    items = finetune_labelled()
    store = Store(args.work / "measure.duckdb")
    if "membership" not in args.skip:
        began = time.time()
        attacks = ["loss", "clid_th", "clid_vec", "loss_ref", "clid_ref"]
        for seed in (0, 1, 2):
            _, results, per_bucket = run_mia_eval(store, fine_tune, items, attacks, NoiseProtocol(seed=seed), seed,
                                                  reference_model=base)
            print(f"split {seed}: " + "  ".join(f"{a} AUC {r.auc:.3f} TPR@1% {r.tpr_at_1_fpr:.2f}" for a, r in results.items()))
            print("    per group AUC: " + "  ".join(f"{b['attack']}:{b['bucket']} {b['auc']:.2f}" for b in per_bucket))
        x1 = [i for i in items if i.bucket == "x1" or not i.member]
        for reference in (None, base):
            _, verdict = run_dataset_inference(store, fine_tune, x1, pool=None, reference_model=reference)
            print(f"dataset inference, {sum(i.member for i in x1)} private x1 vs {sum(not i.member for i in x1)} control, "
                  f"{'with' if reference else 'without'} the base as reference: p = {verdict.p_value:.2e}, "
                  f"items needed {verdict.items_needed}")
        print(f"membership: {time.time() - began:.0f}s")
    if "extraction" not in args.skip:
        embedder = load_embedder(ScanConfig().features)
        index = finetune_index(embedder, args.work / "indexes", args.work)
        prompts = finetune_prompts()
        base_config = ScanConfig(model=str(demo_world.SD_MODEL), loras=(str(demo_world.FINETUNE_LORA),),
                                 reference_model=str(demo_world.SD_MODEL),
                                 sampling=SamplingConfig(samples_per_prompt=args.samples_per_prompt, batch_size=64))
        w = args.guidance_weight
        for label, guidance, weight in (("plain, CFG 5 (2 passes/step)", 5.0, 0.0),
                                        (f"model guidance W={w:g}, no CFG (2 passes/step)", 1.0, w),
                                        (f"model guidance W={w:g}, CFG 5 (4 passes/step)", 5.0, w)):
            config = dataclasses.replace(base_config, sampling=dataclasses.replace(
                base_config.sampling, guidance_scale=guidance, reference_guidance=weight))
            model = fine_tune.guided_by(base, weight) if weight else fine_tune
            began = time.time()
            result = run_scan(store, model, prompts, config, show_progress=False, embedder=embedder, index=index)
            scores = score_finetune_run(store, result.run_id)
            print(f"{label}: " + "; ".join(f"{s.group}: flagged {s.flagged}/{s.prompts}, extracted {s.extracted}"
                                           for s in scores) + f"  ({time.time() - began:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
