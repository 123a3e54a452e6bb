"""Per-image features: perceptual hashes, degenerate-image flags, content-addressed files.

Perceptual hashes are 64-bit pHash and dHash from imagehash, stored as unsigned integers
(hash bits in imagehash's row-major order, first bit most significant). They depend on
Pillow's resampling, so runs record Pillow's version.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from scanner.errors import input_error

# a generation whose pixels barely vary (an all-black safety-checker output, a constant image)
# would join every other such image in one false near-duplicate cluster
DEGENERATE_STD = 0.02


def hash_to_int(image_hash) -> int:
    """imagehash's boolean matrix as an unsigned 64-bit integer."""
    bits = np.asarray(image_hash.hash, dtype=np.uint8).ravel()
    return int("".join(map(str, bits)), 2)


def perceptual_hashes(image: np.ndarray) -> tuple[int, int]:
    """(pHash, dHash) of one uint8 [H, W, 3] image."""
    import imagehash

    pil = Image.fromarray(image)
    return hash_to_int(imagehash.phash(pil)), hash_to_int(imagehash.dhash(pil))


def is_degenerate(image: np.ndarray) -> bool:
    return float(np.std(image.astype(np.float32) / 255.0)) < DEGENERATE_STD


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with rounding, the same rule diffusers' ``numpy_to_pil`` uses."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_content_addressed(data: bytes, root: Path, suffix: str = ".png") -> tuple[str, str]:
    """Write bytes under ``root/images/ab/<sha256><suffix>`` atomically; returns (relative path, sha256).

    Writing to a temporary name and renaming means a killed process never leaves a torn file
    under a final name, and writing the same content twice is harmless."""
    digest = hashlib.sha256(data).hexdigest()
    relative = f"images/{digest[:2]}/{digest}{suffix}"
    target = root / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)
    return relative, digest


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Exactly size x size (bicubic), so generations and training images compare pixel for pixel."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """A size x size copy for pixel distances; images already that small are kept as they are."""
    if image.shape[0] <= size and image.shape[1] <= size:
        return image
    return resize(image, size)


def load_image(path: Path) -> np.ndarray:
    """An image file as RGB pixels; a missing or unreadable file (a database whose images folder
    was moved, a corrupt file) is one line naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as error:
        raise input_error(path, "missing" if isinstance(error, FileNotFoundError) else "not a readable image") from None
