"""User-facing errors: the CLI prints these as one line, without a stack trace."""


class MemscanError(Exception):
    """A mistake in the user's input (a path, a file, a flag), explained in one line."""


def input_error(path: object, problem: str) -> MemscanError:
    """An error that names the offending file or folder first, then the problem."""
    return MemscanError(f"{path}: {problem}")
