"""A corpus of user mistakes, each run through the ``memscan`` entry point (``scanner.cli.main``,
in this process so that a model is imported once): every one ends with exit code 2, one line on
stderr and no stack trace, and changes no file but the command's own outputs (every file in the
test's folder is checksummed before and after). Each case fails before any model samples, so
the corpus stays cheap."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from cli_checks import assert_one_line_error, checksums, run_main
from scanner.demo import FAMILY_MODELS
from scanner.store import Store


def folder(path: Path) -> None:
    path.mkdir()


def memscan_db(path: Path) -> None:
    Store(path).close()


def schema_version(value: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        Store(path).close()
        connection = duckdb.connect(str(path))
        connection.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [value])
        connection.close()
    return make


def foreign_db(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.close()


def odd_schema_info(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE schema_info (x INTEGER)")
    connection.close()


def sqlite_db(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.commit()
    connection.close()


def images(count: int) -> Callable[[Path], None]:
    """An image folder with ``count`` captioned PNGs (a training set, a labelled set, a person)."""
    def make(path: Path) -> None:
        path.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path / f"{i}.png")
            (path / f"{i}.txt").write_text(f"item {i}")
    return make


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    args: tuple[str, ...]
    files: dict[str, str | bytes | Callable[[Path], None]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # what the command may create or change
    needle: str = ""                # a word the one line must hold (the file it names, the flag)


PROMPTS = {"p.txt": "a red circle\n"}
SET = {"set": images(2)}
CONFIG = "scan.toml"


def scan_case(kind: str, name: str, args: tuple[str, ...], files: dict | None = None, needle: str = "",
              db: str | None = None) -> Case:
    """A ``memscan scan`` case. Without ``db`` it writes a new database, its own output (a scan
    opens its database before loading models); with ``db`` the database is an input to keep."""
    outputs = () if db else ("x.duckdb", "x.duckdb.wal")
    return Case(kind, name, ("scan", *args, "--db", db or "x.duckdb"), files or {}, outputs, needle)


def config(text: str | bytes, needle: str) -> tuple[tuple[str, ...], dict, str]:
    return ("--config", CONFIG), {CONFIG: text}, needle


CASES = [
    # a file or folder that is not there
    scan_case("missing file", "scan model", ("--model", "nope", "--prompts", "p.txt"), PROMPTS, needle="nope"),
    scan_case("missing file", "scan prompts", ("--prompts", "nope.txt"), needle="nope.txt"),
    scan_case("missing file", "scan config", ("--config", "nope.toml"), needle="nope.toml"),
    Case("missing file", "index source", ("index", "build", "nope", "--name", "x", "--root", "ix"), needle="nope"),
    Case("missing file", "index stats", ("index", "stats", "nope", "--root", "ix"), needle="nope"),
    Case("missing file", "index query", ("index", "query", "nope", "--text", "a cat", "--root", "ix"), needle="nope"),
    Case("missing file", "mia eval members", ("mia", "eval", "--members", "nope", "--nonmembers", "set"), SET, needle="nope"),
    Case("missing file", "mia score items", ("mia", "score", "--items", "nope"), needle="nope"),
    Case("missing file", "mia dataset suspect", ("mia", "dataset", "--suspect", "nope", "--reference", "set"), SET, needle="nope"),
    Case("missing file", "idia people", ("idia", "--people", "nope", "--names", "names.txt"), {"names.txt": "alice\n"}, needle="nope"),
    Case("missing file", "idia names", ("idia", "--people", "people", "--names", "nope.txt"),
         {"people/alice": images(1)}, needle="nope.txt"),
    scan_case("missing file", "prompts from an index", ("--prompts-from-index", "nope"), needle="nope"),
    scan_case("missing file", "scan index", ("--prompts", "p.txt", "--index", "nope"), PROMPTS, needle="nope"),
    scan_case("missing file", "scan clip model", ("--prompts", "p.txt", "--clip-model", "nope"), PROMPTS, needle="nope"),
    Case("missing file", "sql database", ("sql", "nope.duckdb", "SELECT 1"), needle="nope.duckdb"),
    Case("missing file", "report database", ("report", "nope.duckdb"), needle="nope.duckdb"),
    # a file of another kind than the one asked for
    scan_case("wrong file type", "prompts not parquet", ("--prompts", "p.parquet"),
         {"p.parquet": "a red circle"}, needle="p.parquet"),
    scan_case("wrong file type", "prompts a folder", ("--prompts", "dir"), {"dir": folder}, needle="dir"),
    scan_case("wrong file type", "prompts not text", ("--prompts", "p.txt"),
         {"p.txt": b"\xff\xfe\x00bad"}, needle="p.txt"),
    scan_case("wrong file type", "model folder without model_index.json", ("--model", "m", "--prompts", "p.txt"),
         {"m": folder, **PROMPTS}, needle="m"),
    scan_case("wrong file type", "model_index.json not JSON", ("--model", "m", "--prompts", "p.txt"),
         {"m/model_index.json": "{not json", **PROMPTS}, needle="model_index.json"),
    scan_case("wrong file type", "model safetensors garbage", ("--model", "m.safetensors", "--prompts", "p.txt"),
         {"m.safetensors": b"garbage", **PROMPTS}, needle="m.safetensors"),
    scan_case("wrong file type", "model pickled checkpoint", ("--model", "m.ckpt", "--prompts", "p.txt"),
         {"m.ckpt": b"\x80\x04garbage", **PROMPTS}, needle="m.ckpt"),
    scan_case("wrong file type", "config a folder", ("--config", "c"), {"c": folder}, needle="c"),
    Case("wrong file type", "sql on a text file", ("sql", "notes.duckdb", "SELECT 1"), {"notes.duckdb": "hello"}, needle="notes.duckdb"),
    Case("wrong file type", "sql on a folder", ("sql", "d.duckdb", "SELECT 1"), {"d.duckdb": folder}, needle="d.duckdb"),
    Case("wrong file type", "sql on SQLite", ("sql", "s.db", "SELECT 1"), {"s.db": sqlite_db}, needle="s.db"),
    Case("wrong file type", "sql on an empty file", ("sql", "e.duckdb", "SELECT 1"), {"e.duckdb": ""}, needle="e.duckdb"),
    Case("wrong file type", "report on a text file", ("report", "notes.duckdb", "--out", "r.html"), {"notes.duckdb": "hello"},
         needle="notes.duckdb"),
    Case("wrong file type", "index source a text file", ("index", "build", "notes.txt", "--name", "x", "--root", "ix"),
         {"notes.txt": "hello"}, needle="notes.txt"),
    Case("wrong file type", "index source a broken tar", ("index", "build", "s.tar", "--name", "x", "--root", "ix"),
         {"s.tar": b"not a tar"}, needle="s.tar"),
    Case("wrong file type", "index table without the image column", ("index", "build", "t.csv", "--name", "x", "--root", "ix"),
         {"t.csv": "file,caption\na.png,a cat\n"}, needle="t.csv"),
    Case("wrong file type", "index table not parquet", ("index", "build", "t.parquet", "--name", "x", "--root", "ix"),
         {"t.parquet": "nope"}, needle="t.parquet"),
    Case("wrong file type", "index manifest not JSON", ("index", "stats", "ix/x", "--root", "ix"),
         {"ix/x/manifest.json": "{oops"}, needle="manifest.json"),
    Case("wrong file type", "idia labels without their columns", ("idia", "--people", "people", "--names", "names.txt",
                                                                  "--labels", "labels.csv"),
         {"people/alice": images(1), "names.txt": "alice\n", "labels.csv": "name\nalice\n"}, needle="labels.csv"),
    Case("wrong file type", "idia mapping without its columns", ("idia", "--people", "people", "--names", "names.txt",
                                                                 "--mapping", "map.csv"),
         {"people/alice": images(1), "names.txt": "alice\n", "map.csv": "a,b\nx,y\n"}, needle="map.csv"),
    Case("wrong file type", "mia members a text file", ("mia", "eval", "--members", "notes.txt", "--nonmembers", "set"),
         {"notes.txt": "hello", **SET}, needle="notes.txt"),
    Case("wrong file type", "idia people a file", ("idia", "--people", "notes.txt", "--names", "names.txt"),
         {"notes.txt": "hello", "names.txt": "alice\n"}, needle="notes.txt"),
    # configuration files that are not TOML, or not memscan's
    scan_case("malformed config", "missing value", *config("model = \n", "not valid TOML")),
    scan_case("malformed config", "unclosed table", *config("[sampling\n", "not valid TOML")),
    scan_case("malformed config", "duplicate key", *config("db = 'a'\ndb = 'b'\n", "not valid TOML")),
    scan_case("malformed config", "binary", *config(b"\x00\xff\xfe", CONFIG)),
    scan_case("malformed config", "section not a table", *config("sampling = 3\n", "[sampling] must be a table")),
    scan_case("malformed config", "text setting a number", *config("[ray]\naddress = 3\n", "address")),
    scan_case("malformed config", "switch setting a string", *config("[features]\nembeddings = 'yes'\n", "embeddings")),
    scan_case("unknown setting", "top level", *config("modle = 'x'\n", "modle")),
    scan_case("unknown setting", "in a section", *config("[sampling]\nsamples_per_promt = 3\n", "samples_per_promt")),
    scan_case("unknown setting", "unknown section", *config("[sampler]\nsteps = 3\n", "sampler")),
    scan_case("unknown setting", "cluster typo", *config("[cluster]\nthresold = 0.1\n", "thresold")),
    # numbers that are not numbers, or out of their range
    scan_case("bad number", "samples not a number", ("--samples-per-prompt", "abc"), needle="--samples-per-prompt"),
    scan_case("bad number", "samples 0", ("--samples-per-prompt", "0", "--prompts", "p.txt"), PROMPTS,
         needle="--samples-per-prompt"),
    scan_case("bad number", "samples negative", ("--samples-per-prompt", "-3", "--prompts", "p.txt"),
         PROMPTS, needle="--samples-per-prompt"),
    scan_case("bad number", "batch size 0", ("--batch-size", "0", "--prompts", "p.txt"), PROMPTS,
         needle="--batch-size"),
    scan_case("bad number", "steps 0", ("--steps", "0", "--prompts", "p.txt"), PROMPTS, needle="--steps"),
    scan_case("bad number", "guidance nan", ("--guidance", "nan", "--prompts", "p.txt"), PROMPTS,
         needle="--guidance"),
    scan_case("bad number", "guidance inf", ("--guidance", "inf", "--prompts", "p.txt"), PROMPTS,
         needle="--guidance"),
    scan_case("bad number", "threshold above 1", ("--threshold", "2", "--prompts", "p.txt"), PROMPTS,
         needle="threshold"),
    scan_case("bad number", "threshold not a number", ("--threshold", "x"), needle="--threshold"),
    scan_case("bad number", "min clique 1", ("--min-clique", "1", "--prompts", "p.txt"), PROMPTS,
         needle="min"),
    scan_case("bad number", "min clique above the seeds", ("--min-clique", "9", "--samples-per-prompt", "8", "--prompts", "p.txt"),
              PROMPTS, needle="--min-clique"),
    scan_case("bad number", "triage 0", ("--triage", "0", "--prompts", "p.txt"), PROMPTS, needle="--triage"),
    scan_case("bad number", "triage above 1", ("--triage", "1.5", "--prompts", "p.txt"), PROMPTS,
         needle="--triage"),
    scan_case("bad number", "triage seeds 1", ("--triage-seeds", "1", "--prompts", "p.txt"), PROMPTS,
         needle="triage"),
    scan_case("bad number", "ray workers negative", ("--ray", "local", "--ray-workers", "-1", "--prompts", "p.txt"), PROMPTS,
              needle="workers"),
    scan_case("bad number", "config samples a string", *config("[sampling]\nsamples_per_prompt = 'many'\n", "samples_per_prompt")),
    scan_case("bad number", "config threshold a string", *config("[cluster]\nthreshold = 'x'\n", "threshold")),
    scan_case("bad number", "config batch size a fraction", *config("[sampling]\nbatch_size = 1.5\n", "batch_size")),
    Case("bad number", "demo per bucket 0", ("demo", "--per-bucket", "0"), needle="--per-bucket"),
    Case("bad number", "mia seed negative", ("mia", "eval", "--seed", "-1"), needle="--seed"),
    Case("bad number", "mia dataset alpha", ("mia", "dataset", "--alpha", "2"), needle="--alpha"),
    Case("bad number", "idia tau", ("idia", "--tau", "0"), needle="--tau"),
    Case("bad number", "index thumbnail size", ("index", "build", "set", "--name", "x", "--root", "ix", "--thumbnail-size", "0"),
         SET, needle="thumbnail"),
    # a choice that is not one of the choices
    scan_case("bad choice", "criterion", ("--criterion", "bogus", "--prompts", "p.txt"), PROMPTS,
         needle="criterion"),
    scan_case("bad choice", "triage detector", ("--triage-detector", "bogus", "--prompts", "p.txt"),
         PROMPTS, needle="triage"),
    Case("bad choice", "sql format", ("sql", "scan.duckdb", "SELECT 1", "--format", "xml"), {"scan.duckdb": memscan_db},
         needle="--format"),
    Case("bad choice", "parquet without --out", ("sql", "scan.duckdb", "SELECT 1", "--format", "parquet"),
         {"scan.duckdb": memscan_db}, needle="--out"),
    Case("bad choice", "table to a file", ("sql", "scan.duckdb", "SELECT 1", "--out", "r.txt"), {"scan.duckdb": memscan_db},
         needle="--out"),
    Case("bad choice", "mia attack", ("mia", "eval", "--attacks", "bogus"), needle="--attacks"),
    Case("bad choice", "one labelled set only", ("mia", "eval", "--members", "set"), SET, needle="--nonmembers"),
    Case("bad choice", "unknown command", ("bogus",), needle="bogus"),
    Case("bad choice", "missing argument", ("sql", "scan.duckdb"), needle="query"),
    Case("bad choice", "query without image or text", ("index", "query", "ix/x"), {"ix/x/manifest.json": "{}"}, needle="--image"),
    scan_case("bad choice", "device", ("--prompts", "p.txt", "--device", "banana"), PROMPTS, needle="--device"),
    scan_case("bad choice", "GPU this machine lacks", ("--prompts", "p.txt", "--device", "cuda:99"), PROMPTS, needle="--device"),
    scan_case("bad choice", "unknown encoding", ("--prompts", "p.txt", "--encoding", "klingon"), PROMPTS,
         needle="klingon"),
    scan_case("bad choice", "unknown model kind", ("--prompts", "p.txt", "--model-kind", "Kandinsky"), PROMPTS,
              needle="--model-kind"),
    scan_case("bad choice", "unsupported pipeline class", ("--prompts", "p.txt", "--model", "audio"),
              {"audio/model_index.json": '{"_class_name": "AudioLDMPipeline"}', **PROMPTS}, needle="StableDiffusionXLPipeline"),
    scan_case("missing file", "a Flux folder without its T5 encoder", ("--prompts", "p.txt", "--model", "flux"),
              {"flux/model_index.json": '{"_class_name": "FluxPipeline", "text_encoder_2": ["transformers", "T5EncoderModel"]}',
               **PROMPTS}, needle="a Flux model needs its T5 encoder, but text_encoder_2 and tokenizer_2 are missing"),
    Case("bad choice", "mia model kind", ("mia", "eval", "--model-kind", "Kandinsky"), needle="--model-kind"),
    scan_case("bad choice", "prompts for an unconditional model", ("--prompts", "p.txt", "--model", str(FAMILY_MODELS["ddpm"])),
              PROMPTS, needle="takes no prompts"),
    scan_case("bad choice", "an unconditional model without an index", ("--model", str(FAMILY_MODELS["ddpm"])),
              needle="give --index"),
    scan_case("bad choice", "a label that names no class of a class-conditional model",
              ("--prompts", "p.txt", "--model", str(FAMILY_MODELS["dit"])), PROMPTS,
              needle="class label 'a red circle' is not one of this DiTPipeline's 8 classes"),
    Case("bad choice", "a prompt's attack on an unconditional model",
         ("mia", "eval", "--model", str(FAMILY_MODELS["ddpm"]), "--attacks", "loss,clid_th"), needle="clid_th attack needs"),
    # nothing to work on
    scan_case("empty input", "empty prompts", ("--prompts", "p.txt"), {"p.txt": ""}, needle="p.txt"),
    scan_case("empty input", "blank prompts", ("--prompts", "p.txt"), {"p.txt": "\n  \n"}, needle="p.txt"),
    scan_case("empty input", "prompt table without rows", ("--prompts", "p.csv"), {"p.csv": "caption\n"},
         needle="p.csv"),
    Case("empty input", "empty names", ("idia", "--people", "people", "--names", "names.txt"),
         {"people/alice": images(1), "names.txt": ""}, needle="names.txt"),
    Case("empty input", "empty people folder", ("idia", "--people", "people", "--names", "names.txt"),
         {"people": folder, "names.txt": "alice\n"}, needle="people"),
    Case("empty input", "empty labelled set", ("mia", "eval", "--members", "none", "--nonmembers", "set"),
         {"none": folder, **SET}, needle="none"),
    Case("empty input", "empty training set", ("index", "build", "none", "--name", "x", "--root", "ix"), {"none": folder},
         needle="none"),
    Case("too small", "mia eval", ("mia", "eval", "--members", "one", "--nonmembers", "set"), {"one": images(1), **SET},
         needle="one"),
    Case("too small", "mia dataset", ("mia", "dataset", "--suspect", "set", "--reference", "one"), {"one": images(1), **SET},
         needle="one"),
    # databases memscan did not write, or cannot read
    Case("bad database", "schema version not a number", ("sql", "v.duckdb", "SELECT 1"), {"v.duckdb": schema_version("one")},
         needle="not a number"),
    Case("bad database", "schema version newer", ("sql", "v.duckdb", "SELECT 1"), {"v.duckdb": schema_version("99")},
         needle="newer"),
    Case("bad database", "report on schema version not a number", ("report", "v.duckdb", "--out", "r.html"),
         {"v.duckdb": schema_version("one")}, needle="not a number"),
    Case("bad database", "sql on a foreign database", ("sql", "f.duckdb", "SELECT 1"), {"f.duckdb": foreign_db},
         needle="not a memscan database"),
    Case("bad database", "schema_info of another shape", ("sql", "o.duckdb", "SELECT 1"), {"o.duckdb": odd_schema_info},
         needle="not a memscan database"),
    Case("bad database", "query syntax", ("sql", "scan.duckdb", "SELEKT 1"), {"scan.duckdb": memscan_db}, needle="query failed"),
    Case("bad database", "unknown table", ("sql", "scan.duckdb", "SELECT * FROM nope"), {"scan.duckdb": memscan_db},
         needle="query failed"),
    scan_case("bad database", "scan into a text file", ("--prompts", "p.txt"), {"notes.duckdb": "hello", **PROMPTS},
              "notes.duckdb", db="notes.duckdb"),
    scan_case("bad database", "scan into a foreign database", ("--prompts", "p.txt"), {"f.duckdb": foreign_db, **PROMPTS},
              "not a memscan database", db="f.duckdb"),
    scan_case("bad database", "scan into a newer database", ("--prompts", "p.txt"), {"v.duckdb": schema_version("99"), **PROMPTS},
              "newer", db="v.duckdb"),
    # names that would become paths outside their folder
    Case("bad name", "index name ..", ("index", "build", "set", "--name", "..", "--root", "ix"), SET, needle=".."),
    Case("bad name", "index name absolute", ("index", "build", "set", "--name", "/tmp/x", "--root", "ix"), SET, needle="/tmp/x"),
    Case("bad name", "index name with a separator", ("index", "build", "set", "--name", "a/b", "--root", "ix"), SET,
         needle="a/b"),
    # outputs that cannot be written
    scan_case("unwritable output", "database under a file", ("--prompts", "p.txt"), {"afile": "", **PROMPTS}, "afile",
              db="afile/x.duckdb"),
    scan_case("unwritable output", "images folder under a file", ("--prompts", "p.txt", "--images-dir", "afile/images"),
              {"afile": "", **PROMPTS}, "afile"),
    scan_case("unwritable output", "database is a folder", ("--prompts", "p.txt"), {"d": folder, **PROMPTS}, "d", db="d"),
    Case("unwritable output", "sql out under a file", ("sql", "scan.duckdb", "SELECT 1", "--format", "csv", "--out", "afile/r.csv"),
         {"afile": "", "scan.duckdb": memscan_db}, needle="afile"),
    Case("unwritable output", "sql out in a missing folder", ("sql", "scan.duckdb", "SELECT 1", "--format", "csv", "--out", "no/r.csv"),
         {"scan.duckdb": memscan_db}, needle="no/r.csv"),
    Case("unwritable output", "sql out a folder", ("sql", "scan.duckdb", "SELECT 1", "--format", "json", "--out", "dir"),
         {"dir": folder, "scan.duckdb": memscan_db}, needle="dir"),
    Case("unwritable output", "sql out the database", ("sql", "scan.duckdb", "SELECT 1", "--format", "csv", "--out", "scan.duckdb"),
         {"scan.duckdb": memscan_db}, needle="scan.duckdb"),
    Case("unwritable output", "report under a file", ("report", "scan.duckdb", "--out", "afile/r.html"),
         {"afile": "", "scan.duckdb": memscan_db}, needle="afile"),
    Case("unwritable output", "report out a folder", ("report", "scan.duckdb", "--out", "dir"),
         {"dir": folder, "scan.duckdb": memscan_db}, needle="dir"),
    Case("unwritable output", "index root a file", ("index", "build", "set", "--name", "x", "--root", "afile"),
         {"afile": "", **SET}, needle="afile"),
]


def make(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.kind}: {case.name}")
def test_a_bad_input_is_one_line_and_changes_nothing(tmp_path, case):
    make(tmp_path, case.files)
    before = checksums(tmp_path)
    result = run_main(*case.args, cwd=tmp_path)
    assert_one_line_error(result, case.needle)
    after = checksums(tmp_path)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert changed <= set(case.outputs), f"changed outside the outputs: {sorted(changed)}"


def test_a_database_copied_without_its_files_folder_still_gets_its_report(finding_db):
    """Not a mistake to refuse: the report renders, marks the image as missing, and says which."""
    result = run_main("report", finding_db.name, "--out", "report.html", cwd=finding_db.parent)
    assert result.returncode == 0, result.stderr
    assert "images/g1.png" in result.stdout and "not in the database's files folder" in result.stdout
    html = (finding_db.parent / "report.html").read_text()
    assert "a red circle" in html and "image not found" in html
