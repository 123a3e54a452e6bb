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

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # a CPU dry run times alike
    sync()
    began = time.perf_counter()
    out = function(*args, **kwargs)
    sync()
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

    from scanner.models.loading import ModelSpec

    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        build_shaped("sd15", folder)
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


SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = dict(SD15_TEXT)
SDXL_TEXT_2 = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def build_shaped(family: str, folder: str, device: str = "cuda", configs: dict | None = None) -> None:
    """A pipeline with SD 1.5's or SDXL's architecture and random fp16 weights, saved as a diffusers
    folder (loaded back through ``ModelSpec``: the real path). Throughput does not depend on the
    weights' values. ``configs`` replaces the architecture (a CPU dry run uses tiny ones)."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from scanner import demo as demo_world

    shapes = configs or ({"unet": SD15_UNET, "vae": SD15_VAE, "text": SD15_TEXT} if family == "sd15" else
                         {"unet": SDXL_UNET, "vae": SDXL_VAE, "text": SDXL_TEXT, "text_2": SDXL_TEXT_2})
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = CLIPTokenizer.from_pretrained(demo_world.SD_MODEL / "tokenizer", local_files_only=True)
    with torch.device(device):
        unet = UNet2DConditionModel(**shapes["unet"]).to(dtype)
        vae = AutoencoderKL(**shapes["vae"]).to(dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig(**shapes["text"])).to(dtype)
        if family == "sd15":
            scheduler = DDIMScheduler.from_pretrained(demo_world.SD_MODEL / "scheduler", local_files_only=True)
            pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                               scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                               requires_safety_checker=False)
        else:
            scheduler = EulerDiscreteScheduler.from_pretrained(demo_world.FAMILY_MODELS["sdxl"] / "scheduler",
                                                               local_files_only=True)
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**shapes["text_2"])).to(dtype)
            pipeline = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                                 tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(folder)


def bare_generate(model, prompts: list[str], seeds: list[int], steps: int, guidance: float):
    """The bare diffusers call memscan's ``generate`` makes, for the side-by-side ratio."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        return model.pipeline(prompt=prompts, generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                              height=model.resolution, width=model.resolution, output_type="np").images


def section_families(batch: int, steps: int, device: str = "cuda", configs: dict | None = None) -> None:
    """Issue 19's GPU measurement: SD 1.5 and SDXL shapes in fp16 (512 and 1024 pixels), memscan's
    sampling against the bare pipeline call, and what ``torch.compile`` of the UNet buys."""
    import torch

    from scanner.models.loading import ModelSpec

    for family, guidance in (("sd15", 7.5), ("sdxl", 5.0)):
        with tempfile.TemporaryDirectory() as folder:
            build_shaped(family, folder, device, (configs or {}).get(family))
            model = ModelSpec.of(folder, device=device).load()
            prompts, seeds = demo_prompts(batch), list(range(batch))
            model.generate(prompts[:1], [0], 2, guidance)  # warm-up
            bare_s, _ = synchronized_time(bare_generate, model, prompts, seeds, steps, guidance)
            ours_s, images = synchronized_time(model.generate, prompts, seeds, steps, guidance)
            report("families", family=family, resolution=model.resolution, batch=batch, steps=steps,
                   bare_s=round(bare_s, 2), memscan_s=round(ours_s, 2), ratio=round(bare_s / ours_s, 3),
                   finite=bool(np.isfinite(images).all()))
            model.pipeline.unet = torch.compile(model.pipeline.unet)
            first_s, _ = synchronized_time(model.generate, prompts, seeds, steps, guidance)
            compiled_s, compiled = synchronized_time(model.generate, prompts, seeds, steps, guidance)
            report("families_compile", family=family, first_call_s=round(first_s, 2), steady_s=round(compiled_s, 2),
                   eager_s=round(ours_s, 2), speedup=round(ours_s / compiled_s, 3),
                   max_pixel_difference=float(np.abs(compiled - images).max()))
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="environment,precision,demo_throughput,stage_shares,ray,sd_shaped,families")
    parser.add_argument("--precision-images", type=int, default=32)
    parser.add_argument("--demo-batches", default="16,64,256,1024")
    parser.add_argument("--stage-prompts", type=int, default=40)
    parser.add_argument("--ray-prompts", type=int, default=80)
    parser.add_argument("--sd-batches", default="1,8,32")
    parser.add_argument("--sd-steps", type=int, default=50)
    parser.add_argument("--families-batch", type=int, default=4)
    parser.add_argument("--families-steps", type=int, default=30)
    args = parser.parse_args()
    sections = {
        "environment": section_environment,
        "precision": lambda: section_precision(args.precision_images),
        "demo_throughput": lambda: section_demo_throughput([int(b) for b in args.demo_batches.split(",")]),
        "stage_shares": lambda: section_stage_shares(args.stage_prompts),
        "ray": lambda: section_ray(args.ray_prompts),
        "sd_shaped": lambda: section_sd_shaped([int(b) for b in args.sd_batches.split(",")], args.sd_steps),
        "families": lambda: section_families(args.families_batch, args.families_steps),
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
