"""The ``memscan`` command: parses flags, calls the stages, prints. No logic of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from scanner.errors import MemscanError, input_error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit a text-to-image checkpoint for training data it memorized and can emit.")
console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped prompts in logs

DEFAULT_DEMO_DB = Path("runs/demo.duckdb")


def _print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    table = Table(title=title)
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row])
    console.print(table)


def _print_findings(store, run_id: str, limit: int = 20) -> None:
    rows = store.query(
        "SELECT rank, cluster_size AS size, n_generations AS of_n, round(mean_distance, 4) AS mean_tiled_l2, "
        "verdict, prompt FROM findings WHERE run_id = ? ORDER BY rank LIMIT ?", [run_id, limit]).to_pylist()
    if not rows:
        console.print("No prompt collapsed onto one image: no memorization candidates.")
        return
    _print_table(f"Memorization candidates (top {len(rows)})", list(rows[0].keys()), [list(r.values()) for r in rows])


def _print_where(db: Path, run_id: str) -> None:
    console.print(f"\nDatabase: {db}  (run {run_id})")
    console.print(f"Query it:  duckdb {db} \"SELECT rank, prompt, cluster_size, verdict FROM findings ORDER BY rank\"")
    console.print(f"       or: memscan sql {db} \"SELECT * FROM findings\"")


def _load_embedder(features):
    """The CLIP that embeds generations: the configured open_clip model, else the demo CLIP."""
    from scanner import demo as demo_world
    from scanner.models.open_clip_model import OpenClip

    if not features.embeddings:
        return None
    if features.clip_model:
        return OpenClip.load(features.clip_model, pretrained=features.clip_pretrained or None)
    return OpenClip.load(demo_world.CLIP_MODEL)


@app.command()
def demo(
    db: Path = typer.Option(DEFAULT_DEMO_DB, help="DuckDB file to write (created if missing)."),
    samples_per_prompt: int = typer.Option(16, help="Generations per prompt (different seeds)."),
    batch_size: int = typer.Option(64, help="Images per sampling batch, across prompts."),
    num_inference_steps: int = typer.Option(20, "--steps", help="DDIM sampling steps."),
    guidance_scale: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    per_bucket: int = typer.Option(15, help="Prompts from each of the x10, x1 and non-member buckets."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Scan the bundled demo model on demo prompts and score the findings against the ground truth."""
    from scanner import demo as demo_world
    from scanner.config import SamplingConfig, ScanConfig
    from scanner.demo.evaluate import score_demo_run
    from scanner.generate import Prompt
    from scanner.models.diffusers_t2i import DiffusersT2I
    from scanner.scan import run_scan
    from scanner.store import Store

    items = demo_world.demo_items(per_bucket=per_bucket)
    prompts = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"]) for r in items]
    config = ScanConfig(model=str(demo_world.SD_MODEL), prompts="demo", db=str(db), sampling=SamplingConfig(
        samples_per_prompt=samples_per_prompt, batch_size=batch_size, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale))
    console.print(f"Demo: {len(prompts)} prompts x {samples_per_prompt} seeds on {demo_world.SD_MODEL.name}")
    model = DiffusersT2I.load(demo_world.SD_MODEL)
    embedder = _load_embedder(config.features)
    with Store(db) as store:
        result = run_scan(store, model, prompts, config, kind="demo", show_progress=not no_progress, embedder=embedder)
        _print_findings(store, result.run_id)
        scores = score_demo_run(store, result.run_id)
        _print_table("Against the ground truth (per duplication bucket)", ["bucket", "prompts", "flagged", "reproduced"],
                     [[s.bucket, s.prompts, s.flagged, s.reproduced] for s in scores])
        console.print(f"Timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
        _print_where(db, result.run_id)


@app.command()
def scan(
    model: Path = typer.Option(None, help="Diffusers pipeline folder or single .safetensors file (default: the demo model)."),
    single_file_config: Optional[Path] = typer.Option(None, help="For a single-file --model: a local pipeline folder with its model_index.json."),
    prompts: Path = typer.Option(None, help="Prompts: .txt (one per line), .csv or .parquet (default: the demo captions)."),
    caption_column: str = typer.Option("caption", help="Column holding the prompts in a CSV or Parquet file."),
    db: Path = typer.Option(None, help="DuckDB file to write (default: runs/scan.duckdb)."),
    images_dir: Optional[Path] = typer.Option(None, help="Folder for generated images (default: <db>.files beside the database)."),
    config: Optional[Path] = typer.Option(None, help="TOML configuration; flags given here override it."),
    samples_per_prompt: Optional[int] = typer.Option(None, help="Generations per prompt (default: 16)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per sampling batch (default: 32)."),
    num_inference_steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: 20)."),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale (default: 5.0)."),
    seed_base: Optional[int] = typer.Option(None, help="First seed; prompt i uses seeds base..base+N-1 (default: 0)."),
    threshold: Optional[float] = typer.Option(None, help="Clique edge threshold, tiled l2 (default: 0.08)."),
    min_clique: Optional[int] = typer.Option(None, help="Smallest clique that makes a candidate (default: 5)."),
    criterion: Optional[str] = typer.Option(None, help="clique (Carlini) or component (dense components) (default: clique)."),
    clip_model: Optional[str] = typer.Option(None, help="open_clip folder or architecture name for embeddings (default: the demo CLIP)."),
    clip_pretrained: Optional[str] = typer.Option(None, help="Weights file when --clip-model is an architecture name."),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="Skip CLIP embeddings (hash proposals only)."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Sample a model on many prompts and seeds, and find prompts whose generations collapse."""
    from scanner import demo as demo_world
    from scanner.config import ScanConfig, load_scan_config, override
    from scanner.generate import Prompt
    from scanner.models.diffusers_t2i import DiffusersT2I
    from scanner.prompts import read_prompts
    from scanner.scan import run_scan
    from scanner.store import Store

    settings = load_scan_config(config) if config else ScanConfig(db="runs/scan.duckdb")
    settings = override(settings, model=str(model) if model else None,
                        single_file_config=str(single_file_config) if single_file_config else None, prompts=str(prompts) if prompts else None,
                        db=str(db) if db else None, images_dir=str(images_dir) if images_dir else None, device=device)
    try:
        settings = override(settings, sampling=override(settings.sampling, samples_per_prompt=samples_per_prompt,
                                                        batch_size=batch_size, num_inference_steps=num_inference_steps,
                                                        guidance_scale=guidance_scale, seed_base=seed_base),
                            features=override(settings.features, clip_model=clip_model, clip_pretrained=clip_pretrained,
                                              embeddings=False if no_embeddings else None),
                            cluster=override(settings.cluster, threshold=threshold, min_clique=min_clique, criterion=criterion))
    except ValueError as error:
        raise MemscanError(f"invalid setting: {error}") from None
    if settings.prompts:
        prompt_list = read_prompts(settings.prompts, caption_column)
    else:
        prompt_list = [Prompt.from_text(r["caption"], source="demo", source_item_id=r["item_id"])
                       for r in demo_world.demo_items()]
    model_path = Path(settings.model) if settings.model else demo_world.SD_MODEL
    loaded = DiffusersT2I.load(model_path, device=settings.device, single_file_config=settings.single_file_config or None)
    embedder = _load_embedder(settings.features)
    with Store(settings.db, files_dir=settings.images_dir or None) as store:
        result = run_scan(store, loaded, prompt_list, settings, show_progress=not no_progress, embedder=embedder)
        if result.resumed:
            console.print(f"Resumed run {result.run_id}: {result.counts['resumed_from']} generations were already stored.")
        _print_findings(store, result.run_id)
        _print_where(Path(settings.db), result.run_id)


@app.command()
def sql(
    db: Path = typer.Argument(..., help="A memscan DuckDB file."),
    query: str = typer.Argument(..., help="SQL to run, read-only."),
    output_format: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out: Optional[Path] = typer.Option(None, help="Write the result to this file instead of printing it."),
) -> None:
    """Run a read-only SQL query on a memscan database."""
    import duckdb
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from scanner.store import Store

    if output_format not in ("table", "csv", "json", "parquet"):
        raise MemscanError(f"--format {output_format}: expected table, csv, json or parquet")
    if output_format == "parquet" and out is None:
        raise MemscanError("--format parquet needs --out FILE")
    with Store(db, read_only=True) as store:
        try:
            result = store.query(query)
        except duckdb.Error as error:
            raise input_error(db, f"query failed: {str(error).splitlines()[0]}") from None
    if output_format == "parquet":
        pq.write_table(result, out)
    elif output_format == "csv":
        target = out or sys.stdout.buffer
        pacsv.write_csv(result, target)
    elif output_format == "json":
        text = json.dumps(result.to_pylist(), default=str, indent=1)
        out.write_text(text) if out else print(text)
    else:
        _print_table("", result.column_names, [list(r.values()) for r in result.to_pylist()])


@app.command()
def env() -> None:
    """Print the versions memscan runs with, for bug reports."""
    from scanner.generate import library_versions
    from scanner.store import SCHEMA_VERSION

    import torch

    versions = library_versions()
    versions["schema_version"] = str(SCHEMA_VERSION)
    versions["cuda"] = str(torch.cuda.is_available())
    for name, version in versions.items():
        console.print(f"{name:16} {version}")


def main() -> None:
    try:
        app()
    except MemscanError as error:
        print(f"memscan: error: {error}", file=sys.stderr)
        sys.exit(2)
