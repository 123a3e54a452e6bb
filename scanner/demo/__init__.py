"""The embedded demo world: data, ground truth and models built by ``scripts/``.

- ``world.parquet``: every item with its caption, split, duplication count, identity and PNG bytes
  (``scripts/build_demo.py``);
- ``sd-tiny/``: a diffusers ``StableDiffusionPipeline`` folder trained on the members
  (``scripts/train_demo_sd.py``, log in ``logs/train_sd.log``);
- ``clip-tiny/``: an open_clip local-dir model (``scripts/train_demo_clip.py``, log in ``logs/train_clip.log``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent
WORLD = DEMO_DIR / "world.parquet"
SD_MODEL = DEMO_DIR / "sd-tiny"
CLIP_MODEL = DEMO_DIR / "clip-tiny"
CALIBRATION_DIR = DEMO_DIR / "calibration"
FAMILIES_DIR = DEMO_DIR / "families"

# The demo world drawn by each family memscan audits (issues 19 and 22): trained by
# scripts/train_demo_sd.py --variant NAME on the demo model's autoencoder (docs/MEASUREMENTS.md).
FAMILY_MODELS = {
    "sd": SD_MODEL,                       # StableDiffusionPipeline, epsilon, DDIM
    "sd2-v": FAMILIES_DIR / "sd2-v",      # StableDiffusionPipeline, v-prediction, DDIM (SD 2.x-shaped)
    "sdxl": FAMILIES_DIR / "sdxl",        # StableDiffusionXLPipeline, epsilon, Euler
    "sd3": FAMILIES_DIR / "sd3",          # StableDiffusion3Pipeline, flow matching, flow Euler, no T5 (issue 22)
    "flux": FAMILIES_DIR / "flux",        # FluxPipeline, flow matching with resolution shift, CLIP pooled + T5 (issue 22)
    "pixart": FAMILIES_DIR / "pixart",    # PixArtAlphaPipeline: DiT with cross-attention to T5, learned variance (issue 22)
    "ddpm": FAMILIES_DIR / "ddpm",        # DDIMPipeline: unconditional, pixel space, epsilon (issue 22; Carlini's CIFAR-10)
    "dit": FAMILIES_DIR / "dit",          # DiTPipeline: class-conditional (an item's shape), learned variance (issue 22)
}

# A fine-tune of the demo model (issue 20): a LoRA trained by scripts/train_demo_lora.py on
# "private" items the demo model never saw (split "private" in items.parquet, with how often each
# was trained on), beside "control" items of the same kind that were never trained on.
FINETUNE_DIR = DEMO_DIR / "finetune"
FINETUNE_LORA = FINETUNE_DIR / "lora" / "pytorch_lora_weights.safetensors"
FINETUNE_ITEMS = FINETUNE_DIR / "items.parquet"

# the calibration world drawn otherwise (``build_demo.py --style textured``); every other world is drawn in gradients
TEXTURED_WORLD = CALIBRATION_DIR / "world-textured.parquet"

# Models of the demo world that memscan's defaults were not tuned on (docs/CALIBRATION.md): each
# with the world it was trained on (the same items; sd-64's drawn at 64 pixels, sd-textured's drawn otherwise:
# blotchy textures, outlined hard-edged shapes, grain; each sd-reseeded model's is a world of its own, drawn from
# another seed: other captions duplicated, other layouts; sd-reseeded-64's at 64 pixels).
CALIBRATION_MODELS = {
    "demo": (SD_MODEL, WORLD),
    "sd-64": (CALIBRATION_DIR / "sd-64", CALIBRATION_DIR / "world-64.parquet"),
    "sd-short": (CALIBRATION_DIR / "sd-short", WORLD),
    "sd-textured": (CALIBRATION_DIR / "sd-textured", TEXTURED_WORLD),
    "sd2-v": (FAMILY_MODELS["sd2-v"], WORLD),
    "sdxl": (FAMILY_MODELS["sdxl"], WORLD),
    "sd3": (FAMILY_MODELS["sd3"], WORLD),
    "flux": (FAMILY_MODELS["flux"], WORLD),
    "pixart": (FAMILY_MODELS["pixart"], WORLD),
    "sd-reseeded": (CALIBRATION_DIR / "sd-reseeded", CALIBRATION_DIR / "world-reseeded.parquet"),
    "sd-reseeded-b": (CALIBRATION_DIR / "sd-reseeded-b", CALIBRATION_DIR / "world-reseeded-b.parquet"),
    "sd-reseeded-c": (CALIBRATION_DIR / "sd-reseeded-c", CALIBRATION_DIR / "world-reseeded-c.parquet"),
    "sd-reseeded-64": (CALIBRATION_DIR / "sd-reseeded-64", CALIBRATION_DIR / "world-reseeded-64.parquet"),
    "sd-reseeded-d": (CALIBRATION_DIR / "sd-reseeded-d", CALIBRATION_DIR / "world-reseeded-d.parquet"),
    "sd-reseeded-e": (CALIBRATION_DIR / "sd-reseeded-e", CALIBRATION_DIR / "world-reseeded-e.parquet"),
}

# duplication buckets the demo reports on, named as in the duplication plan
BUCKETS = ("x200", "x50", "x10", "x1", "non-member")


def world_style(world: Path) -> str:
    """How a world's object items are drawn (``scanner.demo.drawing.draw_object_item``'s ``style``)."""
    return "textured" if world.name == TEXTURED_WORLD.name else "gradient"


def load_world(columns: list[str] | None = None, world: Path = WORLD) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(world, columns=columns).to_pylist()


@functools.cache
def world_fingerprint(world: Path = WORLD) -> str:
    """A short hash of a world file: exports and the demo index made from another world
    (an older memscan's) are stale and get rebuilt."""
    return hashlib.sha256(world.read_bytes()).hexdigest()[:16]


def fresh_export(folder: Path, world: Path = WORLD) -> bool:
    """True when ``folder`` holds a complete export of this world; otherwise empty it for one."""
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == world_fingerprint(world):
        return True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return False


def mark_exported(folder: Path, world: Path = WORLD) -> None:
    (folder / ".complete").write_text(world_fingerprint(world))


def bucket_of(dup_count: int) -> str:
    return "non-member" if dup_count == 0 else f"x{dup_count}"


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def demo_items(per_bucket: int = 15, seed: int = 0, world: Path = WORLD) -> list[dict]:
    """Object items to scan in the demo: every heavily duplicated one (x200, x50), and
    ``per_bucket`` each of x10, x1 and non-members, chosen with a fixed seed (from ``world``: a
    calibration world drawn from another seed has other captions)."""
    rows = [r for r in load_world(["item_id", "kind", "caption", "dup_count"], world) if r["kind"] == "object"]
    rng = np.random.default_rng(seed)
    chosen = []
    for bucket in BUCKETS:
        in_bucket = [r for r in rows if bucket_of(r["dup_count"]) == bucket]
        if bucket not in ("x200", "x50"):
            in_bucket = [in_bucket[i] for i in sorted(rng.choice(len(in_bucket), size=min(per_bucket, len(in_bucket)), replace=False))]
        chosen += in_bucket
    return chosen


def export_training_set(folder: Path, world: Path = WORLD) -> Path:
    """Write the diffusion model's training set as an image folder with sidecar captions, one
    file per copy (``obj-00003--017.png`` + ``.txt``), as a scraped training set would hold it."""
    if fresh_export(folder, world):
        return folder
    for row in load_world(["item_id", "caption", "dup_count", "sd_train", "image_png"], world):
        if not row["sd_train"]:
            continue
        for copy in range(row["dup_count"]):
            stem = folder / f"{row['item_id']}--{copy:03d}"
            stem.with_suffix(".png").write_bytes(row["image_png"])
            stem.with_suffix(".txt").write_text(row["caption"])
    mark_exported(folder, world)
    return folder


def world_item_of(index_item_id: str) -> str:
    """The demo world item behind an exported training-set file's key."""
    return index_item_id.split("--")[0]


def export_people(folder: Path) -> tuple[Path, Path, Path]:
    """The demo identities as IDIA expects them: ``people/NAME/*.png`` (all images of each person),
    ``names.txt`` (the 40 names among 1,000 in the same style) and ``labels.csv`` (name, member)."""
    from scanner.demo.names import candidate_names

    people = folder / "people"
    rows = [r for r in load_world(["item_id", "kind", "identity", "identity_member", "image_png"]) if r["kind"] == "identity"]
    members = {r["identity"]: r["identity_member"] for r in rows}
    if not fresh_export(folder):
        for row in rows:
            target = people / row["identity"] / f"{row['item_id']}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(row["image_png"])
        mark_exported(folder)
    names = folder / "names.txt"
    names.write_text("\n".join(candidate_names(sorted(members))) + "\n")
    labels = folder / "labels.csv"
    labels.write_text("name,member\n" + "".join(f"{n},{str(m).lower()}\n" for n, m in sorted(members.items())))
    return people, names, labels


def membership_items(per_bucket: int = 15, x1: int = 100, nonmembers: int = 150, seed: int = 1) -> list[dict]:
    """Labelled demo items for membership inference: every x200, x50 and x10 member (up to
    ``per_bucket`` each), ``x1`` single-copy members and ``nonmembers`` from the same distribution."""
    rows = [r for r in load_world(["item_id", "kind", "caption", "shape", "dup_count", "image_png"]) if r["kind"] == "object"]
    rng = np.random.default_rng(seed)
    wanted = {"x200": per_bucket, "x50": per_bucket, "x10": per_bucket, "x1": x1, "non-member": nonmembers}
    chosen = []
    for bucket, count in wanted.items():
        in_bucket = [r for r in rows if bucket_of(r["dup_count"]) == bucket]
        chosen += [in_bucket[i] for i in sorted(rng.choice(len(in_bucket), size=min(count, len(in_bucket)), replace=False))]
    return chosen


def unlabeled_items(count: int = 10, seed: int = 2) -> list[dict]:
    """Demo x1 members and non-members outside ``membership_items()``, to score as if unlabeled."""
    taken = {r["item_id"] for r in membership_items()}
    rows = [r for r in load_world(["item_id", "kind", "caption", "dup_count", "image_png"])
            if r["kind"] == "object" and r["item_id"] not in taken and r["dup_count"] in (0, 1)]
    rng = np.random.default_rng(seed)
    return [rows[i] for i in sorted(rng.choice(len(rows), size=min(2 * count, len(rows)), replace=False))]
