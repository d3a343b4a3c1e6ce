"""``python -m instantstyle`` is the ``instantstyle`` command."""

from .app.cli import entry

entry()
