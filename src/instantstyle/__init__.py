"""instantstyle: InstantStyle (style-only IP-Adapter injection plus content subtraction) on diffusers."""

from .errors import UserError
from .pipeline import Result, StylePipeline
from .request import Request, StyleRef

__all__ = ["Request", "Result", "StylePipeline", "StyleRef", "UserError"]
__version__ = "0.1.0"
