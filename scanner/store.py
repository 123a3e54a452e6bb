"""The DuckDB store: the versioned schema, and the only module that writes SQL DDL.

Stages talk through this store. Every table has a natural primary key, and every write is
an idempotent ``INSERT ... ON CONFLICT DO NOTHING`` of a whole batch, so a scan that is
killed and started again ends with exactly the rows of an uninterrupted run. Images live
beside the database, content-addressed (``<db>.files/images/ab/abcdef....png``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from scanner.errors import MemscanError, input_error, make_folder
from scanner.inputs import inside

SCHEMA_VERSION = 4
STORAGE_COMPATIBILITY = "v1.1.0"

# Every connection memscan opens reaches only its own database: no file, URL or other database
# (COPY, ATTACH, EXPORT, read_csv...), no extension installed or loaded, and no query can turn
# this back on. The store needs nothing else: it inserts through Arrow and reads into Arrow.
SANDBOX = {"enable_external_access": False, "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "lock_configuration": True}

_TABLES = {
    "schema_info": """
        key VARCHAR PRIMARY KEY,
        value VARCHAR NOT NULL""",
    "runs": """
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        model_ref VARCHAR NOT NULL,
        model_hash VARCHAR NOT NULL,
        config JSON NOT NULL,
        versions JSON NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'done', 'failed')),
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        timings JSON""",
    "prompts": """
        run_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        text VARCHAR NOT NULL,
        source VARCHAR,
        source_item_id VARCHAR,
        PRIMARY KEY (run_id, prompt_id)""",
    "generations": """
        run_id VARCHAR NOT NULL,
        generation_id VARCHAR NOT NULL,
        prompt_id VARCHAR NOT NULL,
        seed BIGINT NOT NULL,
        num_inference_steps INTEGER NOT NULL,
        guidance_scale DOUBLE NOT NULL,
        scheduler VARCHAR NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        batch_size INTEGER NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
        error VARCHAR,
        image_path VARCHAR,
        image_sha256 VARCHAR,
        thumbnail_path VARCHAR,
        phash UBIGINT,
        dhash UBIGINT,
        degenerate BOOLEAN,
        embedding FLOAT[],
        created_at TIMESTAMP NOT NULL,
        PRIMARY KEY (run_id, generation_id)""",
    "clusters": """
        run_id VARCHAR NOT NULL,
        cluster_id VARCHAR NOT NULL,
        scope VARCHAR NOT NULL CHECK (scope IN ('prompt', 'cross_prompt')),
        prompt_id VARCHAR,
        size INTEGER NOT NULL,
        n_generations INTEGER NOT NULL,
        medoid_generation_id VARCHAR NOT NULL,
        mean_distance DOUBLE NOT NULL,
        max_distance DOUBLE NOT NULL,
        distance VARCHAR NOT NULL,
        threshold DOUBLE NOT NULL,
        criterion VARCHAR NOT NULL,
        PRIMARY KEY (run_id, cluster_id)""",
    "cluster_members": """
        run_id VARCHAR NOT NULL,
        cluster_id VARCHAR NOT NULL,
        generation_id VARCHAR NOT NULL,
        distance_to_medoid DOUBLE NOT NULL,
        PRIMARY KEY (run_id, cluster_id, generation_id)""",
    "candidates": """
        run_id VARCHAR NOT NULL,
        candidate_id VARCHAR NOT NULL,
        cluster_id VARCHAR NOT NULL,
        prompt_id VARCHAR,
        score DOUBLE NOT NULL,
        rank INTEGER NOT NULL,
        reason VARCHAR NOT NULL,
        PRIMARY KEY (run_id, candidate_id)""",
    "matches": """
        run_id VARCHAR NOT NULL,
        candidate_id VARCHAR NOT NULL,
        index_name VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        item_caption VARCHAR,
        l2 DOUBLE,
        tiled_l2 DOUBLE,
        anchored_l2 DOUBLE,
        anchor VARCHAR,
        item_spacing DOUBLE,
        relative_tiled_l2 DOUBLE,
        anchored_tiled_l2 DOUBLE,
        phash_hamming INTEGER,
        clip_cosine DOUBLE,
        image_of_prompt BOOLEAN,
        verdict VARCHAR NOT NULL CHECK (verdict IN ('extracted', 'similar', 'none')),
        PRIMARY KEY (run_id, candidate_id, index_name, item_id)""",
    "mia_scores": """
        run_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL,
        attack VARCHAR NOT NULL,
        score DOUBLE NOT NULL,
        threshold DOUBLE,
        predicted_member BOOLEAN,
        label BOOLEAN,
        settings JSON,
        PRIMARY KEY (run_id, item_id, attack)""",
    "idia_results": """
        run_id VARCHAR NOT NULL,
        person VARCHAR NOT NULL,
        n_images INTEGER NOT NULL,
        n_templates INTEGER NOT NULL,
        correct_templates INTEGER NOT NULL,
        image_share DOUBLE NOT NULL,
        template_share DOUBLE NOT NULL,
        tau INTEGER NOT NULL,
        predicted_member BOOLEAN NOT NULL,
        label BOOLEAN,
        PRIMARY KEY (run_id, person)""",
    "metrics": """
        run_id VARCHAR NOT NULL,
        metric VARCHAR NOT NULL,
        subject VARCHAR NOT NULL,
        value DOUBLE,
        n_positive INTEGER,
        n_negative INTEGER,
        details JSON,
        PRIMARY KEY (run_id, metric, subject)""",
}

# A run id stands for a scan's prompts, its generations and the triage scores that chose which
# prompts to sample (scanner/scan.py run_id_for). Every other row of a run is derived from them
# under the run's settings, and each invocation computes it again: the SQL condition that picks
# a run's derived rows in each table.
_DERIVED = {"clusters": "", "cluster_members": "", "candidates": "", "matches": "", "metrics": "", "idia_results": "",
            "mia_scores": "AND NOT ends_with(attack, '_triage')"}

# Statements that take a database from version N to N + 1 (the findings view is rebuilt after them).
_MIGRATIONS = {
    1: ["ALTER TABLE matches ADD COLUMN item_spacing DOUBLE", "ALTER TABLE matches ADD COLUMN relative_tiled_l2 DOUBLE"],
    2: ["ALTER TABLE matches ADD COLUMN anchored_tiled_l2 DOUBLE"],
    3: ["ALTER TABLE matches ADD COLUMN image_of_prompt BOOLEAN"],
}

# The view a user queries first: one row per candidate, with its best training-item match if any.
_FINDINGS_VIEW = """
CREATE OR REPLACE VIEW findings AS
SELECT
    c.run_id,
    c.candidate_id,
    c.rank,
    c.score,
    c.reason,
    p.text AS prompt,
    p.source_item_id AS prompt_source_item,
    cl.scope,
    cl.size AS cluster_size,
    cl.n_generations,
    cl.mean_distance,
    cl.max_distance,
    cl.distance,
    cl.threshold,
    g.image_path AS medoid_image,
    m.index_name,
    m.item_id AS matched_item,
    m.item_caption AS matched_caption,
    m.l2 AS match_l2,
    m.tiled_l2 AS match_tiled_l2,
    m.anchored_l2 AS match_anchored_l2,
    m.relative_tiled_l2 AS match_relative_tiled_l2,
    m.image_of_prompt,
    COALESCE(m.verdict, 'unmatched') AS verdict
FROM candidates c
JOIN clusters cl USING (run_id, cluster_id)
LEFT JOIN prompts p ON p.run_id = c.run_id AND p.prompt_id = c.prompt_id
JOIN generations g ON g.run_id = c.run_id AND g.generation_id = cl.medoid_generation_id
LEFT JOIN (
    SELECT * FROM matches
    QUALIFY row_number() OVER (PARTITION BY run_id, candidate_id
                               ORDER BY CASE verdict WHEN 'extracted' THEN 0 WHEN 'similar' THEN 1 ELSE 2 END, l2) = 1
) m ON m.run_id = c.run_id AND m.candidate_id = c.candidate_id
"""


def stable_id(*parts: object, length: int = 16) -> str:
    """A short content hash: the same inputs give the same id in every process."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Store:
    """A memscan DuckDB database and the folder of files beside it."""

    def __init__(self, path: str | Path, read_only: bool = False, files_dir: str | Path | None = None):
        """Open or create a database. ``files_dir`` moves the image folder away from its default
        (``<db>.files``); the choice is stored in the database, so later opens find the images."""
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise input_error(self.path, "no such database")
        self._scratch = None
        if read_only:
            # a large query spills to a private folder, not beside a database that may be someone
            # else's (or on read-only media)
            self._scratch = tempfile.TemporaryDirectory(prefix="memscan-duckdb-")
            config = {**SANDBOX, "temp_directory": self._scratch.name}
        else:
            make_folder(self.path.parent, "database folder")
            # files readable by every DuckDB 1.x client too (the command-line client users open
            # them with); checkpoint (fold the write-ahead log into the file, rewriting the key
            # indexes) every 256 MB of log rather than DuckDB's 16 MB: sustained ingest of generation
            # rows goes from about 10,000 to 25,000 rows/s (scripts/bench_ray.py)
            config = {**SANDBOX, "storage_compatibility_version": STORAGE_COMPATIBILITY, "checkpoint_threshold": "256MB"}
        try:
            self.connection = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.Error as error:
            self._cleanup_scratch()
            raise input_error(self.path, f"cannot open as a DuckDB database ({str(error).splitlines()[0]})") from None
        self._schemas: dict[str, pa.Schema] = {}
        try:
            self._check_or_create(read_only)
            self.files_dir = self._files_folder(files_dir, read_only)
        except MemscanError:
            self.close()
            raise
        except duckdb.Error as error:  # a schema_info table of another shape
            self.close()
            raise input_error(self.path, f"not a memscan database ({str(error).splitlines()[0]})") from None

    def _files_folder(self, files_dir: str | Path | None, read_only: bool) -> Path:
        """Where the images are: ``files_dir`` (created now and remembered), else the stored choice
        or ``<db>.files``. A scan finds out before sampling, in one line, that it cannot write there."""
        if files_dir is not None and not read_only:
            folder = make_folder(Path(files_dir).resolve(), "images folder")
            self.execute("INSERT OR REPLACE INTO schema_info VALUES ('files_dir', ?)", [str(folder)])
            return folder
        stored = self.execute("SELECT value FROM schema_info WHERE key = 'files_dir'")
        folder = Path(stored[0][0]) if stored else self.path.with_name(self.path.name + ".files")
        if not read_only and folder.exists() and not folder.is_dir():
            raise input_error(folder, "is a file, not the database's images folder")
        return folder

    def _check_or_create(self, read_only: bool) -> None:
        tables = {row[0] for row in self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")}
        if "schema_info" not in tables:
            if tables or read_only:
                raise input_error(self.path, "not a memscan database (no schema_info table)")
            self._create()
            return
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise input_error(self.path, f"schema version {version} is newer than this memscan understands "
                                         f"({SCHEMA_VERSION}); upgrade memscan")
        if version < SCHEMA_VERSION:
            self._migrate(version, read_only)

    def _migrate(self, version: int, read_only: bool) -> None:
        """Bring an older database to this schema, in one transaction. Opened read-only (a report,
        ``memscan sql``: they never write to the database they read) it is read as it is: the
        columns added since are absent, which nothing that reads a database requires."""
        if version not in _MIGRATIONS:
            raise input_error(self.path, f"schema version {version} is older than {SCHEMA_VERSION}; no migration exists")
        if read_only:
            return
        with self.transaction():
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    self.execute(statement)
            self.execute(_FINDINGS_VIEW)
            self.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])

    def _create(self) -> None:
        with self.transaction():
            for name, columns in _TABLES.items():
                self.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
            self.execute(_FINDINGS_VIEW)
            self.execute("INSERT INTO schema_info VALUES ('schema_version', ?), ('created_by', ?)",
                                    [str(SCHEMA_VERSION), "memscan"])

    def transaction(self) -> "_Transaction":
        return _Transaction(self)

    def close(self) -> None:
        self.connection.close()
        self._cleanup_scratch()

    def _cleanup_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    def insert(self, table: str, rows: Sequence[dict] | pa.Table) -> int:
        """Insert a batch; rows whose primary key exists are left as they are. Returns rows added."""
        if table not in _TABLES:
            raise KeyError(table)
        if not isinstance(rows, pa.Table):
            rows = list(rows)
            if not rows:
                return 0
            schema = self._arrow_schema(table)
            rows = pa.Table.from_pylist(rows, schema=pa.schema([schema.field(name) for name in rows[0]]))
        if rows.num_rows == 0:
            return 0
        columns = ", ".join(rows.column_names)
        before = self.count(table)
        self.connection.register("_batch", rows)
        try:
            self.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _batch ON CONFLICT DO NOTHING")
        finally:
            self.connection.unregister("_batch")
        return self.count(table) - before

    def _arrow_schema(self, table: str) -> pa.Schema:
        """The Arrow types of a table's columns (so 64-bit hashes stay unsigned)."""
        if table not in self._schemas:
            self._schemas[table] = self.query(f"SELECT * FROM {table} LIMIT 0").schema
        return self._schemas[table]

    def execute(self, sql: str, parameters: Sequence | None = None) -> list[tuple]:
        """Run a statement to completion and return its rows."""
        return self.connection.execute(sql, parameters or []).fetchall()

    def start_run(self, run_id: str, kind: str, model_ref: str, model_hash: str, config: dict, versions: dict) -> bool:
        """Record a run, or find it again. Returns True when the run already existed (a resume).

        A resumed run stores the settings it was started with now, since it computes its clusters,
        candidates, matches and scores again under them; when they differ from the stored ones,
        the rows derived under the old settings go in the same transaction, so the stored settings
        always describe the stored results, even while the run is still going or after it failed."""
        settings = json.dumps(config, sort_keys=True, default=str)
        existing = self.execute("SELECT config FROM runs WHERE run_id = ?", [run_id])
        if existing:
            with self.transaction():
                if json.loads(existing[0][0]) != json.loads(settings):
                    for table, which in _DERIVED.items():
                        self.execute(f"DELETE FROM {table} WHERE run_id = ? {which}", [run_id])
                self.execute("UPDATE runs SET status = 'running', finished_at = NULL, config = ? WHERE run_id = ?",
                             [settings, run_id])
            return True
        self.insert("runs", [{
            "run_id": run_id, "kind": kind, "model_ref": model_ref, "model_hash": model_hash,
            "config": settings, "versions": json.dumps(versions, sort_keys=True),
            "status": "running", "started_at": now(), "finished_at": None, "timings": None,
        }])
        return False

    def finish_run(self, run_id: str, timings: dict, status: str = "done") -> None:
        self.execute("UPDATE runs SET status = ?, finished_at = ?, timings = ? WHERE run_id = ?",
                                [status, now(), json.dumps(timings), run_id])

    def replace_run_rows(self, tables: Iterable[str], run_id: str) -> None:
        """Delete a run's rows of derived tables before a stage recomputes them."""
        for table in tables:
            if table not in _TABLES:
                raise KeyError(table)
            self.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    # ---- reading -------------------------------------------------------------------------

    def count(self, table: str, run_id: str | None = None) -> int:
        if run_id is None:
            return self.execute(f"SELECT count(*) FROM {table}")[0][0]
        return self.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id])[0][0]

    def query(self, sql: str, parameters: Sequence | None = None) -> pa.Table:
        return self.connection.sql(sql, params=list(parameters) if parameters else None).to_arrow_table()

    def user_query(self, sql: str) -> pa.Table:
        """A query a user typed (``memscan sql``): its rows, or one line saying why there are none.
        The sandbox, not a filter on the text, keeps it from reaching anything but this database."""
        try:
            return self.connection.sql(sql).to_arrow_table()
        except duckdb.Error as error:
            raise input_error(self.path, f"query failed: {str(error).splitlines()[0]}") from None

    def prompt_thumbnails(self, run_ids: Sequence[str], text: str) -> list[str]:
        """The stored thumbnails of every good generation of a prompt (by its text) in these runs."""
        if not run_ids:
            return []
        return [path for (path,) in self.execute(
            "SELECT g.thumbnail_path FROM generations g JOIN prompts p USING (run_id, prompt_id) "
            "WHERE g.run_id IN (SELECT unnest(?)) AND p.text = ? AND g.status = 'ok' AND g.thumbnail_path IS NOT NULL "
            "ORDER BY g.run_id, g.generation_id", [list(run_ids), text])]

    def extracted_by_caption(self, run_id: str) -> tuple[int, int] | None:
        """How many of a run's ``extracted`` findings name an image the training set holds under the
        prompt's own caption, and how many another caption's image; None for a database written
        before schema 4, which does not record it."""
        if self.schema_version() < 4:
            return None
        return self.execute("SELECT count(*) FILTER (WHERE image_of_prompt), count(*) FILTER (WHERE NOT image_of_prompt) "
                            "FROM findings WHERE run_id = ? AND verdict = 'extracted'", [run_id])[0]

    def schema_version(self) -> int:
        """The stored schema version; 0 when none is stored (a database older than versioning)."""
        rows = self.execute("SELECT value FROM schema_info WHERE key = 'schema_version'")
        if not rows:
            return 0
        try:
            return int(rows[0][0])
        except ValueError:
            raise input_error(self.path, f"schema version {rows[0][0]!r} is not a number: not a database memscan wrote") from None

    def image_file(self, relative: str) -> Path:
        """The file a row's image path names: the one place where paths stored in rows become
        files. A path that resolves outside the files folder (``..``, absolute, a symlink out),
        as a crafted database may hold, is an error and is never read."""
        path = self.files_dir / relative
        if not inside(path, self.files_dir):
            raise input_error(self.path, f"image path {relative!r} resolves outside the files folder {self.files_dir}")
        return path


class BatchWriter:
    """Buffers rows for one table and inserts them in one transaction per ``flush_rows`` rows or
    ``flush_seconds``: how a driver ingests the results of many workers (DuckDB has one writer)."""

    def __init__(self, store: Store, table: str, flush_rows: int = 4096, flush_seconds: float = 2.0):
        self.store, self.table = store, table
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.buffer: list[dict] = []
        self.added = 0
        self._flushed = time.monotonic()

    def add(self, rows: Sequence[dict]) -> None:
        self.buffer.extend(rows)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            with self.store.transaction():
                self.added += self.store.insert(self.table, self.buffer)
            self.buffer.clear()
        self._flushed = time.monotonic()


class _Transaction:
    """BEGIN/COMMIT around a block; ROLLBACK when it raises, so a batch lands whole or not at all."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> None:
        self.store.execute("BEGIN TRANSACTION")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store.execute("ROLLBACK" if exc_type else "COMMIT")
