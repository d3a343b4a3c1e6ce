"""instantstyle: InstantStyle (style-only IP-Adapter injection plus content subtraction) on diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.request import LoraRef, Request, StyleRef
from .core.video_options import VideoOptions, VideoRequest
from .errors import UserError
from .loading.runtime import Runtime

if TYPE_CHECKING:
    from .core.pipeline import Result, StylePipeline
    from .modes.video import stylize_video

__all__ = ["LoraRef", "Request", "Result", "Runtime", "StylePipeline", "StyleRef", "UserError", "VideoOptions",
           "VideoRequest", "stylize_video"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The pipeline imports torch and diffusers (seconds); load it on first use so `instantstyle --help` is instant.
    if name in ("StylePipeline", "Result"):
        from .core import pipeline

        return getattr(pipeline, name)
    if name == "stylize_video":  # torch and diffusers too
        from .modes import video

        return video.stylize_video
    raise AttributeError(f"module 'instantstyle' has no attribute {name!r}")
