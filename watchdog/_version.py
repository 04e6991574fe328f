"""The version, in one place: pyproject.toml reads it from here (setuptools' `attr:`), and so does the daemon,
without importing importlib.metadata at start (zipfile, csv and email: resident memory for the daemon's life)."""

__version__ = "0.1.0"
