"""The one error type users see: a bad input, reported as one line, never a traceback."""


class UserError(ValueError):
    """An input the user can fix (missing file, unknown block, wrong adapter...)."""
