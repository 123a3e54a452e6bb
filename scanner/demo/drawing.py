"""How the demo world's object items are drawn (used by ``scripts/build_demo.py``, which builds the
world, and by ``scanner.demo.evaluate``, whose per-item truth compares a generation with other
drawings of the same caption).

Every draw comes from the caller's random generator: the same generator state draws the same image.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
SUPERSAMPLE = 4

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


@lru_cache(maxsize=4)
def centred_grid(size: int) -> np.ndarray:
    """(y, x) pixel coordinates in [-0.5, 0.5], kept: the truth draws thousands of backgrounds per size."""
    grid = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    grid.flags.writeable = False
    return grid


def gradient_background(size: int, base: tuple[int, int, int], angle: float, strength: float) -> Image.Image:
    """A two-tone linear gradient around the base colour: per-item, low-frequency variation."""
    yy, xx = centred_grid(size)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy  # in [-0.71, 0.71]
    factor = 1.0 + strength * ramp
    rgb = np.empty((size, size, 3), dtype=np.uint8)
    for channel, value in enumerate(base):  # channel by channel: a third of the memory traffic of one broadcast
        rgb[..., channel] = np.clip(factor * value, 0, 255)
    return Image.fromarray(rgb)


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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
