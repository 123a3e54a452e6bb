"""GPU checks and timings: fp16 sampling through the adapter, precision agreement, stage shares, SD-sized throughput.

Run on a machine with a CUDA GPU (``python scripts/bench_gpu.py``). Every section runs on its
own, so one failure does not hide the others, and prints one ``RESULT {json}`` line:

- ``precision``: the same demo prompts and seeds sampled on CPU in fp32, on CUDA in fp32 and on
  CUDA in fp16 (the adapter's choice on a GPU); tiled l2 and pHash distances between them, so one
  knows whether a scan's images depend on where it ran.
- ``demo_throughput``: the demo model's images/s on the GPU in fp16 at several batch sizes.
- ``stage_shares``: a demo scan on the GPU (sampling, features, clustering), the filter stages as
  a share of sampling time (issue 3's 10% target, which holds on CPU where sampling is slow).
- ``ray``: the sampling stage of a demo scan in this process and on a local Ray cluster whose one
  GPU gets one actor (``num_gpus=1``, fp16): the precision the pool reports, images/s, the
  actor's start-up, and whether the stored rows are identical.
- ``sd_shaped``: a pipeline with Stable Diffusion 1.5's architecture and random weights, saved as
  a diffusers folder and loaded through ``ModelSpec`` (the real path), timed at 512x512, 50 DDIM
  steps, guidance 7.5, fp16. Throughput does not depend on the weights' values, so this is the
  images/s that docs/SCALING.md plans with.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def report(section: str, **values) -> None:
    print("RESULT " + json.dumps({"section": section, **values}), flush=True)


def synchronized_time(function, *args, **kwargs) -> tuple[float, object]:
    import torch

    torch.cuda.synchronize()
    began = time.perf_counter()
    out = function(*args, **kwargs)
    torch.cuda.synchronize()
    return time.perf_counter() - began, out


def demo_prompts(n: int) -> list[str]:
    from scanner import demo as demo_world

    items = demo_world.demo_items()
    captions = [r["caption"] for r in items[:: max(1, len(items) // n)][:n]]
    return (captions * (n // len(captions) + 1))[:n]


def section_environment() -> None:
    import diffusers
    import torch

    report("environment", torch=torch.__version__, diffusers=diffusers.__version__, cuda=torch.version.cuda,
           device=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)))


def section_precision(n: int) -> None:
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig
    from scanner.distances import hamming, tiled_l2
    from scanner.features import perceptual_hashes, to_uint8
    from scanner.models.registry import load_model
    from scanner.models.stable_diffusion import StableDiffusion

    prompts, seeds = demo_prompts(n), list(range(n))
    cpu = load_model(demo_world.SD_MODEL, device="cpu")
    sampling = SamplingConfig().for_model(cpu)
    gpu_fp16 = load_model(demo_world.SD_MODEL, device="cuda")
    gpu_fp32 = StableDiffusion(cpu.pipeline.to("cuda"), cpu.model_ref, cpu.model_hash)
    runs = {}
    for name, model in (("cuda_fp32", gpu_fp32), ("cuda_fp16", gpu_fp16)):
        runs[name] = model.generate(prompts, seeds, sampling.num_inference_steps, sampling.guidance_scale)
    cpu_model = StableDiffusion(gpu_fp32.pipeline.to("cpu"), cpu.model_ref, cpu.model_hash)
    runs["cpu_fp32"] = cpu_model.generate(prompts, seeds, sampling.num_inference_steps, sampling.guidance_scale)
    hashes = {name: [perceptual_hashes(image)[0] for image in to_uint8(images)] for name, images in runs.items()}
    for a, b in (("cpu_fp32", "cuda_fp32"), ("cpu_fp32", "cuda_fp16"), ("cuda_fp32", "cuda_fp16")):
        distances = tiled_l2(runs[a], runs[b])
        bits = hamming(np.array(hashes[a], dtype=np.uint64), np.array(hashes[b], dtype=np.uint64))
        report("precision", pair=f"{a} vs {b}", images=n, tiled_l2_median=float(np.median(distances)),
               tiled_l2_max=float(distances.max()), phash_bits_median=float(np.median(bits)), phash_bits_max=int(bits.max()),
               bitwise_equal=int(sum(np.array_equal(x, y) for x, y in zip(runs[a], runs[b]))))


def section_demo_throughput(batches: list[int]) -> None:
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig
    from scanner.models.registry import load_model

    model = load_model(demo_world.SD_MODEL, device="cuda")
    sampling = SamplingConfig().for_model(model)
    prompts = demo_prompts(max(batches))
    model.generate(prompts[:8], list(range(8)), sampling.num_inference_steps, sampling.guidance_scale)
    for batch in batches:
        seconds, _ = synchronized_time(model.generate, prompts[:batch], list(range(batch)),
                                       sampling.num_inference_steps, sampling.guidance_scale)
        report("demo_throughput", batch=batch, steps=sampling.num_inference_steps, dtype=str(model.dtype),
               seconds=round(seconds, 3), images_per_s=round(batch / seconds, 1))


def section_stage_shares(n_prompts: int) -> None:
    from bench_cluster import bench_stage_shares

    bench_stage_shares(n_prompts)


def section_ray(n_prompts: int) -> None:
    import ray

    from bench_ray import ROWS, sample
    from scanner import demo as demo_world
    from scanner.config import FeatureConfig, RayConfig, SamplingConfig, ScanConfig
    from scanner.distributed import LocalPool, RayPool
    from scanner.generate import Prompt, SamplingJob, record_prompts
    from scanner.models.loading import ModelSpec, WorkerModels, load_embedder, load_worker_models, pool_precision
    from scanner.scan import run_id_for
    from scanner.store import Store

    prompts = [Prompt.from_text(text) for text in dict.fromkeys(demo_prompts(n_prompts))]
    spec = ModelSpec.of(demo_world.SD_MODEL)
    local = LocalPool(WorkerModels(spec.load(), load_embedder(FeatureConfig())))
    sampling = SamplingConfig(samples_per_prompt=16, batch_size=64).for_model(local.state.model)
    began = time.perf_counter()
    pool = RayPool(functools.partial(load_worker_models, spec, FeatureConfig()), RayConfig(address="local"))
    precisions = {"local": pool_precision(local), "ray": pool_precision(pool)}
    start_up = time.perf_counter() - began
    model = local.state.model
    run_id = run_id_for(model, precisions["local"], prompts, ScanConfig(sampling=sampling), "bench")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, runner in (("local", local), ("ray", pool), ("local_again", local)):
            with Store(Path(folder) / f"{name}.duckdb") as store:
                record_prompts(store, run_id, prompts)
                job = SamplingJob(run_id, model.model_hash, precisions["local"], sampling, str(store.files_dir), 64)
                seconds, generated = sample(store, job, prompts, runner)
                results[name] = (seconds, generated, store.execute(ROWS))
    pool.close()
    ray.shutdown()
    baseline = results["local"][2]
    for name, (seconds, generated, rows) in results.items():
        report("ray", setup=name, precision=precisions["ray" if name == "ray" else "local"], images=generated,
               seconds=round(seconds, 2), images_per_s=round(generated / seconds, 1),
               start_up_s=round(start_up, 1) if name == "ray" else None,
               rows_differing_from_local=sum(a != b for a, b in zip(rows, baseline)) + abs(len(rows) - len(baseline)))


def section_sd_shaped(batches: list[int], steps: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from scanner import demo as demo_world
    from scanner.models.loading import ModelSpec

    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        with torch.device("cuda"):
            unet = UNet2DConditionModel(**SD15_UNET).half()
            vae = AutoencoderKL(**SD15_VAE).half()
            text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).half()
        tokenizer = CLIPTokenizer.from_pretrained(demo_world.SD_MODEL / "tokenizer", local_files_only=True)
        scheduler = DDIMScheduler.from_pretrained(demo_world.SD_MODEL / "scheduler", local_files_only=True)
        StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
        del unet, vae, text_encoder
        built = time.perf_counter() - began
        began = time.perf_counter()
        model = ModelSpec.of(folder, device="cuda").load()
        loaded = time.perf_counter() - began
        report("sd_shaped_setup", unet_parameters=sum(p.numel() for p in model.pipeline.unet.parameters()),
               resolution=model.resolution, dtype=str(model.dtype), build_and_save_s=round(built, 1), load_s=round(loaded, 1))
        prompts = demo_prompts(max(batches))
        model.generate(prompts[:2], [0, 1], 3, 7.5)
        for batch in batches:
            seconds, images = synchronized_time(model.generate, prompts[:batch], list(range(batch)), steps, 7.5)
            report("sd_shaped", batch=batch, steps=steps, guidance=7.5, seconds=round(seconds, 2),
                   images_per_s=round(batch / seconds, 2), seconds_per_image=round(seconds / batch, 3),
                   finite=bool(np.isfinite(images).all()),
                   peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="environment,precision,demo_throughput,stage_shares,ray,sd_shaped")
    parser.add_argument("--precision-images", type=int, default=32)
    parser.add_argument("--demo-batches", default="16,64,256,1024")
    parser.add_argument("--stage-prompts", type=int, default=40)
    parser.add_argument("--ray-prompts", type=int, default=80)
    parser.add_argument("--sd-batches", default="1,8,32")
    parser.add_argument("--sd-steps", type=int, default=50)
    args = parser.parse_args()
    sections = {
        "environment": section_environment,
        "precision": lambda: section_precision(args.precision_images),
        "demo_throughput": lambda: section_demo_throughput([int(b) for b in args.demo_batches.split(",")]),
        "stage_shares": lambda: section_stage_shares(args.stage_prompts),
        "ray": lambda: section_ray(args.ray_prompts),
        "sd_shaped": lambda: section_sd_shaped([int(b) for b in args.sd_batches.split(",")], args.sd_steps),
    }
    for name in args.sections.split(","):
        began = time.perf_counter()
        try:
            sections[name]()
        except Exception:  # a benchmark: report the failure and go on to the next section
            traceback.print_exc()
            report(name, failed=True)
        print(f"[{name}: {time.perf_counter() - began:.1f}s]", flush=True)


if __name__ == "__main__":
    main()
