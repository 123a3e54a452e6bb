"""The HTML memorization report: one self-contained file (images and plots embedded as data
URIs) that can be handed to a release board. Prompts and captions come from scraped data, so
the template autoescapes everything."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from scanner import __version__
from scanner.calibration import MatchingStatement, criterion_statement, quantile_name, verdict_statement, view_words
from scanner.errors import MemscanError, input_error, make_folder
from scanner.features import png_bytes
from scanner.store import Store

GALLERY_LIMIT = 60
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VERDICT_ORDER = "CASE verdict WHEN 'extracted' THEN 0 WHEN 'similar' THEN 1 WHEN 'unmatched' THEN 2 ELSE 3 END"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def stored_png(store: Store, relative: str) -> bytes | None:
    """A generation's PNG from the database's files folder; None when it is missing, or when the
    row's path leads outside that folder or to a file that is not a PNG: a crafted database never
    gets another file embedded in the report."""
    try:
        data = store.image_file(relative).read_bytes()
    except (MemscanError, OSError):
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return data_uri(buffer.getvalue())


def _open_index(config: dict):
    from scanner.index import TrainingIndex

    folder = config.get("match", {}).get("index_folder")
    if not folder or not (Path(folder) / "manifest.json").exists():
        return None
    return TrainingIndex(Path(folder))


def _duplication_plot(store: Store, run_id: str, index) -> str | None:
    """Each prompt's largest near-duplicate share against how often its caption is in the training set."""
    if index is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    copies = Counter(index.captions)
    rows = store.query(
        "SELECT p.text, coalesce(max(c.score), 0) AS share, bool_or(f.verdict = 'extracted') AS extracted "
        "FROM prompts p LEFT JOIN candidates c USING (run_id, prompt_id) "
        "LEFT JOIN findings f ON f.run_id = c.run_id AND f.candidate_id = c.candidate_id "
        "WHERE p.run_id = ? GROUP BY p.text", [run_id]).to_pylist()
    if not rows:
        return None
    x = np.array([max(copies.get(r["text"], 0), 0) for r in rows]) + 1
    y = np.array([r["share"] for r in rows])
    extracted = np.array([bool(r["extracted"]) for r in rows])
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    jitter = np.random.default_rng(0).uniform(0.9, 1.1, len(x))
    axes.scatter(x[~extracted] * jitter[~extracted], y[~extracted], s=18, alpha=0.6, label="not extracted")
    axes.scatter(x[extracted] * jitter[extracted], y[extracted], s=24, color="#b00", label="extracted")
    axes.set_xscale("log")
    axes.set_xlabel("copies of the caption in the training set + 1")
    axes.set_ylabel("share of generations in the largest clique")
    axes.set_ylim(-0.05, 1.05)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    uri = _figure_uri(figure)
    plt.close(figure)
    return uri


def _roc_plot(mia_rows: list[dict]) -> str | None:
    """ROC curves of the membership attacks (evaluation halves), from the stored curve points."""
    curves = [(r["subject"], json.loads(r["details"])["roc"], r["value"]) for r in mia_rows if r["metric"] == "mia_auc"]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.8, 4.2))
    for attack, points, auc in curves:
        fpr, tpr = zip(*points)
        axes.plot(fpr, tpr, label=f"{attack} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    uri = _figure_uri(figure)
    plt.close(figure)
    return uri


def _nearest_reference_generation(store: Store, reference_runs: list[str], prompt: str, training: np.ndarray) -> dict:
    """The reference model's generation of the same prompt nearest the training item: the contrast a
    fine-tune audit needs (a finding the base reproduces as well is not the fine-tune's doing)."""
    from scanner.distances import tiled_l2
    from scanner.features import load_image, resize

    best = None
    for path in store.prompt_thumbnails(reference_runs, prompt):
        file = store.image_file(path)
        if not file.is_file():
            continue
        image = resize(load_image(file), training.shape[0])
        distance = float(tiled_l2(image, training))
        if best is None or distance < best[0]:
            best = (distance, file)
    if best is None:
        return {"reference_uri": None, "reference_tiled_l2": None}
    return {"reference_uri": data_uri(best[1].read_bytes()), "reference_tiled_l2": best[0]}


def _gallery(store: Store, run_id: str, index, reference_runs: list[str] = ()) -> list[dict]:
    rows = store.query(f"SELECT * FROM findings WHERE run_id = ? ORDER BY {VERDICT_ORDER}, rank LIMIT {GALLERY_LIMIT}",
                       [run_id]).to_pylist()
    mia = {}
    for row in store.query("SELECT item_id, attack, score FROM mia_scores WHERE run_id = ?", [run_id]).to_pylist():
        mia.setdefault(row["item_id"], []).append(f"{row['attack']} {row['score']:.3f}")
    for row in rows:
        png = stored_png(store, row["medoid_image"])
        row["generation_uri"] = data_uri(png) if png else None
        row["training_uri"] = None
        row["reference_uri"] = row["reference_tiled_l2"] = None
        if index is not None and row["matched_item"] and index.has_item(row["matched_item"]):
            training = index.thumbnail(row["matched_item"])
            row["training_uri"] = data_uri(png_bytes(training))
            if reference_runs:
                row.update(_nearest_reference_generation(store, list(reference_runs), row["prompt"], training))
        row["mia"] = ", ".join(mia.get(row["matched_item"], []))
    return rows


def check_report_target(out: Path) -> None:
    """A report is one .html file: a mistyped --out never replaces a database, a script or a folder."""
    if out.suffix.lower() not in (".html", ".htm") or out.is_dir():
        raise input_error(out, "a report is written to an .html file; refusing to write anything else there")


def render_report(db: Path, out: Path) -> dict:
    """Write the report of every run in ``db`` to ``out``; returns what it counted, and the images
    it could not find (a database copied without its files folder still gets its report)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    check_report_target(out)
    environment = Environment(loader=PackageLoader("scanner.report", "templates"),
                              autoescape=select_autoescape(default=True, default_for_string=True))
    environment.filters["fmt"] = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    with Store(db, read_only=True) as store:
        runs = store.query("SELECT * FROM runs WHERE kind IN ('scan', 'demo') ORDER BY started_at").to_pylist()
        findings, duplication_plot, methods, summaries, fine_tune_audits = [], None, {}, [], []
        for run in runs:
            config = json.loads(run["config"])
            index = _open_index(config)
            counts = store.execute(
                "SELECT (SELECT count(*) FROM prompts WHERE run_id = $1), "
                "(SELECT count(*) FROM generations WHERE run_id = $1), "
                "(SELECT count(*) FROM generations WHERE run_id = $1 AND status = 'failed'), "
                "(SELECT count(*) FROM generations WHERE run_id = $1 AND degenerate), "
                "(SELECT count(*) FROM candidates WHERE run_id = $1), "
                "(SELECT count(*) FROM findings WHERE run_id = $1 AND verdict = 'extracted')", [run["run_id"]])[0]
            summaries.append({**run, "unseeded": config.get("seeded") is False, "prompts": counts[0], "generations": counts[1], "failed": counts[2],
                              "degenerate": counts[3], "candidates": counts[4], "extracted": counts[5],
                              "criterion": criterion_statement(store, run["run_id"]).lines(found_nothing=not counts[4]),
                              "timings": json.loads(run["timings"] or "{}"),
                              "config": json.dumps(config, indent=1), "versions": json.dumps(json.loads(run["versions"]), indent=1)})
            reference = config.get("reference")  # a fine-tune audit: scans of its reference model give the contrast
            reference_runs = [r["run_id"] for r in runs if reference and r["model_ref"] == reference["model_ref"]]
            if reference:
                fine_tune_audits.append({"run_id": run["run_id"], "model": run["model_ref"], "reference": reference["model_ref"],
                                         "reference_runs": reference_runs})
            findings += _gallery(store, run["run_id"], index, reference_runs)
            duplication_plot = duplication_plot or _duplication_plot(store, run["run_id"], index)
            sampling, clustering, matching = config.get("sampling", {}), config.get("cluster", {}), config.get("match", {})
            statement = criterion_statement(store, run["run_id"])
            methods = {"seeds": f"{sampling.get('seed_base', 0)} to {sampling.get('seed_base', 0) + sampling.get('samples_per_prompt', 0) - 1}",
                       "index": matching.get("index", ""), **{k: matching.get(k) for k in
                       ("extraction_ratio", "anchored_tiled_ratio", "nearest_margin", "similar_ratio", "anchor_n", "anchor_alpha")}}
            methods["verdicts_measured"] = verdict_statement(store, run["run_id"])
            if isinstance(statement, MatchingStatement):  # a model without text prompts: every generation matched
                methods["unconditional"] = True
                methods["classes"] = statement.classes
            else:
                clustering = statement.settings  # those the clusters were computed with (criterion_statement)
                methods.update(criterion=f"{clustering.get('criterion', 'clique')} of at least {clustering.get('min_clique')}",
                               threshold=f"{statement.threshold:.4f}", calibrated=statement.calibrated,
                               anchored=bool(np.isfinite(statement.ratio)), ratio=f"{statement.ratio:.3f}",
                               floor=f"{statement.floor:.4f}", anchor_prompts=clustering.get("anchor_prompts"),
                               anchor_seeds=clustering.get("anchor_seeds"), null_factor=clustering.get("null_factor"),
                               null_reference=quantile_name(clustering.get("null_quantile", 0.5)),
                               floor_factor=clustering.get("floor_factor"),
                               floor_reference=quantile_name(clustering.get("floor_quantile", 0.75)),
                               nulls=statement.nulls, tiles=clustering.get("tiles"),
                               views=[{"how": view_words(view),
                                       "ratio": f"{calibrated.get('ratio', float('nan')):.3f}",
                                       "floor": f"{calibrated.get('floor', float('nan')):.4f}"}
                                      for view, calibrated in statement.views.items()])
        mia_rows = store.query("SELECT * FROM metrics WHERE metric LIKE 'mia_%' ORDER BY subject, metric").to_pylist()
        idia_rows = store.query("SELECT * FROM idia_results ORDER BY predicted_member DESC, person").to_pylist()
        html = environment.get_template("report.html.j2").render(
            title=db.name, database=str(db), generated_at=dt.datetime.now().isoformat(timespec="seconds"),
            version=__version__, schema_version=store.schema_version(), runs=summaries, findings=findings,
            any_candidates=any(s["candidates"] for s in summaries), duplication_plot=duplication_plot,
            fine_tune_audits=fine_tune_audits,
            mia_rows=[r for r in mia_rows if r["metric"] != "mia_bucket_auc"], roc_plot=_roc_plot(mia_rows), idia_rows=idia_rows, methods=methods)
    make_folder(out.parent, "report folder")
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as error:
        raise input_error(out, f"cannot write the report ({error.strerror or error})") from None
    return {"runs": len(runs), "findings": len(findings), "extracted": sum(f["verdict"] == "extracted" for f in findings),
            "missing_images": [f["medoid_image"] for f in findings if f["generation_uri"] is None]}
