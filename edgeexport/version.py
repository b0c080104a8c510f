"""The package version, in a module of its own: every layer can read it without importing the package's
public API (``edgeexport/__init__.py``, which sits above everything)."""
__version__ = "0.2.0"
