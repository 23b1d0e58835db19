"""The package version: one place, read by pyproject.toml (setuptools dynamic) and `lottery --version`."""
__version__ = "0.2.0"
