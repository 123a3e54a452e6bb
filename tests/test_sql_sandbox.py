"""``memscan sql`` reads its own database and writes nothing but ``--out``: every way a query could
write a file, change a database, read another file or reach the network is refused by DuckDB's
own switches (scanner/store.py SANDBOX), and the files around it keep their checksums."""

import json

import duckdb
import pyarrow.parquet as pq
import pytest

from cli_checks import assert_one_line_error, checksums, memscan
from scanner.store import Store


@pytest.fixture
def workspace(finding_db):
    """A small memscan database with one finding, and files a query might go after."""
    folder = finding_db.parent
    other = duckdb.connect(str(folder / "other.duckdb"))
    other.execute("CREATE TABLE precious AS SELECT 42 AS answer")
    other.close()
    (folder / "other.csv").write_text("name,secret\nalice,1\n")
    return folder


REFUSED = {
    "copy over a file": "COPY (SELECT 1) TO 'other.csv'",
    "copy to a new file": "COPY generations TO 'leak.csv'",
    "attach and drop": "ATTACH 'other.duckdb' AS o (READ_WRITE); DROP TABLE o.precious",
    "attach read-only": "ATTACH 'other.duckdb' AS o (READ_ONLY)",
    "export": "EXPORT DATABASE 'dump'",
    "read_text": "SELECT * FROM read_text('/etc/hostname')",
    "read_csv": "SELECT * FROM read_csv('other.csv')",
    "file as a table": "SELECT * FROM 'other.csv'",
    "glob": "SELECT * FROM glob('*')",
    "url": "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "install": "INSTALL httpfs",
    "force install": "FORCE INSTALL httpfs",
    "load": "LOAD httpfs",
    "unlock external access": "SET enable_external_access = true",
    "unlock configuration": "SET lock_configuration = false",
    "profiling output": "SET profiling_output = 'profile.json'",
    "create table": "CREATE TABLE notes (x INTEGER)",
    "insert": "INSERT INTO prompts VALUES ('r1', 'p2', 'injected', NULL, NULL)",
    "delete": "DELETE FROM runs",
    "update": "UPDATE candidates SET rank = 99",
    "drop view": "DROP VIEW findings",
}


@pytest.mark.parametrize("query", REFUSED.values(), ids=REFUSED.keys())
def test_a_query_that_reaches_outside_its_database_is_refused(workspace, query):
    before = checksums(workspace)
    result = memscan("sql", "scan.duckdb", query, cwd=workspace)
    assert_one_line_error(result, "scan.duckdb", "query failed")
    assert checksums(workspace) == before  # the database, the other database and the csv; nothing new


def test_ordinary_queries_read_tables_and_views(workspace):
    before = checksums(workspace)
    table = memscan("sql", "scan.duckdb", "SELECT rank, prompt, cluster_size FROM findings", cwd=workspace)
    assert table.returncode == 0 and "a red circle" in table.stdout, table.stderr
    csv = memscan("sql", "scan.duckdb", "SELECT seed, status FROM generations", "--format", "csv", cwd=workspace)
    assert csv.stdout.splitlines() == ['"seed","status"', '0,"ok"']
    as_json = memscan("sql", "scan.duckdb", "SELECT prompt, threshold FROM findings", "--format", "json", cwd=workspace)
    assert json.loads(as_json.stdout) == [{"prompt": "a red circle", "threshold": 0.02}]
    assert checksums(workspace) == before


@pytest.mark.parametrize("output_format", ["csv", "json", "parquet"])
def test_out_writes_only_the_out_file(workspace, output_format):
    before = checksums(workspace)
    out = workspace / f"result.{output_format}"
    result = memscan("sql", "scan.duckdb", "SELECT rank, prompt, verdict FROM findings", "--format", output_format,
                     "--out", out.name, cwd=workspace)
    assert result.returncode == 0, result.stderr
    after = checksums(workspace)
    assert after.pop(out.name) and after == before
    if output_format == "parquet":
        rows = pq.read_table(out).to_pylist()
    elif output_format == "json":
        rows = json.loads(out.read_text())
    else:
        rows = out.read_text().splitlines()
    assert rows in ([{"rank": 1, "prompt": "a red circle", "verdict": "unmatched"}],
                    ['"rank","prompt","verdict"', '1,"a red circle","unmatched"'])


def test_out_never_overwrites_the_database(workspace):
    before = checksums(workspace)
    assert_one_line_error(memscan("sql", "scan.duckdb", "SELECT 1", "--format", "csv", "--out", "scan.duckdb",
                                  cwd=workspace), "would overwrite the database")
    assert checksums(workspace) == before


@pytest.mark.parametrize("read_only", [True, False], ids=["report", "resume"])
def test_every_connection_memscan_opens_is_sandboxed(workspace, read_only):
    """The report's read-only store and a resumed scan's read-write store have the same switches."""
    victim, other = workspace / "other.csv", workspace / "other.duckdb"
    before = checksums(workspace)
    with Store(workspace / "scan.duckdb", read_only=read_only) as store:
        for statement in (f"COPY (SELECT 1) TO '{victim}'", f"SELECT * FROM read_csv('{victim}')",
                          f"ATTACH '{other}' AS o", "SET enable_external_access = true", "LOAD httpfs"):
            with pytest.raises(duckdb.Error):
                store.execute(statement)
        assert store.count("candidates") == 1
    after = checksums(workspace)
    own = {"scan.duckdb", "scan.duckdb.wal"} if not read_only else set()
    assert {k: v for k, v in after.items() if k not in own} == {k: v for k, v in before.items() if k not in own}
