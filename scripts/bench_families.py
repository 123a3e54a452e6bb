"""Benchmark: memscan's adapters against the bare diffusers calls they wrap, per model family.

    python scripts/bench_families.py [--families sd,sd2-v,sdxl,sd3,flux,pixart,ddpm,dit] [--batch 32] [--steps 20] [--repeats 3]

For each family model of the demo world (``scanner.demo.FAMILY_MODELS``), measured side by
side in one process, alternating, best of ``--repeats``:

- sampling: ``model.generate`` against the pipeline called directly with the same prompts,
  one CPU generator per seed, steps, guidance, size and dtype;
- the membership loss: ``denoising_losses`` (the loss attack's measurement: encode, condition,
  noise, one denoiser pass per timestep and repeat) against the same passes written out with the
  pipeline's own encoders, denoiser and training scheduler (for the flow models, the flow written out, Flux's on packed
  latents; for PixArt and DiT, the epsilon half of its output; for the unconditional model, DDPM's loss on pixels).

Prints images/s (items/s for the loss) and the ratio memscan / bare; the goal is at least 0.9.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def seconds(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def kind(pipeline) -> str:
    return type(pipeline).__name__


def unconditional(pipeline) -> bool:
    return not hasattr(pipeline, "vae")  # DDIMPipeline, DDPMPipeline: pixels, no prompt


def conditions(pipeline, rows: list[dict]) -> list[str]:
    """What each family is prompted with for a world row: nothing, its class (the demo DiT's: its shape), or its caption."""
    if unconditional(pipeline):
        return [""] * len(rows)
    return [r["shape"] if kind(pipeline) == "DiTPipeline" else r["caption"] for r in rows]


def bare_sampling(pipeline, prompts, seeds, steps, guidance, side):
    import torch

    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    with torch.inference_mode():
        if unconditional(pipeline):
            return pipeline(batch_size=len(seeds), generator=generators, num_inference_steps=steps, eta=0.0,
                            output_type="np").images
        if kind(pipeline) == "DiTPipeline":  # the classes' numbers, as the pipeline's labels give them
            return pipeline(class_labels=[pipeline.labels[p] for p in prompts], generator=generators,
                            num_inference_steps=steps, guidance_scale=guidance, output_type="np").images
        keywords = {"guidance_scale": guidance}
        if kind(pipeline) == "FluxPipeline":  # no guidance embedding: true classifier-free guidance, T5 at its tokenizer's length
            keywords = {"true_cfg_scale": guidance, "negative_prompt": [""] * len(prompts),
                        "max_sequence_length": pipeline.tokenizer_2.model_max_length}
        elif kind(pipeline) == "PixArtAlphaPipeline":  # the prompt as given, the model's own square size
            keywords |= {"max_sequence_length": pipeline.tokenizer.model_max_length, "clean_caption": False,
                         "use_resolution_binning": False}
        return pipeline(prompt=prompts, generator=generators, num_inference_steps=steps, height=side, width=side,
                        output_type="np", **keywords).images


def bare_losses(pipeline, images, captions, timesteps, repeats):
    """The loss attack's passes with nothing but the pipeline's parts."""
    import torch
    from diffusers import DDPMScheduler

    with torch.inference_mode():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        keywords, embeds = {}, None
        # SD3 and Flux: rectified flow, x_t = (1 - sigma) x0 + sigma n, target n - x0
        flow = kind(pipeline) in ("StableDiffusion3Pipeline", "FluxPipeline")
        if unconditional(pipeline):  # pixels as they are, and no condition
            x0 = pixels
        else:
            vae = pipeline.vae.config
            x0 = (pipeline.vae.encode(pixels).latent_dist.mean - (vae.get("shift_factor") or 0.0)) * vae.scaling_factor
        if kind(pipeline) == "FluxPipeline":
            embeds, pooled, text_ids = pipeline.encode_prompt(captions, None, device="cpu",
                                                              max_sequence_length=pipeline.tokenizer_2.model_max_length)
            side = x0.shape[-1] // 2
            image_ids = pipeline._prepare_latent_image_ids(len(x0), side, side, "cpu", x0.dtype)
            keywords = {"pooled_projections": pooled, "txt_ids": text_ids, "img_ids": image_ids}
        elif kind(pipeline) == "DiTPipeline":
            keywords = {"class_labels": torch.tensor([pipeline.labels[c] for c in captions])}
        elif kind(pipeline) == "PixArtAlphaPipeline":
            tokens = pipeline.tokenizer(captions, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                        truncation=True, return_tensors="pt")
            embeds = pipeline.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
            keywords = {"encoder_attention_mask": tokens.attention_mask,
                        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
        elif flow:
            embeds, _, pooled, _ = pipeline.encode_prompt(captions, None, None, device="cpu", do_classifier_free_guidance=False)
            keywords = {"pooled_projections": pooled}
        elif hasattr(pipeline, "text_encoder_2"):
            embeds, _, pooled, _ = pipeline.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
            side = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
            ids = torch.tensor([[side, side, 0, 0, side, side]] * len(captions), dtype=embeds.dtype)
            keywords = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": ids}}
        elif not unconditional(pipeline) and kind(pipeline) != "DiTPipeline":
            embeds = pipeline.encode_prompt(captions, "cpu", 1, False)[0]
        scheduler = None if flow else DDPMScheduler.from_config(pipeline.scheduler.config)
        losses = []
        for r in range(repeats):
            for t in timesteps:
                noise = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(r * 1009 + t)).expand_as(x0)
                step = torch.full((len(x0),), t)
                if kind(pipeline) == "FluxPipeline":  # packed into 2x2 tokens, sigma as the timestep
                    sigma = t / 1000
                    x_t, target = (1 - sigma) * x0 + sigma * noise, noise - x0
                    n, channels, height, width = x_t.shape
                    packed = pipeline.transformer(hidden_states=pipeline._pack_latents(x_t, n, channels, height, width),
                                                  encoder_hidden_states=embeds, timestep=step.float() / 1000, **keywords).sample
                    prediction = pipeline._unpack_latents(packed, height * pipeline.vae_scale_factor,
                                                          width * pipeline.vae_scale_factor, pipeline.vae_scale_factor)
                elif flow:
                    sigma = t / 1000
                    x_t, target = (1 - sigma) * x0 + sigma * noise, noise - x0
                    prediction = pipeline.transformer(x_t, encoder_hidden_states=embeds, timestep=step.float(), **keywords).sample
                elif kind(pipeline) in ("PixArtAlphaPipeline", "DiTPipeline"):  # learned variance: epsilon is the first half
                    x_t = scheduler.add_noise(x0, noise, step)
                    target = noise
                    text = {} if embeds is None else {"encoder_hidden_states": embeds}
                    output = pipeline.transformer(x_t, timestep=step, **text, **keywords).sample
                    prediction = output[:, :x0.shape[1]]
                else:
                    x_t = scheduler.add_noise(x0, noise, step)
                    target = scheduler.get_velocity(x0, noise, step) if scheduler.config.prediction_type == "v_prediction" else noise
                    prediction = (pipeline.unet(x_t, step).sample if embeds is None else
                                  pipeline.unet(x_t, step, encoder_hidden_states=embeds, **keywords).sample)
                losses.append(((prediction - target) ** 2).mean(dim=(1, 2, 3)))
    return losses


def main() -> None:
    from scanner import demo as demo_world
    from scanner.mia.denoising import NoiseProtocol, denoising_losses
    from scanner.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(demo_world.FAMILY_MODELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--loss-items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = [r for r in demo_world.load_world(["caption", "shape", "image_png", "kind"]) if r["kind"] == "object"]
    seeds = list(range(args.batch))
    items = rows[: args.loss_items]
    images = np.stack([demo_world.decode_png(r["image_png"]) for r in items])
    print(f"{'family':8} {'what':9} {'memscan/s':>10} {'bare/s':>10} {'ratio':>6}")
    for family in args.families.split(","):
        model = load_model(demo_world.FAMILY_MODELS[family], device="cpu")
        pipeline = model.pipeline
        prompts, captions = conditions(pipeline, rows[: args.batch]), conditions(pipeline, items)
        protocol = NoiseProtocol(batch_size=args.loss_items).for_model(model)
        model.generate(prompts[:2], seeds[:2], 2, args.guidance)  # warm up: first calls allocate and pick kernels
        bare_sampling(pipeline, prompts[:2], seeds[:2], 2, args.guidance, model.resolution)
        memscan_sampling, bare = [], []
        for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits both alike
            bare.append(seconds(lambda: bare_sampling(pipeline, prompts, seeds, args.steps, args.guidance, model.resolution)))
            memscan_sampling.append(seconds(lambda: model.generate(prompts, seeds, args.steps, args.guidance)))
        rate_memscan, rate_bare = args.batch / min(memscan_sampling), args.batch / min(bare)
        print(f"{family:8} {'sampling':9} {rate_memscan:10.1f} {rate_bare:10.1f} {rate_memscan / rate_bare:6.2f}")
        memscan_loss, bare = [], []
        for _ in range(args.repeats):
            bare.append(seconds(lambda: bare_losses(pipeline, images, captions, protocol.timesteps, protocol.repeats)))
            memscan_loss.append(seconds(lambda: denoising_losses(model, images, [captions], protocol)))
        rate_memscan, rate_bare = len(items) / min(memscan_loss), len(items) / min(bare)
        print(f"{family:8} {'loss':9} {rate_memscan:10.1f} {rate_bare:10.1f} {rate_memscan / rate_bare:6.2f}", flush=True)


if __name__ == "__main__":
    main()
