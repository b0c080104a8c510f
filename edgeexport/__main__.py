"""``python -m edgeexport``: the same as the ``edgeexport`` command. ``python -m`` puts the current folder first
on the import path; it is taken off, so a stray module there (an ``onnxsim.py``) is never imported in place of
the real one. A recipe's own module is still found there, while it is imported (edgeexport.source)."""
import os
import sys

sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from edgeexport.cli import main  # noqa: E402

main()
