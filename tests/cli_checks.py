"""Running the ``memscan`` command in tests, and what a user mistake must look like: one line on
stderr naming the problem, exit code 2, no stack trace, and no file touched that it should not."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

from scanner.cli import main


def memscan(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scanner", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def run_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``memscan ARGS`` in this process (the models a case loads are loaded once for all cases),
    with what the command would print and its exit code; an exception that escapes ``main`` is
    what a user would see as a stack trace, and comes back as one."""
    stdout, stderr = io.StringIO(), io.StringIO()
    previous_argv, previous_cwd = sys.argv, os.getcwd()
    sys.argv = ["memscan", *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception:
        stderr.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = previous_argv
        os.chdir(previous_cwd)
    return subprocess.CompletedProcess(["memscan", *args], code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memscan: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (and which folders exist), by relative path: compare
    two of these to see what a command changed."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_file() and not path.is_symlink():
            sums[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            sums[relative + "/"] = "folder"
    return sums
