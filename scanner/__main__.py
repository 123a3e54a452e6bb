"""``python -m scanner`` is the ``memscan`` command."""

from scanner.cli import main

main()
