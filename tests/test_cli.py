"""User mistakes get one line on stderr naming the file, and exit code 2; no stack trace."""

import pytest

from cli_checks import assert_one_line_error, memscan


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no-model"
    assert_one_line_error(memscan("scan", "--model", str(missing), "--db", str(tmp_path / "x.duckdb")), str(missing), "no such")


@pytest.mark.parametrize("name, content, needle", [
    ("empty.txt", "", "no prompts in file"),
    ("blank.txt", "\n  \n", "no prompts in file"),
    ("binary.txt", b"\xff\xfe\x00bad", "byte 0xff at byte offset 0 cannot be decoded"),
    ("captions.csv", "text,id\nhello,1\n", "no column 'caption'"),
    ("broken.parquet", "not parquet", "cannot read as PARQUET"),
])
def test_bad_prompt_files(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = memscan("scan", "--prompts", str(path), "--db", str(tmp_path / "x.duckdb"))
    assert_one_line_error(result, str(path), needle)


def test_missing_prompts_file_and_bad_config(tmp_path):
    assert_one_line_error(memscan("scan", "--prompts", str(tmp_path / "nope.txt")), "nope.txt", "no such prompts file")
    config = tmp_path / "scan.toml"
    config.write_text("[sampling]\nsamples_per_promt = 3\n")
    assert_one_line_error(memscan("scan", "--config", str(config)), "scan.toml", "unknown setting [sampling] samples_per_promt")
    config.write_text("model = \n")
    assert_one_line_error(memscan("scan", "--config", str(config)), "scan.toml", "not valid TOML")


def test_sql_is_read_only_and_rejects_foreign_files(tmp_path):
    from scanner.store import SCHEMA_VERSION, Store

    db = tmp_path / "scan.duckdb"
    Store(db).close()
    ok = memscan("sql", str(db), "SELECT value FROM schema_info WHERE key = 'schema_version'", "--format", "csv")
    assert ok.returncode == 0 and ok.stdout.strip().splitlines()[-1] == f'"{SCHEMA_VERSION}"'
    assert_one_line_error(memscan("sql", str(db), "DELETE FROM runs"), "scan.duckdb", "query failed")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert_one_line_error(memscan("sql", str(other), "SELECT 1"), "notes.txt")


def test_index_command_errors(tmp_path):
    assert_one_line_error(memscan("index", "build", str(tmp_path / "none"), "--name", "x", "--root", str(tmp_path)),
                          "none", "no such source")
    assert_one_line_error(memscan("index", "stats", "nothing", "--root", str(tmp_path)), "nothing", "manifest.json is missing")
    (tmp_path / "ix").mkdir()
    (tmp_path / "ix" / "manifest.json").write_text("{}")
    assert_one_line_error(memscan("index", "query", str(tmp_path / "ix")), "exactly one of --image")
    assert_one_line_error(memscan("index", "query", str(tmp_path / "ix"), "--text", "a cat"), "manifest.json", "not a memscan index")
