"""LoRA adapters on a loaded pipeline (``--lora FILE[:SCALE]``, repeatable).

Loaded with diffusers' own ``load_lora_weights``, which reads its own format and kohya-style
``.safetensors`` files, for every family whose pipeline has LoRA support; activated together
with ``set_adapters`` at their scales, never fused (the base weights stay as they are, so a
LoRA at scale 0 is the base model). The files and scales are part of the model's identity: the
model hash covers the base weights, each LoRA file's bytes and its scale, so a run, its
generations and its scores can never mix a fine-tune with its base.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from scanner.errors import MemscanError, input_error
from scanner.models import load_failure, refuse_pickles


@dataclass(frozen=True)
class Lora:
    path: str      # absolute, so a worker started elsewhere finds it
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Lora":
        """``FILE`` or ``FILE:SCALE`` (the last colon counts only when a number follows it)."""
        path, _, scale = text.rpartition(":")
        try:
            value = float(scale)
        except ValueError:
            return cls(str(Path(text).resolve()))
        if not path:
            return cls(str(Path(text).resolve()))
        if not math.isfinite(value):
            raise MemscanError(f"--lora {text}: the scale {scale} is not a finite number")
        return cls(str(Path(path).resolve()), value)

    def describe(self) -> str:
        return f"{Path(self.path).name}@{self.scale:g}"


def named_with(model_ref: str, loras: tuple[Lora, ...]) -> str:
    """A model's name with its LoRAs, as runs record it (and the report finds a reference's runs by)."""
    return model_ref + "".join(f" + LoRA {lora.describe()}" for lora in loras)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_lora_files(loras: tuple[Lora, ...], allow_pickle: bool) -> None:
    """Every LoRA file exists and is safetensors (unless pickles are allowed): one line before any weights load."""
    for lora in loras:
        path = Path(lora.path)
        if not path.is_file():
            raise input_error(path, "no such LoRA file (--lora FILE[:SCALE])")
        refuse_pickles([path], allow_pickle)


def apply_loras(pipeline, loras: tuple[Lora, ...], kind: str) -> None:
    """Load each LoRA into ``pipeline`` under its own adapter name and activate all at their scales.
    A file none of whose weights land in the model (another family's LoRA) is refused: diffusers
    would otherwise only warn, and the audit would silently be of the base model."""
    if not loras:
        return
    if not hasattr(pipeline, "load_lora_weights"):
        raise MemscanError(f"--lora: diffusers has no LoRA support for a {kind}")
    names = []
    for number, lora in enumerate(loras):
        path, name = Path(lora.path), f"memscan_lora_{number}"
        try:
            pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        except Exception as error:  # diffusers and peft raise many kinds; the user needs the first line
            mismatch = re.search(r"size mismatch for ([\w.]+)", str(error))
            problem = (f"its weights' shapes do not fit this model's modules, first {mismatch.group(1)} (a LoRA of "
                       "another architecture?)" if mismatch else load_failure(error))
            raise input_error(path, f"cannot load as a LoRA of a {kind}: {problem}") from None
        if not any(name in adapters for adapters in pipeline.get_list_adapters().values()):
            raise input_error(path, f"none of its weights match this {kind}'s modules, first {first_key(path)} "
                                    "(a LoRA of another architecture?)")
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[lora.scale for lora in loras])


def first_key(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return next(iter(handle.keys()), "(none: the file holds no tensors)")


def with_loras(model_hash: str, loras: tuple[Lora, ...]) -> str:
    """The identity of the base model with these LoRAs at these scales."""
    if not loras:
        return model_hash
    digest = hashlib.sha256(model_hash.encode())
    for lora in loras:
        digest.update(f"|{file_sha256(Path(lora.path))}@{lora.scale!r}".encode())
    return digest.hexdigest()
