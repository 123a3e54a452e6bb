"""Model adapters: one small interface per model kind, one file per model family.

Adapters import torch, diffusers, transformers and open_clip lazily, after
:func:`force_offline` has set the hub's offline switches: memscan never reaches the network.
"""

from __future__ import annotations

import os

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                     "DIFFUSERS_OFFLINE": "1"}


def force_offline() -> None:
    """Set the Hugging Face offline switches before any hub-aware library is imported."""
    for name, value in OFFLINE_VARIABLES.items():
        os.environ[name] = value
