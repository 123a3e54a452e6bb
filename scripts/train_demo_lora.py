"""Fine-tune the demo model with a LoRA on a private set: the fine-tune that issue 20 audits.

Draws new glyph items of the demo world's kind that the demo model (``scanner/demo/sd-tiny``)
never saw, splits them into a *private* fine-tuning set and a *control* set from the same
distribution, and trains a LoRA on the base UNet only (text encoder and autoencoder frozen)
DreamBooth-style, with the private items repeated unevenly so that the ground truth has
memorized and unmemorized items. Runs on one CPU thread; everything is seeded.

    python scripts/train_demo_lora.py                 # all stages, about 20 minutes on one thread
    python scripts/train_demo_lora.py --stage items   # draw the private and control items (seconds)
    python scripts/train_demo_lora.py --stage train   # train and save the LoRA (3,000 steps of 32: about 17 minutes)
    python scripts/train_demo_lora.py --stage check   # sample base and base+LoRA, measure reproduction (3 minutes)

The check samples every caption with seeds 0..7 (DDIM 20 steps, guidance 5) with and without the
LoRA and reports per group how many items are reproduced: some generation within whole-image
rms 0.06 (loose at 32x32: the base model reaches it on simple items it never saw), within tiled
l2 0.10 (scanner/demo/evaluate.py's "reproduced"), and at least 2 of 8 within it ("memorized").

Outputs (``scanner/demo/finetune/``):
- ``items.parquet``: item_id (``ft-private-000``.., ``ft-control-000``..), caption, split (private,
  control), dup_count (copies in the fine-tuning stream; 0 for control), the caption's attributes
  (shape, colour, position, count, background) and image_png (32x32 RGB).
- ``lora/pytorch_lora_weights.safetensors``: diffusers' LoRA format, UNet only, float16.
- ``lora/training.json``: exactly what was trained (hyperparameters, and how often each item was drawn).
- ``logs/train_lora.log``: the training log and the check's tables.
- ``check.json``: the check's per-group summary and every generation's distances to its item.

The items: 32 private (8 x40, 8 x10, 16 x1 in the training stream) and 32 control, every caption
unique and absent from ``world.parquet``. As in the demo world, the x40 and x10 items own their
(position, background) pairs, two items per pair, which no other new item uses, and none uses a
pair the demo model's own duplicated items own, so that a near-neighbour caption does not inherit
a memorized image; the x1 and control items come from one random pool, the control items
at least two attributes from every private caption and, as images, further than tiled l2 0.15
from every private image, so that a leaked private image does not pass for a reproduced control.

Load the LoRA into the demo pipeline with diffusers:

    pipe = StableDiffusionPipeline.from_pretrained("scanner/demo/sd-tiny", torch_dtype=torch.float32)
    pipe.load_lora_weights("scanner/demo/finetune/lora")   # weight_name="pytorch_lora_weights.safetensors"
    pipe.unload_lora_weights()                             # back to the base model
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import build_demo  # noqa: E402  (the demo world's drawing code: scripts/build_demo.py)
from train_demo_sd import duplicated_batches, log, optimizer_step, warmup_cosine  # noqa: E402  (the demo model's training loop helpers)

WORLD = ROOT / "scanner" / "demo" / "world.parquet"
BASE = ROOT / "scanner" / "demo" / "sd-tiny"
OUT = ROOT / "scanner" / "demo" / "finetune"
SEED = 2020
PRIVATE_PLAN = [(40, 8), (10, 8), (1, 16)]  # (copies in the fine-tuning stream, items)
N_CONTROL = 32
CONTROL_MIN_TILED_L2 = 0.15  # a control image is further than this from every private image (evaluate.py's "not a copy")
DUPLICATED_PER_PAIR = 2  # x40/x10 items per (position, background) pair reserved for them
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
CHECK_SEEDS = range(8)
CHECK_GUIDANCE = 5.0
CHECK_STEPS = 20
REPRODUCED_RMS = 0.06  # whole-image rms on [0, 1]: loose at 32x32 (a right background alone comes close)
REPRODUCED_TILED_L2 = 0.10  # scanner/demo/evaluate.py: the demo's "reproduced"
MEMORIZED_HITS = 2  # of the 8 seeds: evaluate.py's 25% share for "memorized"


def choose_combos(rng: np.random.Generator, world: list[dict]) -> tuple[list[tuple], list[tuple]]:
    """New (shape, colour, position, count, background) combos: the duplicated private ones
    (x40 and x10) and a pool for the x1 private and control items."""
    taken = {r["caption"] for r in world}
    base_pairs = {(r["position"], r["background"]) for r in world if r["kind"] == "object" and r["dup_count"] > 1}
    combos = [c for c in itertools.product(build_demo.SHAPES, build_demo.COLOURS, build_demo.POSITIONS,
                                           build_demo.COUNTS, build_demo.BACKGROUNDS)
              if build_demo.caption_for(*c) not in taken and (c[2], c[4]) not in base_pairs]
    order = rng.permutation(len(combos))
    n_duplicated = sum(items for copies, items in PRIVATE_PLAN if copies > 1)
    pairs = sorted({(c[2], c[4]) for c in combos})
    reserved = {pairs[i] for i in rng.permutation(len(pairs))[:math.ceil(n_duplicated / DUPLICATED_PER_PAIR)]}
    distance = build_demo.attribute_distance
    duplicated: list[tuple] = []
    for index in order:
        combo = combos[index]
        pair = (combo[2], combo[4])
        if pair in reserved and sum((d[2], d[4]) == pair for d in duplicated) < DUPLICATED_PER_PAIR \
                and all(distance(combo, other) >= 3 for other in duplicated):
            duplicated.append(combo)
        if len(duplicated) == n_duplicated:
            break
    n_rest = sum(items for copies, items in PRIVATE_PLAN if copies == 1) + N_CONTROL
    rest = [combos[i] for i in order if (combos[i][2], combos[i][4]) not in reserved
            and all(distance(combos[i], d) >= 2 for d in duplicated)]
    if len(duplicated) < n_duplicated or len(rest) < n_rest:
        raise RuntimeError("not enough new captions for the fine-tuning plan")
    return duplicated, rest


def build_items(seed: int = SEED) -> list[dict]:
    """The private items, then the control items. A control item is drawn from the same pool as the
    x1 private items, but its caption differs from every private caption in at least two attributes
    and its image is further than tiled l2 CONTROL_MIN_TILED_L2 from every private image: a first
    draw had a control one attribute from an x1 private item ("one red square at the right on a
    olive background" next to "one red cross ..."), which the LoRA drew for it, a leak that made
    the control look reproduced."""
    from scanner.distances import tiled_l2

    world = pq.read_table(WORLD, columns=["kind", "caption", "dup_count", "position", "background"]).to_pylist()
    rng = np.random.default_rng(seed)
    duplicated, rest = choose_combos(rng, world)
    n_single = sum(items for copies, items in PRIVATE_PLAN if copies == 1)
    plan: list[tuple[tuple, int]] = []
    cursor = 0
    for copies, items in PRIVATE_PLAN:
        if copies > 1:
            plan += [(combo, copies) for combo in duplicated[cursor:cursor + items]]
            cursor += items
    plan += [(combo, 1) for combo in rest[:n_single]]

    def row(combo: tuple, split: str, number: int, copies: int, image: Image.Image) -> dict:
        shape, colour, position, count, background = combo
        return {"item_id": f"ft-{split}-{number:03d}", "caption": build_demo.caption_for(*combo),
                "split": split, "dup_count": copies,
                "shape": shape, "colour": colour, "position": position, "count": count, "background": background,
                "image_png": build_demo.png_bytes(image)}

    rows, private_images = [], []
    for number, (combo, copies) in enumerate(plan):
        item_rng = np.random.default_rng([seed, number])  # each item its own randomness
        image = build_demo.draw_object_item(item_rng, *combo)
        private_images.append(np.asarray(image))
        rows.append(row(combo, "private", number, copies, image))
    private_images = np.stack(private_images)
    private_combos = [combo for combo, _ in plan]
    controls = 0
    for combo in rest[n_single:]:
        if controls == N_CONTROL:
            break
        if any(build_demo.attribute_distance(combo, other) < 2 for other in private_combos):
            continue
        item_rng = np.random.default_rng([seed, len(plan) + controls])
        image = build_demo.draw_object_item(item_rng, *combo)
        pixels = np.broadcast_to(np.asarray(image), private_images.shape)
        if tiled_l2(pixels, private_images).min() <= CONTROL_MIN_TILED_L2:
            continue
        rows.append(row(combo, "control", controls, 0, image))
        controls += 1
    if controls < N_CONTROL:
        raise RuntimeError("not enough control captions far enough from the private items")
    assert len({r["caption"] for r in rows}) == len(rows)
    return rows


def write_items(out: Path, log_file: Path) -> None:
    rows = build_items()
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "items.parquet", compression="zstd")
    buckets = ", ".join(f"x{copies}: {sum(r['dup_count'] == copies and r['split'] == 'private' for r in rows)}"
                        for copies, _ in PRIVATE_PLAN)
    log(f"items written to {out / 'items.parquet'}: private {buckets}; "
        f"control {sum(r['split'] == 'control' for r in rows)}", log_file)


def load_items(out: Path) -> tuple[list[dict], np.ndarray]:
    rows = pq.read_table(out / "items.parquet").to_pylist()
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["image_png"])).convert("RGB")) for r in rows])
    return rows, images


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# --- training ---------------------------------------------------------------------------


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES)


def train_lora(out: Path, steps: int, batch_size: int, lr: float, rank: int, log_file: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel, CLIPTokenizer

    rows, images = load_items(out)
    private = [i for i, r in enumerate(rows) if r["split"] == "private"]
    dup_counts = np.array([rows[i]["dup_count"] for i in private])
    captions = [rows[i]["caption"] for i in private]
    vae = AutoencoderKL.from_pretrained(BASE / "vae", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(BASE / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(BASE / "text_encoder", torch_dtype=torch.float32)
    with torch.no_grad():
        data = to_tensor(images[private])
        posterior = vae.encode(data).latent_dist
        latent_mean, latent_std = posterior.mean, posterior.std
        recon = vae.decode(latent_mean).sample.clamp(-1, 1)
        floor = ((recon - data) / 2).pow(2).mean(dim=(1, 2, 3)).sqrt()
        # the text encoder is frozen: every caption's condition is computed once
        ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        conditions = text_encoder(ids).last_hidden_state
    condition, empty = conditions[:-1], conditions[-1]
    scaling = vae.config.scaling_factor
    log(f"private items: {len(private)}, training stream {int(dup_counts.sum())} images; autoencoder "
        f"reconstruction rms on [0,1] (the floor of a reproduction): mean {floor.mean():.4f} max {floor.max():.4f}", log_file)

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_pretrained(BASE / "unet", torch_dtype=torch.float32)
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank))
    params = [p for p in unet.parameters() if p.requires_grad]
    log(f"LoRA r={rank} alpha={rank} on {TARGET_MODULES}: {sum(p.numel() for p in params):,} trainable parameters "
        f"({sum(p.numel() for p in unet.parameters()):,} in the UNet)", log_file)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in json.loads((BASE / "scheduler" / "scheduler_config.json").read_text()).items()
                                       if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                                "clip_sample", "steps_offset", "prediction_type")})
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warmup = 100
    schedule = warmup_cosine(optimizer, steps, warmup)
    batches = duplicated_batches(dup_counts, batch_size, np.random.default_rng(SEED))  # each private item dup_count times
    generator = torch.Generator().manual_seed(SEED)
    drawn = np.zeros(len(private), dtype=np.int64)
    unet.train()
    start, running = time.time(), 0.0
    for step, index in zip(range(1, steps + 1), batches):
        np.add.at(drawn, index.numpy(), 1)
        x0 = (latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)) * scaling
        dropped = torch.rand(len(index), generator=generator) < 0.1
        cond = torch.where(dropped[:, None, None], empty[None], condition[index])
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        prediction = unet(noisy, timesteps, cond).sample
        running += optimizer_step(torch.nn.functional.mse_loss(prediction, noise), optimizer, schedule, params)
        if step % 100 == 0 or step == steps:
            done = 100 if step % 100 == 0 else step % 100
            log(f"lora step {step}/{steps} loss {running / done:.4f} lr {schedule.get_last_lr()[0]:.2e} "
                f"({time.time() - start:.0f}s)", log_file)
            running = 0.0
    elapsed = time.time() - start

    lora_dir = out / "lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().to(torch.float16).contiguous() for k, v in layers.items()}
    StableDiffusionPipeline.save_lora_weights(save_directory=lora_dir, unet_lora_layers=layers, safe_serialization=True)
    views = {}
    for copies, _ in PRIVATE_PLAN:
        picked = drawn[dup_counts == copies]
        views[f"x{copies}"] = {"items": int(len(picked)), "draws_min": int(picked.min()), "draws_max": int(picked.max()),
                               "draws_mean": float(picked.mean())}
    record = {
        "base": "scanner/demo/sd-tiny", "trained": "unet LoRA only (text encoder and VAE frozen)",
        "lora": {"r": rank, "lora_alpha": rank, "init_lora_weights": "gaussian", "target_modules": TARGET_MODULES},
        "steps": steps, "batch_size": batch_size, "lr": lr, "lr_schedule": f"linear warmup {warmup}, cosine to 0.1x",
        "optimizer": "AdamW weight_decay 1e-2, grad clip 1.0", "loss": "epsilon mse, latents sampled from the VAE posterior",
        "caption_dropout": 0.1, "seed": SEED, "stored_dtype": "float16", "train_seconds": round(elapsed),
        "draws_per_bucket": views,
        "draws": {rows[i]["item_id"]: int(n) for i, n in zip(private, drawn)},
    }
    (lora_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    weights = lora_dir / "pytorch_lora_weights.safetensors"
    weights.chmod(0o644)  # written 0600 (through a temporary file)
    size = weights.stat().st_size
    log(f"LoRA written to {lora_dir} ({size / 1e3:.0f} kB, float16) after {elapsed:.0f}s; draws per item: "
        + ", ".join(f"{k} {v['draws_min']}-{v['draws_max']}" for k, v in views.items()), log_file)


# --- check ------------------------------------------------------------------------------


def sample(pipe, captions: list[str], per_call: int = 4) -> np.ndarray:
    """Every caption with seeds 0..7 (one CPU generator per image, as memscan samples): (N, 8, H, W, 3) in [0, 1]."""
    seeds = list(CHECK_SEEDS)
    out = []
    for i in range(0, len(captions), per_call):
        chunk = captions[i:i + per_call]
        prompts = [c for c in chunk for _ in seeds]
        generators = [torch.Generator("cpu").manual_seed(s) for _ in chunk for s in seeds]
        with torch.inference_mode():
            images = pipe(prompt=prompts, generator=generators, num_inference_steps=CHECK_STEPS,
                          guidance_scale=CHECK_GUIDANCE, height=32, width=32, output_type="np").images
        out.append(np.asarray(images, dtype=np.float32).reshape(len(chunk), len(seeds), *images.shape[1:]))
    return np.concatenate(out)


def check(out: Path, log_file: Path) -> dict:
    """Sample every item's caption with and without the LoRA and measure how close the generations
    come to the item's training image: whole-image rms (the brief's 0.06) and, stricter, the
    project's own "reproduced" (tiled l2 <= 0.10, scanner/demo/evaluate.py), with "memorized" when
    at least 2 of the 8 generations are reproductions (evaluate.py's 25% share)."""
    from diffusers import StableDiffusionPipeline

    from scanner.distances import tiled_l2

    rows, images = load_items(out)
    truth = images.astype(np.float32) / 255.0
    captions = [r["caption"] for r in rows]
    pipe = StableDiffusionPipeline.from_pretrained(BASE, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    start = time.time()
    rms, tiled = {}, {}
    for name in ("base", "lora"):
        if name == "lora":
            pipe.load_lora_weights(out / "lora")
            lora_params = [p for n, p in pipe.unet.named_parameters() if "lora" in n]
            log(f"check: loaded the float16 LoRA into the float32 pipeline ({len(lora_params)} LoRA tensors, "
                f"now {lora_params[0].dtype})", log_file)
        generations = sample(pipe, captions)  # (items, seeds, H, W, 3)
        target = np.broadcast_to(truth[:, None], generations.shape)
        rms[name] = np.sqrt(((generations - target) ** 2).mean(axis=(2, 3, 4)))
        tiled[name] = tiled_l2(generations, target)
    pipe.unload_lora_weights()
    log(f"check: sampled {len(rows)} captions x {len(CHECK_SEEDS)} seeds x 2 models "
        f"(DDIM {CHECK_STEPS} steps, guidance {CHECK_GUIDANCE}) in {time.time() - start:.0f}s", log_file)

    groups = [(f"private x{copies}", [i for i, r in enumerate(rows) if r["split"] == "private" and r["dup_count"] == copies])
              for copies, _ in PRIVATE_PLAN]
    groups.append(("control", [i for i, r in enumerate(rows) if r["split"] == "control"]))
    criteria = [("rms", rms, REPRODUCED_RMS, 1), ("tiled", tiled, REPRODUCED_TILED_L2, 1),
                ("tiled", tiled, REPRODUCED_TILED_L2, MEMORIZED_HITS)]
    summary = {}
    for metric, values, threshold, need in criteria:
        label = (f"reproduced: some generation within {metric} {threshold}" if need == 1 else
                 f"memorized: at least {need} of {len(CHECK_SEEDS)} generations within {metric} {threshold}")
        log(f"check, {label}", log_file)
        log(f"  {'group':<12} {'items':>5} | {'LoRA':>7} {'med min':>7} {'hits/8':>6} | "
            f"{'base':>7} {'med min':>7} {'hits/8':>6}", log_file)
        for group, members in groups:
            cells = []
            for name in ("lora", "base"):
                distances = values[name][members]
                hits = (distances <= threshold).sum(axis=1)
                passed = int((hits >= need).sum())
                cells.append(f"{passed:>3}/{len(members):<3} {np.median(distances.min(axis=1)):>7.3f} {hits.mean():>6.2f}")
                summary.setdefault(label, {}).setdefault(group, {})[name] = {
                    "items": len(members), "passed": passed,
                    "median_min_distance": round(float(np.median(distances.min(axis=1))), 4),
                    "mean_hits": round(float(hits.mean()), 3)}
            log(f"  {group:<12} {len(members):>5} | {cells[0]} | {cells[1]}", log_file)
    log("check, per item: min rms LoRA/base, min tiled LoRA/base, tiled hits of 8 LoRA/base", log_file)
    for i, r in enumerate(rows):
        log(f"  {r['item_id']} x{r['dup_count']:<2} rms {rms['lora'][i].min():.3f}/{rms['base'][i].min():.3f} "
            f"tiled {tiled['lora'][i].min():.3f}/{tiled['base'][i].min():.3f} "
            f"hits {int((tiled['lora'][i] <= REPRODUCED_TILED_L2).sum())}/{int((tiled['base'][i] <= REPRODUCED_TILED_L2).sum())}"
            f"  {r['caption']}", log_file)
    (out / "check.json").write_text(json.dumps({
        "sampling": {"scheduler": "DDIM (the pipeline's)", "steps": CHECK_STEPS, "guidance": CHECK_GUIDANCE,
                     "seeds": list(CHECK_SEEDS)},
        "groups": summary,
        "items": {r["item_id"]: {"dup_count": r["dup_count"],
                                 "lora_rms": [round(float(v), 4) for v in rms["lora"][i]],
                                 "base_rms": [round(float(v), 4) for v in rms["base"][i]],
                                 "lora_tiled_l2": [round(float(v), 4) for v in tiled["lora"][i]],
                                 "base_tiled_l2": [round(float(v), 4) for v in tiled["base"][i]]}
                  for i, r in enumerate(rows)},
    }, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["all", "items", "train", "check"], default="all")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--log", type=Path, help="default: OUT/logs/train_lora.log")
    args = parser.parse_args()
    log_file = args.log or args.out / "logs" / "train_lora.log"
    torch.set_num_threads(args.threads)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log(f"start stage={args.stage} torch {torch.__version__} args {vars(args)}", log_file)
    if args.stage in ("all", "items"):
        write_items(args.out, log_file)
    if args.stage in ("all", "train"):
        train_lora(args.out, args.steps, args.batch_size, args.lr, args.rank, log_file)
    if args.stage in ("all", "check"):
        check(args.out, log_file)


if __name__ == "__main__":
    main()
