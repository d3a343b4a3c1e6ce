"""``python -m instantstyle`` is the ``instantstyle`` command."""

from .cli import entry

entry()
