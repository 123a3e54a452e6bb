"""Build the demo world: a compositional caption-image data set with a duplication plan,
and synthetic identities for identity inference.

Everything is drawn here from fixed seeds; nothing comes from a package or a hub.
Output: ``scanner/demo/world.parquet`` (images as PNG bytes plus the ground truth).

    python scripts/build_demo.py

Design of the world (see ``scanner/demo/README.md``):
- object items: 1-3 shapes of one colour at a position on a two-tone gradient background;
  every caption is unique, and each image carries per-item jitter (size, offsets, gradient
  angle), so a caption alone does not determine its image: only memorization does.
- members (the diffusion model's training set) follow the duplication plan
  15 x200, 15 x50, 15 x10, the rest x1; non-members come from the same distribution.
- duplicated members own their (position, background) pairs, three items per pair, and differ
  from each other in at least three attributes and from every other caption in at least two
  (one of them position or background), so that a near-neighbour caption does
  not inherit a memorized image.
- identities: procedurally drawn faces with a made-up name; half are named in the
  CLIP training data, half never appear anywhere.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from scanner.demo.drawing import (
    BACKGROUNDS, COLOURS, COUNTS, IMAGE_SIZE, POSITIONS, SHAPES, SUPERSAMPLE, caption_for, downsample, draw_object_item,
    gradient_background, png_bytes)
from scanner.demo.names import make_name

SEED = 20231107
DUPLICATION_PLAN = [(200, 15), (50, 15), (10, 15)]  # (copies, items); the rest of the members x1
DUPLICATED_PER_PAIR = 3  # duplicated items per (position, background) pair reserved for them
N_MEMBERS = 1100
N_NONMEMBERS = 1100
N_IDENTITIES = 40
IMAGES_PER_IDENTITY = 10
IDENTITY_TRAIN_IMAGES = 7  # of a member identity's images, the first 7 are in the CLIP training data
SKIN = [(255, 220, 185), (235, 190, 150), (200, 150, 110), (160, 110, 75), (120, 80, 55), (90, 60, 40)]
HAIR = [(20, 20, 20), (110, 70, 30), (230, 200, 120), (180, 60, 30), (200, 200, 200), (60, 90, 200)]
HAIR_STYLES = ["short", "long", "bald", "spiky"]
EYES = [(40, 90, 200), (60, 140, 60), (90, 60, 30), (20, 20, 20)]
SHIRTS = [(200, 40, 40), (40, 150, 70), (40, 80, 200), (230, 200, 50), (130, 60, 170), (240, 240, 240)]


def draw_face(rng: np.random.Generator, traits: dict, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of an identity: fixed traits, varied pose, scale, background and lighting."""
    big = size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(40, 220, size=3))
    image = gradient_background(big, background, rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.4))
    draw = ImageDraw.Draw(image)
    scale = rng.uniform(0.9, 1.1)
    cx = big * (0.5 + rng.uniform(-0.06, 0.06))
    cy = big * (0.47 + rng.uniform(-0.05, 0.05))
    fw, fh = big * 0.24 * scale * traits["face_width"], big * 0.30 * scale
    draw.rectangle([cx - fw * 1.5, cy + fh * 0.9, cx + fw * 1.5, big], fill=traits["shirt"])
    if traits["hair_style"] == "long":
        draw.rectangle([cx - fw * 1.15, cy - fh * 0.6, cx + fw * 1.15, cy + fh * 1.1], fill=traits["hair"])
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=traits["skin"])
    if traits["hair_style"] in ("short", "long"):
        draw.chord([cx - fw, cy - fh * 1.1, cx + fw, cy + fh * 0.3], 180, 360, fill=traits["hair"])
    elif traits["hair_style"] == "spiky":
        spikes = [(cx - fw + k * fw / 3, cy - fh * (1.35 if k % 2 else 0.6)) for k in range(7)]
        draw.polygon([(cx - fw, cy - fh * 0.5)] + spikes + [(cx + fw, cy - fh * 0.5)], fill=traits["hair"])
    eye_y = cy - fh * 0.05
    for side in (-1, 1):
        ex = cx + side * fw * 0.42
        draw.ellipse([ex - fw * 0.17, eye_y - fh * 0.12, ex + fw * 0.17, eye_y + fh * 0.12], fill=(250, 250, 250))
        draw.ellipse([ex - fw * 0.09, eye_y - fh * 0.08, ex + fw * 0.09, eye_y + fh * 0.08], fill=traits["eyes"])
        if traits["glasses"]:
            draw.ellipse([ex - fw * 0.3, eye_y - fh * 0.22, ex + fw * 0.3, eye_y + fh * 0.22], outline=(10, 10, 10), width=5)
    mouth_open = rng.uniform(0.02, 0.12)
    draw.ellipse([cx - fw * 0.35, cy + fh * 0.45, cx + fw * 0.35, cy + fh * (0.5 + mouth_open)], fill=(150, 40, 50))
    if traits["beard"]:
        draw.chord([cx - fw, cy - fh * 0.2, cx + fw, cy + fh * 1.05], 20, 160, fill=traits["hair"])
    brightness = rng.uniform(0.85, 1.15)
    pixels = np.clip(np.asarray(image, dtype=np.float32) * brightness, 0, 255).astype(np.uint8)
    return downsample(Image.fromarray(pixels), size)


def attribute_distance(a: tuple, b: tuple) -> int:
    return sum(x != y for x, y in zip(a, b))


def choose_object_combos(rng: np.random.Generator) -> tuple[list[tuple], list[tuple]]:
    """Pick unique (shape, colour, position, count, background) combos for duplicated and other items.

    Position and background fill most of an image's pixels, and a caption that shares them with a
    heavily duplicated caption draws that memorized image (the model leaks it to neighbours). So the
    duplicated items get (position, background) pairs of their own, three items per pair, and no
    other item uses those pairs: a flagged non-member is then a false positive, not leakage."""
    combos = list(itertools.product(SHAPES, COLOURS, POSITIONS, COUNTS, BACKGROUNDS))
    order = rng.permutation(len(combos))
    n_duplicated = sum(items for _, items in DUPLICATION_PLAN)
    pairs = list(itertools.product(POSITIONS, BACKGROUNDS))
    duplicated_pairs = {pairs[i] for i in rng.permutation(len(pairs))[:n_duplicated // DUPLICATED_PER_PAIR]}
    duplicated: list[tuple] = []
    for index in order:
        combo = combos[index]
        pair = (combo[2], combo[4])
        if pair in duplicated_pairs and sum((d[2], d[4]) == pair for d in duplicated) < DUPLICATED_PER_PAIR \
                and all(attribute_distance(combo, other) >= 3 for other in duplicated):
            duplicated.append(combo)
        if len(duplicated) == n_duplicated:
            break
    n_rest = N_MEMBERS - n_duplicated + N_NONMEMBERS
    rest = [
        combos[index] for index in order
        if (combos[index][2], combos[index][4]) not in duplicated_pairs
        and all(attribute_distance(combos[index], d) >= 2 for d in duplicated)
    ][:n_rest]
    if len(duplicated) < n_duplicated or len(rest) < n_rest:
        raise RuntimeError("not enough distinct captions for the duplication plan")
    return duplicated, rest


def build_rows(seed: int = SEED, size: int = IMAGE_SIZE, style: str = "gradient") -> list[dict]:
    """Every item of the world; ``size`` draws the same items (same random draws) at another resolution,
    ``style`` the same captions and duplication plan drawn otherwise (``draw_object_item``)."""
    rng = np.random.default_rng(seed)
    duplicated, rest = choose_object_combos(rng)
    rows: list[dict] = []

    def add_object(combo: tuple, split: str, copies: int) -> None:
        shape, colour, position, count, background = combo
        image = draw_object_item(rng, shape, colour, position, count, background, size, style)
        rows.append({
            "item_id": f"obj-{len(rows):05d}", "kind": "object",
            "caption": caption_for(shape, colour, position, count, background),
            "split": split, "dup_count": copies, "sd_train": split == "member", "clip_train": split == "member",
            "identity": None, "identity_member": None,
            "shape": shape, "colour": colour, "position": position, "count": count, "background": background,
            "image_png": png_bytes(image),
        })

    cursor = 0
    for copies, items in DUPLICATION_PLAN:
        for combo in duplicated[cursor:cursor + items]:
            add_object(combo, "member", copies)
        cursor += items
    n_single = N_MEMBERS - cursor
    for combo in rest[:n_single]:
        add_object(combo, "member", 1)
    for combo in rest[n_single:]:
        add_object(combo, "nonmember", 0)

    names: set[str] = set()
    trait_combos = list(itertools.product(range(len(SKIN)), range(len(HAIR)), HAIR_STYLES, range(len(EYES)), (False, True)))
    chosen = rng.choice(len(trait_combos), size=N_IDENTITIES, replace=False)
    for person, combo_index in enumerate(chosen):
        skin, hair, style, eyes, glasses = trait_combos[combo_index]
        traits = {
            "skin": SKIN[skin], "hair": HAIR[hair], "hair_style": style, "eyes": EYES[eyes], "glasses": glasses,
            "beard": bool(rng.integers(0, 2)), "shirt": SHIRTS[int(rng.integers(0, len(SHIRTS)))],
            "face_width": rng.uniform(0.85, 1.15),
        }
        name = make_name(rng, names)
        is_member = person % 2 == 0
        for image_index in range(IMAGES_PER_IDENTITY):
            in_clip = is_member and image_index < IDENTITY_TRAIN_IMAGES
            rows.append({
                "item_id": f"person-{person:02d}-{image_index:02d}", "kind": "identity",
                "caption": f"a photo of {name}", "split": "member" if in_clip else "nonmember",
                "dup_count": 1 if in_clip else 0, "sd_train": False, "clip_train": in_clip,
                "identity": name, "identity_member": is_member,
                "shape": None, "colour": None, "position": None, "count": None, "background": None,
                "image_png": png_bytes(draw_face(rng, traits, size)),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "scanner" / "demo" / "world.parquet")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--size", type=int, default=IMAGE_SIZE,
                        help="image side in pixels: the same items, drawn at another resolution (a calibration model's world)")
    parser.add_argument("--style", choices=("gradient", "textured"), default="gradient",
                        help="how object items are drawn: the demo world's gradients, or a calibration world's textures")
    args = parser.parse_args()
    rows = build_rows(args.seed, args.size, args.style)
    table = pa.Table.from_pylist(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd")
    objects = [r for r in rows if r["kind"] == "object"]
    print(f"wrote {args.out}: {len(rows)} items ({len(objects)} objects, {len(rows) - len(objects)} identity images)")
    for copies, items in DUPLICATION_PLAN:
        print(f"  x{copies}: {sum(r['dup_count'] == copies for r in objects)} items")
    print(f"  x1: {sum(r['dup_count'] == 1 for r in objects)} items, non-members: {sum(r['split'] == 'nonmember' for r in objects)}")


if __name__ == "__main__":
    main()
