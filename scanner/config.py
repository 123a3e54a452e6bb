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

    [ray]
    address = "auto"
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
    triage: float = 1.0  # mass-sample only this top fraction of prompts by the memorization detector
    triage_detector: str = "seed_agreement"  # or wen (Wen et al. 2024), norm_align (Asthana and Belagiannis 2026): they rank worse on the demo
    # seeds the detector draws per prompt: with fewer, a prompt that collapses on half its seeds is missed by luck
    # (docs/MEASUREMENTS.md); they cost about 2% of 16 full seeds each
    triage_seeds: int = 4
    # draw no more seeds for a prompt once they cannot change whether it is flagged (same flagged
    # prompts as the full plan, fewer generations to show for each; see scanner/scan.py)
    stop_early: bool = False

    def __post_init__(self) -> None:
        from scanner.mia.triage import DETECTORS

        if self.triage_detector not in DETECTORS:
            raise ValueError(f"triage_detector must be one of {', '.join(DETECTORS)}, not {self.triage_detector!r}")
        if self.triage_seeds < 2:
            raise ValueError("triage_seeds must be at least 2 (seed agreement compares two samples)")


@dataclass(frozen=True)
class FeatureConfig:
    """What is computed for every generation besides its perceptual hashes."""

    clip_model: str = ""        # open_clip folder or architecture name; "" = the demo CLIP
    clip_pretrained: str = ""   # weights file when clip_model is an architecture name
    embeddings: bool = True     # CLIP image embeddings (FAISS proposes near-duplicate edges from them)
    thumbnail_size: int = 64    # pixel distances are computed on thumbnails no larger than this


@dataclass(frozen=True)
class ClusterConfig:
    """The memorization criterion: among a prompt's generations, a clique of at least
    ``min_clique`` whose pairwise tiled l2 is at most ``threshold`` (Carlini et al. 2023;
    defaults calibrated on the demo world, see docs/CALIBRATION.md), or with
    ``criterion = "component"`` a connected component of at least ``min_clique`` whose edge
    density is at least ``min_density``."""

    threshold: float = 0.02
    min_clique: int = 8
    tiles: int = 4
    criterion: str = "clique"
    min_density: float = 0.5
    # a prompt with more generations than this gets candidate edges from FAISS (embedding
    # cosine >= min_cosine) and from pHash (Hamming <= max_hamming) instead of all pairs
    all_pairs_limit: int = 64
    min_cosine: float = 0.9
    max_hamming: int = 12
    cross_prompt: bool = True

    def __post_init__(self) -> None:
        if self.criterion not in ("clique", "component"):
            raise ValueError(f"criterion must be 'clique' or 'component', not {self.criterion!r}")
        if self.min_clique < 2:
            raise ValueError("min_clique must be at least 2")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold is a tiled l2 on [0, 1] pixels: between 0 and 1")


@dataclass(frozen=True)
class MatchConfig:
    """How candidates are matched to training items and judged (see scanner/match.py)."""

    k: int = 10                 # CLIP neighbours proposed per generation, beyond the anchor set
    max_hamming: int = 10       # pHash neighbours proposed per generation
    extraction_l2: float = 0.15
    extraction_tiled_l2: float = 0.10  # and close everywhere: no tile differs by more than this
    similar_l2: float = 0.25
    anchor_n: int = 50
    anchor_alpha: float = 0.5
    tiles: int = 4
    keep: int = 5               # matches stored per candidate: the closest distinct items


@dataclass(frozen=True)
class RayConfig:
    """Where sampling, index embedding and membership scoring run when a Ray cluster does the work
    (see docs/SCALING.md). ``address`` "" runs everything in this process."""

    address: str = ""            # "local" starts a cluster in-process, "auto" joins a running one, or host:port
    workers: int = 0             # 0: one per GPU of the cluster, else one per cpus_per_worker CPUs
    cpus_per_worker: int = 1
    in_flight: int = 2           # units queued per worker, so none idles between units
    max_task_retries: int = 3    # a unit whose worker dies is retried this many times
    flush_rows: int = 4096       # the driver ingests results in transactions of about this many rows
    flush_seconds: float = 2.0   # ... or at least this often

    def __post_init__(self) -> None:
        if self.cpus_per_worker < 1 or self.workers < 0 or self.in_flight < 1:
            raise ValueError("workers must be >= 0, cpus_per_worker and in_flight >= 1")


@dataclass(frozen=True)
class ScanConfig:
    model: str = ""
    single_file_config: str = ""  # a local pipeline folder describing a single-file checkpoint
    prompts: str = ""
    db: str = "runs/scan.duckdb"
    images_dir: str = ""  # "" = beside the database, in <db>.files/
    device: str | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    index: str = ""  # a training-set index (name under indexes/ or folder) to match candidates against
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.sampling.stop_early and self.cluster.criterion != "clique":
            raise ValueError("stop_early needs the clique criterion: a component can lose its edge density as seeds are added")

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
        nested = {"sampling": SamplingConfig, "features": FeatureConfig, "cluster": ClusterConfig,
                  "match": MatchConfig, "ray": RayConfig}.get(name) if cls is ScanConfig else None
        if nested is not None:
            if not isinstance(value, dict):
                raise input_error(source, f"[{name}] must be a table")
            kwargs[name] = _build(nested, value, source, name)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise input_error(source, str(error)) from None


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
