"""The package version, written once: `pyproject.toml` reads it, `envelope` re-exports it."""

__version__ = "0.1.0"
