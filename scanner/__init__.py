"""memscan: audit a text-to-image checkpoint for memorized, extractable training data."""

__version__ = "0.1.0"
