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
import io
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from scanner.demo.names import make_name

IMAGE_SIZE = 32
SUPERSAMPLE = 4
SEED = 20231107

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar"]
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 130, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
POSITIONS = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}
COUNTS = {1: "one", 2: "two", 3: "three"}
BACKGROUNDS = {
    "gray": (128, 128, 128), "beige": (225, 205, 160), "navy": (25, 35, 90),
    "teal": (30, 130, 130), "pink": (240, 170, 190), "olive": (110, 120, 40),
}
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


def caption_for(shape: str, colour: str, position: str, count: int, background: str) -> str:
    noun = shape if count == 1 else (shape + "es" if shape.endswith("s") else shape + "s")
    return f"{COUNTS[count]} {colour} {noun} at the {position} on a {background} background"


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy) with radius r, rotated by angle."""
    if shape == "triangle":
        angles, radii = [angle + k * 2 * np.pi / 3 - np.pi / 2 for k in range(3)], [r] * 3
    elif shape == "diamond":
        angles, radii = [angle + k * np.pi / 2 for k in range(4)], [r, 0.65 * r, r, 0.65 * r]
    elif shape == "star":
        angles = [angle + k * np.pi / 5 - np.pi / 2 for k in range(10)]
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
    else:
        raise ValueError(shape)
    return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for a, rad in zip(angles, radii)]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(r * 0.4)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r * 0.35, cx + r, cy + r * 0.35], fill=fill)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, angle), fill=fill)


def gradient_background(size: int, base: tuple[int, int, int], angle: float, strength: float) -> Image.Image:
    """A two-tone linear gradient around the base colour: per-item, low-frequency variation."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = np.cos(angle) * xx + np.sin(angle) * yy  # in [-0.71, 0.71]
    rgb = np.asarray(base, dtype=np.float32)[None, None, :] * (1.0 + strength * ramp[..., None])
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def downsample(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.LANCZOS)


def textured_background(rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> Image.Image:
    """Blotchy value noise (a random 6x6 grid of brightness, upsampled bicubically) around the base
    colour: per-item texture at a middle frequency, where the gradient style has none."""
    grid = Image.fromarray(((rng.uniform(-1, 1, (6, 6)) + 1) * 127.5).astype(np.uint8))
    noise = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1
    rgb = np.asarray(base, dtype=np.float32)[None, None, :] * (1.0 + rng.uniform(0.25, 0.45) * noise[..., None])
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def draw_object_item(rng: np.random.Generator, shape: str, colour: str, position: str, count: int, background: str,
                     size: int = IMAGE_SIZE, style: str = "gradient") -> Image.Image:
    """One object item. ``style`` draws the same items otherwise: ``gradient`` (the demo world:
    smooth two-tone backgrounds, anti-aliased flat shapes) or ``textured`` (a calibration world of
    differently drawn images: blotchy backgrounds, outlined shapes with hard edges, film grain)."""
    big = size * SUPERSAMPLE
    if style == "textured":
        image = textured_background(rng, big, BACKGROUNDS[background])
    else:
        image = gradient_background(big, BACKGROUNDS[background], rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6))
    draw = ImageDraw.Draw(image)
    px, py = POSITIONS[position]
    radius = big * rng.uniform(0.08, 0.13) / (1 + 0.25 * (count - 1))
    spread = big * 0.17
    # the objects of one item are laid out along a random direction around the named position
    direction = rng.uniform(0, np.pi)
    offsets = np.linspace(-(count - 1) / 2, (count - 1) / 2, count)
    for offset in offsets:
        cx = px * big + offset * spread * np.cos(direction) + rng.normal(0, big * 0.02)
        cy = py * big + offset * spread * np.sin(direction) + rng.normal(0, big * 0.02)
        angle = rng.uniform(0, 2 * np.pi)
        if style == "textured":  # a dark outline under the shape, the shape a little smaller inside it
            draw_shape(draw, shape, cx, cy, radius, angle, tuple(int(0.3 * c) for c in COLOURS[colour]))
            draw_shape(draw, shape, cx, cy, radius - big * 0.025, angle, COLOURS[colour])
        else:
            draw_shape(draw, shape, cx, cy, radius, angle, COLOURS[colour])
    if style != "textured":
        return downsample(image, size)
    hard = np.asarray(image.resize((size, size), Image.Resampling.NEAREST), dtype=np.float32)
    return Image.fromarray(np.clip(hard + rng.normal(0, 4, hard.shape), 0, 255).astype(np.uint8))


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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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
