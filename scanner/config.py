"""Typed configuration, loadable from TOML; every value has a default that works on the demo.

A TOML file mirrors the dataclasses::

    model = "path/to/pipeline"
    prompts = "prompts.txt"
    db = "runs/scan.duckdb"

    [sampling]
    samples_per_prompt = 16
    num_inference_steps = 20

    [cluster]
    threshold = 0.08
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanner.errors import input_error


@dataclass(frozen=True)
class SamplingConfig:
    """How each prompt is sampled. A generation is identified by (prompt, seed, these settings)."""

    samples_per_prompt: int = 16
    batch_size: int = 32
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    seed_base: int = 0


@dataclass(frozen=True)
class ClusterConfig:
    """The memorization criterion: a clique of at least ``min_clique`` generations of one prompt
    whose pairwise tiled l2 is at most ``threshold`` (Carlini et al. 2023; threshold calibrated
    on the demo world, see docs/)."""

    threshold: float = 0.08
    min_clique: int = 5
    tiles: int = 4


@dataclass(frozen=True)
class ScanConfig:
    model: str = ""
    prompts: str = ""
    db: str = "runs/scan.duckdb"
    device: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], source: Path, section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"[{section}] " if section else ""
        raise input_error(source, f"unknown setting {where}{', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        nested = {"sampling": SamplingConfig, "cluster": ClusterConfig}.get(name) if cls is ScanConfig else None
        if nested is not None:
            if not isinstance(value, dict):
                raise input_error(source, f"[{name}] must be a table")
            kwargs[name] = _build(nested, value, source, name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_scan_config(path: str | Path) -> ScanConfig:
    """Read a TOML scan configuration; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "no such configuration file")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise input_error(path, f"not valid TOML ({error})") from None
    return _build(ScanConfig, values, path, "")


def override(config: Any, **changes: Any) -> Any:
    """A copy with the given fields replaced; ``None`` means "keep the configured value"."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
