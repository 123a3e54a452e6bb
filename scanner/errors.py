"""User-facing errors: the CLI prints these as one line, without a stack trace."""

from pathlib import Path


class MemscanError(Exception):
    """A mistake in the user's input (a path, a file, a flag), explained in one line."""


def input_error(path: object, problem: str) -> MemscanError:
    """An error that names the offending file or folder first, then the problem."""
    return MemscanError(f"{path}: {problem}")


def check_folder(path: Path, what: str) -> Path:
    """Fail in one line when ``path`` cannot become a folder (it or a parent is a file), creating nothing."""
    path = Path(path)
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise input_error(blocking, f"is a file, not a folder (needed for the {what} {path})")
    return path


def make_folder(path: Path, what: str) -> Path:
    """Create ``path`` and its parents, or fail in one line saying why: a folder a user named that
    cannot exist is a mistake to report before any work, not a stack trace after it."""
    path = check_folder(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise input_error(path, f"cannot create the {what} ({error.strerror or error})") from None
    return path
