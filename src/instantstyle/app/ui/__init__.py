"""The web UI: a gradio page that turns its form into a ``Request`` and runs it on one loaded ``StylePipeline``.

The pipeline loads once (at start, or on first use when given a factory) and stays loaded; events that use it share
one queue slot, so requests run one at a time per device, each with a step progress bar and a Cancel button. Every
image is written with ``write_png`` (the request rides in the PNG), so a downloaded image dropped back into the page
restores its settings, as does any image of the History tab. Bad input (a non-image upload, an out-of-range number)
becomes a message in the page; the app keeps serving.

- ``fields``: the form, one table of fields (``FORM``) placed in tabs (``TABS``), to and from a ``Request``;
- ``workdir``: the server's files as the page sees them (uploads, outputs, models folders, names shown);
- ``handlers``: what the events do (``App``); ``jobs``: progress and Cancel; ``views``: cards, results, scores;
- ``painter`` and ``guard``: the painters held to the pixel cap, the blob route, logins and SIGTERM;
- ``page``: the layout, the events, ``launch``.
"""

from ...core.styles import style_settings
from ...files.images import MAX_PIXELS
from .fields import (
    CUSTOM,
    DEFAULT_CONTROLNETS,
    FIELDS,
    FORM,
    MAX_ADAPTERS,
    MAX_MASK_LAYERS,
    MAX_REFERENCES,
    MODEL_BLOCKS,
    NO_CONTROL,
    READY_CONTROL,
    SWEEP_FORM,
    TABS,
    VIDEO_FORM,
    Field,
    Tab,
    clamp_to_form,
    fit_to_shown,
    form_request,
    form_values,
    shown_fields,
    takes_form,
)
from .guard import LoginThrottle, PaintGuard
from .handlers import App, PipelineHolder
from .page import CSS, DELETE_CACHE, MAX_FILE_SIZE, build_app, launch, read_auth
from .workdir import ModelChoices, Workdir

__all__ = [
    "CSS", "CUSTOM", "DEFAULT_CONTROLNETS", "DELETE_CACHE", "FIELDS", "FORM", "MAX_ADAPTERS", "MAX_FILE_SIZE",
    "MAX_MASK_LAYERS", "MAX_PIXELS", "MAX_REFERENCES", "MODEL_BLOCKS", "NO_CONTROL", "READY_CONTROL", "SWEEP_FORM",
    "TABS", "VIDEO_FORM", "App", "Field", "LoginThrottle", "ModelChoices", "PaintGuard", "PipelineHolder", "Tab",
    "Workdir", "build_app", "clamp_to_form", "fit_to_shown", "form_request", "form_values", "launch", "read_auth",
    "shown_fields", "style_settings", "takes_form",
]
