"""Model adapters: one small interface per model kind, one file per model family.

Adapters import torch, diffusers, transformers and open_clip lazily, after
:func:`force_offline` has set the hub's offline switches: memscan never reaches the network.
Pickled weights are refused unless the user opts in (:func:`refuse_pickles`), and a loader's
advice to unpickle without torch's safe loader is never passed on (:func:`load_failure`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from scanner.errors import input_error

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                     "DIFFUSERS_OFFLINE": "1"}


def force_offline() -> None:
    """Set the Hugging Face offline switches before any hub-aware library is imported."""
    for name, value in OFFLINE_VARIABLES.items():
        os.environ[name] = value


def refuse_pickles(files: Iterable[Path], allow_pickle: bool) -> None:
    """Loading a pickle can run any code in it: a model folder or weights file from someone else
    may hold only safetensors unless the user opted in with --allow-pickle."""
    if allow_pickle:
        return
    for path in sorted(files):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise input_error(path, "pickled weights are never loaded (unpickling can run code); convert them to "
                                    ".safetensors, or pass --allow-pickle if you trust this file")


def load_failure(error: Exception) -> str:
    """A loader's error as one line. Torch's advice to retry with ``weights_only=False`` (which runs
    whatever code the pickle holds) is replaced, never passed on."""
    text = str(error).strip()
    if "weights_only" in text or "weights only" in text.lower():
        return "a pickled weights file did not pass torch's safe (weights_only) loader, and is loaded no other way"
    return text.splitlines()[0] if text else type(error).__name__
