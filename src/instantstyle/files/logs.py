"""Library log output: one helper to silence a logger for a block, one to quiet the libraries for a command line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers (``diffusers.loaders``, ...) to ``level`` inside the block: for a warning that
    is expected and not the user's to act on."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before, strict=True):
            logger.setLevel(old)


def quiet_libraries() -> None:
    """Keep a terminal to our progress bar and errors: no loading bars, library warnings or hub retry notices
    (the error that follows is ours, in one line)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")  # library deprecation notices are not the user's to act on
