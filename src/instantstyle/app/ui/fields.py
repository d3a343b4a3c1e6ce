"""The form: every field declared once (``FORM``), placed in tabs (``TABS``), turned into a ``Request`` and back.

A field is its component (built around its default, which is also the API default) and, when it is one ``Request``
field of the same name, how its value goes into the request and comes back. The composite fields (references and
weights, blocks and table, seed and randomize, uploads, control, adapters) are translated by ``form_request`` and
``form_values``. A new mode is one ``Tab`` (its panel) plus its fields here; a field or tab the loaded model's
family cannot use is hidden (``shown_fields``), as FLUX's true CFG is on every other family.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import gradio as gr

from ...core import csgo
from ...core.blocks import list_blocks, resolve_blocks
from ...core.caption import DEFAULT_CAPTION_MODEL
from ...core.pipeline import StylePipeline
from ...core.request import (
    CONTROL_KINDS,
    MAX_CSD_GUIDANCE,
    MAX_SIZE,
    STYLE_FITS,
    AdapterUse,
    LoraRef,
    Request,
    StyleRef,
)
from ...core.schedulers import SCHEDULERS
from ...core.video_options import DEFAULT_MAX_FRAMES, MAX_VIDEO_SIZE
from ...errors import UserError
from ...families import all_families
from ...loading.resources import Resources
from ...modes.hidiffusion_settings import FEATURE as HIDIFFUSION
from ..sweep import parse_number_list
from .guard import PAINTED_LAYERS
from .workdir import ModelChoices, Workdir

#: The references the page shows as cards (more come in through the API).
MAX_REFERENCES = 6
#: Further adapters the page has blocks for.
MAX_ADAPTERS = 2
#: The mask painters take one layer of strokes; more than this many from a client is refused before decoding.
MAX_MASK_LAYERS = PAINTED_LAYERS
#: ControlNets the page may name without a models folder: each family's default for a control kind.
DEFAULT_CONTROLNETS = frozenset(ref for family in all_families() for ref in family.default_controlnets.values())
CUSTOM = "custom"
MODEL_BLOCKS = "model's default"  # the request names no blocks: the family's default (style; all on SD3/FLUX)
NO_CONTROL = "none"
READY_CONTROL = "ready control image"  # the control upload is the control image itself (needs a ControlNet)
DEFAULT_SCHEDULER = "model's own"
#: Block presets offered in the page (every family has the same preset names).
PRESET_NAMES = tuple(dict.fromkeys(name for family in all_families() for name in family.presets))
R = TypeVar("R")


def shows_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ``UserError`` into a message in the page; anything else too, with the traceback on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as err:
            raise gr.Error(str(err), duration=None, print_exception=False) from None
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"unexpected {type(err).__name__}: {err}", duration=None, print_exception=False) from None

    return wrapper


def _whole(name: str, value: Any) -> int:
    """A whole number from a form field (gradio may hand over 7.0), or a ``UserError``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise UserError(f"{name} must be a whole number, got {value!r}")


def _number(name: str) -> Callable[[Any], float]:
    """A number field's value as a float, or a ``UserError`` naming it (an API client may send anything)."""

    def read(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)

    return read


def _true_or_false(name: str) -> Callable[[Any], bool]:
    """A checkbox's value as sent (``None``: unticked); anything but true/false is refused, never read by its
    truthiness (an API client's ``"false"`` is not true)."""

    def read(value: Any) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value

    return read


def file_path(item: Any) -> str:
    """A path from what gradio hands a File input (a path string, or an object with ``.name``/``.path``)."""
    return str(getattr(item, "path", None) or getattr(item, "name", None) or item)


@dataclass(frozen=True)
class Field:
    """One form field: its component (built around its default, which is also the API default) and, for a field
    that is one ``Request`` field of the same name, how its value goes into the request and comes back."""

    name: str
    default: Any
    component: Callable[..., Any]
    to_request: Callable[[Any], Any] | None = None
    from_request: Callable[[Any], Any] | None = None
    required: bool = False  # no API default (the style and the prompt)
    #: Whether the page shows the field for what is loaded (``None``: always); see ``shown_fields``.
    shown_for: Callable[[Resources], bool] | None = None
    #: A single-file upload the page shows a thumbnail of, beside the field: what it is called there.
    thumb: str | None = None
    #: The models-folder names the field offers (a ``ModelChoices`` attribute), for dropdowns.
    choices: str | None = None

    @property
    def limits(self) -> tuple[float, float | None] | None:
        """(lowest, highest or ``None``) the field's component accepts; ``None`` for fields without a range."""
        return getattr(self.component, "limits", None)

    def build(self, value: Any, models: ModelChoices | None = None) -> Any:
        """The field's component holding ``value`` (a dropdown offering the models folders' names)."""
        if self.choices is None:
            return self.component(value)
        return self.component(value, getattr(models or ModelChoices(), self.choices))


def _text(label: str, elem_id: str | None = None, lines: int = 1, placeholder: str | None = None,
          visible: bool | Literal["hidden"] = True, scale: int | None = None) -> Callable[[Any], Any]:
    return lambda value: gr.Textbox(value, label=label, elem_id=elem_id, lines=lines, max_lines=max(lines, 4),
                                    placeholder=placeholder, visible=visible, scale=scale)


@dataclass(frozen=True)
class _Slider:
    """A slider field's component, with its range as ``limits`` (what a restored value is clamped to)."""

    low: float
    high: float
    step: float
    label: str
    elem_id: str | None = None

    @property
    def limits(self) -> tuple[float, float]:
        return self.low, self.high

    def __call__(self, value: Any) -> Any:
        return gr.Slider(self.low, self.high, value=value, step=self.step, label=self.label, elem_id=self.elem_id,
                         min_width=120)


@dataclass(frozen=True)
class _Number:
    """A whole-number field's component (at least 0), with ``limits`` like a slider's."""

    label: str
    elem_id: str
    limits: tuple[float, float | None] = (0, None)

    def __call__(self, value: Any) -> Any:
        return gr.Number(value=value, precision=0, minimum=self.limits[0], maximum=self.limits[1], label=self.label,
                         elem_id=self.elem_id, min_width=80)


@dataclass(frozen=True)
class _Decimal:
    """A number field that may be left blank (``None``: the mode's own value), with ``limits`` like a slider's (what
    a restored value is held to; a typed one past them gets the request's own message, naming the field)."""

    label: str
    elem_id: str
    limits: tuple[float, float | None]
    step: float = 0.5
    placeholder: str | None = None  # what a blank box means

    def __call__(self, value: Any) -> Any:
        return gr.Number(value=BLANK if value is None else value,  # type: ignore[arg-type]  # "" shows blank
                         step=self.step, label=self.label, elem_id=self.elem_id, min_width=80,
                         placeholder=self.placeholder)


def _upload(label: str, elem_id: str) -> Callable[[Any], Any]:
    """One image upload, kept as sent (no decoding by gradio: the app checks it against its pixel cap)."""
    return lambda value: gr.File(value, label=label, file_types=["image"], elem_id=elem_id, height=96)


def _hidden_files(label: str, elem_id: str, types: list[str]) -> Callable[[Any], Any]:
    """A list of files the page fills from its cards (the API sends it directly)."""
    return lambda value: gr.File(value, label=label, file_count="multiple", file_types=types, elem_id=elem_id,
                                 visible="hidden")


def _models_dropdown(label: str, elem_id: str, blank: str) -> Callable[[Any, tuple[str, ...]], Any]:
    """A models-folder name (or any typed name, checked on use); ``""``, shown as ``blank``, names none."""
    return lambda value, names: gr.Dropdown([(blank, ""), *((n, n) for n in names)], value=value, label=label,
                                            allow_custom_value=True, elem_id=elem_id)


def _blocks_dropdown(label: str, elem_id: str, custom: bool) -> Callable[[Any], Any]:
    return lambda value: gr.Dropdown([MODEL_BLOCKS, *PRESET_NAMES, *([CUSTOM] if custom else [])], value=value,
                                     label=label, allow_custom_value=True, elem_id=elem_id)


def _or_none(value: Any) -> str | None:
    return (value or "").strip() or None


def _or_empty(value: Any) -> str:
    return value or ""


#: A number field left blank (gradio's number box shows ``None`` as 0, and sends a cleared box as ``""``).
BLANK = ""


def _blank_or_value(value: float | None) -> float | str:
    """A request's value for a number field that may be blank: ``None`` (the mode's own) is the blank box."""
    return BLANK if value is None else value


def _blank_or_number(name: str, zero_is_blank: bool = False) -> Callable[[Any], float | None]:
    """A field that may be left blank: ``None`` (blank: the mode's own value, see ``Request``) or a number (0 too, with
    ``zero_is_blank``: what the API took as "the mode's own" before the field could be blank)."""

    def read(value: Any) -> float | None:
        if value is None or value == "":
            return None
        number = _number(name)(value)
        return None if zero_is_blank and number == 0 else number

    return read


def _optional_whole(name: str) -> Callable[[Any], int | None]:
    return lambda value: _whole(name, value) or None


def _scheduler(value: Any) -> str | None:
    name = (value or "").strip()
    return None if name in ("", DEFAULT_SCHEDULER) else name


def _loras(value: Any) -> tuple[LoraRef, ...]:
    return tuple(LoraRef.parse(item.strip()) for item in (value or "").split(",") if item.strip())


def _refuses(check: Callable[..., None], *args: Any) -> bool:
    try:
        check(*args)
    except UserError:
        return True
    return False


#: A request with nothing but a prompt and a reference (what ``accepts`` compares a change with).
_BARE = Request("probe", style=(StyleRef("probe.png"),))


def accepts(**changes: Any) -> Callable[[Resources], bool]:
    """Whether the loaded model makes a request with ``changes``: what its family's own check says (with its loaded
    denoiser; nothing when it refuses the bare request too, as an inpainting model refuses text-to-image), and its
    adapter's (a CSGO checkpoint refuses blocks, content prompts, image modes...)."""
    probe = _BARE.replace(**changes)

    def shown(res: Resources) -> bool:
        family = res.family.check_request
        if _refuses(family, probe, res.denoiser) and not _refuses(family, _BARE, res.denoiser):
            return False
        return not _refuses(csgo.check_request if res.csgo is not None else csgo.check_not_csgo, probe)

    return shown


def _restyles(res: Resources) -> bool:
    """Whether the model restyles photos (InstantStyle-Plus: the UNet families, not with a CSGO checkpoint)."""
    return bool(res.family.features.get("restyle")) and res.csgo is None


def _captions(res: Resources) -> bool:
    """Whether a prompt can be made from a picture: restyle's photo, or CSGO's content image."""
    return _restyles(res) or res.csgo is not None


def _hidiffusion(res: Resources) -> bool:
    return HIDIFFUSION in res.family.features and res.csgo is None


def _mask_painter(label: str, elem_id: str) -> Callable[[Any], Any]:
    from .painter import cap_mask_painter

    return lambda value: cap_mask_painter(gr.ImageEditor(
        value, label=label, type="numpy", image_mode="RGBA", sources=("upload",),
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False, elem_id=elem_id, height=320))


def _adapter_fields(k: int) -> tuple[Field, ...]:
    """The fields of further adapter ``k``: its file (from the models folders), style images, blocks and scale."""
    shown = accepts(adapters=("probe.safetensors;style=probe.png",))
    return (
        Field(f"adapter_{k}", "", _models_dropdown(f"Adapter {k}: IP-Adapter file", f"adapter-{k}", "none"),
              shown_for=shown, choices="adapters"),
        Field(f"adapter_{k}_style", None, lambda value, k=k: gr.File(
            value, label=f"Adapter {k}: style image(s)", file_count="multiple", file_types=["image"],
            elem_id=f"adapter-{k}-style", height=96), shown_for=shown),
        Field(f"adapter_{k}_blocks", MODEL_BLOCKS, _blocks_dropdown(f"Adapter {k}: blocks", f"adapter-{k}-blocks",
                                                                    custom=False), shown_for=shown),
        Field(f"adapter_{k}_scale", 1.0, _Slider(0, 2, 0.05, f"Adapter {k}: scale", f"adapter-{k}-scale"),
              shown_for=shown),
    )


#: What the loaded model takes (its family's check and its adapter's): each gates the fields named for it.
TAKES_BLOCKS = accepts(blocks="style")
SUBTRACTS = accepts(content_prompt="probe")  # content subtraction (InstantStyle's; not CSGO's, not SD3.5's)
IMAGE_MODES = accepts(init_image="probe.png", mask="probe.png")  # inpainting: what an inpainting model takes too
CONTROL_KINDS_TAKEN = accepts(control="canny", control_image="probe.png")
SCHEDULES_STYLE = accepts(style_start=0.5)

FORM: tuple[Field, ...] = (
    # The fields of the first pages, in their order (the API takes them by position too).
    Field("style", None, _hidden_files("Style references", "style", ["image", ".safetensors"]), required=True),
    Field("prompt", "", _text("Prompt", "prompt", lines=2, placeholder="what to paint, e.g. a cat on a roof", scale=2),
          _or_empty, _or_empty, required=True),
    Field("style_weights", "", _text("Style weights (comma separated, blank: equal)", "weights", visible="hidden")),
    Field("negative_prompt", "", _text("Negative prompt (blank: the mode's own; restyle: the recipe's)", "negative"),
          _or_none, _or_empty),
    Field("blocks", MODEL_BLOCKS, _blocks_dropdown("Blocks (preset, spec or @FILE:NAME)", "blocks",
                                                   custom=True), shown_for=TAKES_BLOCKS),
    Field("block_table", None, lambda value: gr.Dataframe(value, headers=["block", "scale"],
                                                          datatype=["str", "number"], static_columns=[0],
                                                          label="Per-block scales (edit: blocks = custom)",
                                                          elem_id="block-table"), shown_for=TAKES_BLOCKS),
    Field("scale", 1.0, _Slider(0, 2, 0.05, "Scale", "scale"), _number("scale"), float),
    Field("content_prompt", "", _text("Content prompt (what the style image shows, to keep out)", "content-prompt"),
          _or_none, _or_empty, shown_for=SUBTRACTS),
    Field("content_scale", 0.5, _Slider(0, 2, 0.05, "Content scale", "content-scale"), _number("content scale"),
          float, shown_for=SUBTRACTS),
    Field("content_image", None, _upload("…or a content image (CSGO: the content to keep)", "content-image"),
          thumb="content image", shown_for=accepts(content_image="probe.png")),
    Field("seed", 0, _Number("Seed", "seed", (0, 2**53))),  # a float in the page: whole numbers up to 2**53
    Field("randomize_seed", True, lambda value: gr.Checkbox(value=value, label="Random seed", elem_id="randomize",
                                                                      min_width=90)),
    Field("steps", 30, _Slider(1, 100, 1, "Steps", "steps"), lambda v: _whole("steps", v), int),
    Field("guidance", BLANK, _Decimal("Guidance", "guidance", (0, 20), placeholder="mode's own"),
          _blank_or_number("guidance"), _blank_or_value),  # None: the mode's (see Request)
    Field("true_cfg", 1.0, _Slider(1, 10, 0.5, "True CFG (above 1: real CFG with the negative prompt)", "true-cfg"),
          _number("true CFG"), float, shown_for=lambda res: res.family.takes_true_cfg),
    Field("width", 0, _Number("Width (0: model's)", "width", (0, MAX_SIZE)), _optional_whole("width"),
          lambda v: v or 0),
    Field("height", 0, _Number("Height (0: model's)", "height", (0, MAX_SIZE)), _optional_whole("height"),
          lambda v: v or 0),
    Field("num_images", 1, _Slider(1, 8, 1, "Images", "num-images"), lambda v: _whole("number of images", v), int),
    Field("init_image", None, _upload("Init image (restyle it: img2img)", "init-image"), thumb="init image",
          shown_for=IMAGE_MODES),
    Field("strength", 0, _Slider(0, 1, 0.05, "Strength (how much to change; 0: default, 0.8, inpainting 1)",
                                 "strength"), lambda v: _number("strength")(v or 0) or None, lambda v: v or 0,
          shown_for=IMAGE_MODES),
    Field("mask", None, _upload("Mask for inpainting (white = repaint; needs the init image)", "mask"), thumb="mask",
          shown_for=IMAGE_MODES),
    Field("control", NO_CONTROL, lambda value: gr.Dropdown([NO_CONTROL, *CONTROL_KINDS, READY_CONTROL], value=value,
                                                           label="ControlNet control", elem_id="control"),
          shown_for=CONTROL_KINDS_TAKEN),
    Field("control_image", None, _upload("Control image (canny or depth source; default: the init image)",
                                         "control-image"), thumb="control image", shown_for=CONTROL_KINDS_TAKEN),
    # Blank (or 0, as the API took it before the field could be blank): the mode's own, 1; restyle and CSGO 0.6.
    Field("control_scale", BLANK, _Decimal("Control scale", "control-scale", (0, 2), 0.05,
                                           "mode's own: 1; restyle, CSGO 0.6"),
          _blank_or_number("control scale", zero_is_blank=True), _blank_or_value),
    Field("controlnet", "", _models_dropdown("ControlNet model", "controlnet", "the default for the control kind"),
          choices="controlnets"),
    Field("scheduler", DEFAULT_SCHEDULER, lambda value: gr.Dropdown([DEFAULT_SCHEDULER, *SCHEDULERS], value=value,
                                                                    label="Scheduler", elem_id="scheduler"),
          _scheduler, lambda v: v or DEFAULT_SCHEDULER, shown_for=accepts(scheduler="euler")),
    Field("lora", "", _text("LoRA file(s): NAME[:SCALE], comma separated", "lora")),
    Field("mask_paint", None, _mask_painter("…or paint the area to repaint on the init image", "mask-paint"),
          shown_for=IMAGE_MODES),
    Field("hidiffusion", False, lambda value: gr.Checkbox(value=value, label="HiDiffusion", elem_id="hidiffusion",
                                                          min_width=100),
          _true_or_false("hidiffusion"), bool, shown_for=_hidiffusion),
    # Added with the reference cards: the rest of what the command line takes.
    Field("composition", None, _upload("Composition image (its layout; the style stays the references')",
                                       "composition"), thumb="composition image",
          shown_for=accepts(composition="probe.png")),
    Field("composition_scale", 1.0, _Slider(0, 2, 0.05, "Composition scale", "composition-scale"),
          _number("composition scale"), float, shown_for=accepts(composition="probe.png")),
    Field("regions", None, _hidden_files("Region masks (one per reference)", "regions", ["image"]),
          shown_for=accepts(regions=("probe.png",))),
    Field("style_start", 0.0, _Slider(0, 1, 0.05, "Style starts at (fraction of the steps)", "style-start"),
          _number("style start"), float, shown_for=SCHEDULES_STYLE),
    Field("style_end", 1.0, _Slider(0, 1, 0.05, "Style ends at", "style-end"), _number("style end"), float,
          shown_for=SCHEDULES_STYLE),
    Field("style_fit", STYLE_FITS[0], lambda value: gr.Dropdown(list(STYLE_FITS), value=value, elem_id="style-fit",
                                                                label="Wide or tall references: crop, pad or tiles"),
          str, str),
    Field("depth_model", "", _models_dropdown("Depth model (makes the depth map of the control image)", "depth-model",
                                              "none: the control image is a depth map"), choices="depth_models",
          shown_for=accepts(control="depth", control_image="probe.png", depth_model="probe")),
    *(field for k in range(1, MAX_ADAPTERS + 1) for field in _adapter_fields(k)),
    # Restyle a photo (InstantStyle-Plus): its content kept, the references' style on it.
    Field("restyle", None, _upload("Photo to restyle (its content is kept)", "restyle"), thumb="photo",
          shown_for=_restyles),
    Field("restyle_content_scale", 0.3, _Slider(0, 2, 0.05, "Photo content scale", "restyle-content-scale"),
          _number("restyle content scale"), float, shown_for=_restyles),
    Field("inversion_steps", 0, _Number("Inversion steps (0: steps)", "inversion-steps", (0, 1000)),
          _optional_whole("inversion steps"), lambda v: v or 0, shown_for=_restyles),
    Field("renoise_steps", 1, _Slider(1, 10, 1, "ReNoise steps", "renoise-steps"),
          lambda v: _whole("renoise steps", v), int, shown_for=_restyles),
    # The rest of restyle (the prompt made from the photo, CSD guidance) and CSGO's content tokens.
    Field("caption_model", "", _models_dropdown("…or from the photo by", "caption-model", "none: as written"),
          shown_for=_captions, choices="captioners"),
    Field("csd", "", _models_dropdown("CSD checkpoint for CSD guidance", "csd", "none"), shown_for=_restyles,
          choices="csds"),
    Field("style_guidance", 0.0, _Decimal("CSD style guidance (0: off)", "style-guidance", (0, MAX_CSD_GUIDANCE), 10),
          _number("style guidance"), float, shown_for=_restyles),
    Field("content_guidance", 0.0, _Decimal("CSD content guidance (0: off)", "content-guidance",
                                            (0, MAX_CSD_GUIDANCE), 10),
          _number("content guidance"), float, shown_for=_restyles),
    Field("content_adapter_scale", 0.0, _Slider(0, 2, 0.05, "Content tokens' scale (CSGO; 0: as the authors' code)",
                                                "content-adapter-scale"),
          _number("content adapter scale"), float, shown_for=accepts(content_adapter_scale=0.5)),
)
#: The form's field names, in the order every handler (and the API) takes them.
FIELDS = tuple(f.name for f in FORM)
FIELD = {f.name: f for f in FORM}

Item = str | tuple[str, ...]


@dataclass(frozen=True)
class Tab:
    """One tab of the form's settings: a mode or a group of settings, laid out as fields and rows of fields (or
    ``@panel`` names the page builds itself: reference regions, the LoRA picker). Shown when any of its fields is
    shown for the loaded model."""

    name: str
    label: str
    items: tuple[Item, ...]


TABS: tuple[Tab, ...] = (
    Tab("style", "Style", ("negative_prompt", ("blocks", "scale"), ("steps", "num_images", "true_cfg"),
                           ("seed", "guidance", "width", "height"), ("randomize_seed", "hidiffusion"))),
    Tab("restyle", "Restyle", ("restyle", ("restyle_content_scale", "inversion_steps", "renoise_steps"),
                               ("csd", "style_guidance", "content_guidance"))),
    Tab("content", "Content", (("content_prompt", "content_scale"), "content_image", "content_adapter_scale")),
    Tab("image", "Image", ("init_image", "strength", "mask", "mask_paint")),
    Tab("control", "Control", (("control", "control_scale"), "control_image", ("controlnet", "depth_model"))),
    Tab("composition", "Composition", ("composition", "composition_scale")),
    Tab("regions", "Regions", ("regions", "@regions")),
    Tab("adapters", "Adapters", tuple(
        item for k in range(1, MAX_ADAPTERS + 1)
        for item in ((f"adapter_{k}", f"adapter_{k}_blocks", f"adapter_{k}_scale"), f"adapter_{k}_style"))),
    Tab("advanced", "Advanced", ("block_table", ("scheduler", "style_fit"), ("style_start", "style_end"), "lora",
                                 "@lora")),
)
#: Fields placed outside the tabs (the references and the prompt, above them; a tuple is a row).
ABOVE_TABS = ("style", "style_weights", ("prompt", "caption_model"))


def tab_fields(tab: Tab) -> list[str]:
    """The form fields placed in a tab."""
    rows = [item if isinstance(item, tuple) else (item,) for item in tab.items]
    return [name for row in rows for name in row if not name.startswith("@")]


#: The sweep tab's own fields, taken after the form's by the sweep handler.
SWEEP_FORM: tuple[Field, ...] = (
    Field("sweep_blocks", "", _text("Blocks to compare (rows; blank: the model's presets among style, "
                                    "style+layout, all; a CSGO checkpoint's own)", "sweep-blocks")),
    Field("sweep_scales", "0.4, 0.7, 1.0", _text("Scales to compare (columns)", "sweep-scales")),
    Field("sweep_content_scales", "", _text("Content scales to compare (optional, rows; with a CSGO checkpoint, "
                                            "its content tokens' scale)", "sweep-content-scales")),
    Field("sweep_style_floor", 0.9, _Slider(0, 1, 0.05, "Pick: the best prompt score keeping this share of the best "
                                            "style score", "sweep-style-floor")),
)


#: The video tab's own fields (``instantstyle video``'s options), taken after the form's by the video handlers; the
#: form makes the first frame. Shown only when the server has a video model (``ui --video-model``).
VIDEO_FORM: tuple[Field, ...] = (
    Field("video_clip", None, lambda value: gr.File(value, label="Clip to restyle (.mp4, .mov, .mkv)",
                                                    file_types=[".mp4", ".mov", ".mkv"], elem_id="video-clip",
                                                    height=96)),
    Field("video_frames", 16, _Number("Frames", "video-frames", (2, DEFAULT_MAX_FRAMES)),
          lambda v: _whole("frames", v)),
    Field("video_fps", 8, _Number("Frames per second", "video-fps", (1, 120)), lambda v: _whole("fps", v)),
    Field("video_width", 512, _Number("Video width", "video-width", (64, MAX_VIDEO_SIZE)),
          lambda v: _whole("video width", v)),
    Field("video_height", 512, _Number("Video height", "video-height", (64, MAX_VIDEO_SIZE)),
          lambda v: _whole("video height", v)),
    Field("video_start", 0.0, _Decimal("Start (seconds into the clip)", "video-start", (0, None), 0.5),
          lambda v: _number("start")(v or 0)),
    Field("video_duration", None, _Decimal("Duration (seconds)", "video-duration", (0, None), 0.5,
                                           placeholder="to the clip's end"),
          _blank_or_number("duration")),
    Field("video_first_frame", None, _upload("Ready first frame (optional: the video starts with it, the form is "
                                             "not run)", "video-first-frame"), thumb="ready first frame"),
    Field("video_steps", 50, _Number("Video steps", "video-steps", (1, 1000)), lambda v: _whole("video steps", v)),
    Field("video_inversion_steps", 50, _Number("Inversion steps (the steps or a multiple)", "video-inversion-steps",
                                               (1, 1000)), lambda v: _whole("inversion steps", v)),
    Field("video_guidance", 9.0, _Decimal("Video guidance", "video-guidance", (0, 50)), _number("video guidance")),
    Field("video_conv_injection", 0.2, _Slider(0, 1, 0.05, "Convolution injection (fraction of the steps)",
                                               "video-conv-injection"), _number("conv injection")),
    Field("video_spatial_injection", 0.2, _Slider(0, 1, 0.05, "Spatial attention injection", "video-spatial-injection"),
          _number("spatial injection")),
    Field("video_temporal_injection", 0.5, _Slider(0, 1, 0.05, "Temporal attention injection",
                                                   "video-temporal-injection"), _number("temporal injection")),
    Field("video_prompt", "", _text("Video prompt (blank: the prompt)", "video-prompt"), _or_none),
)


def shown_fields(pipe: StylePipeline) -> dict[str, bool]:
    """Whether the page shows each field for the loaded model (hidden ones would fail the request unseen)."""
    return {f.name: f.shown_for is None or f.shown_for(pipe.resources) for f in FORM}


# --- form -> request ---------------------------------------------------------------------------------------


def form_request(workdir: Workdir, values: dict[str, Any], pipe: StylePipeline | None = None) -> Request:
    """The ``Request`` a filled-in form stands for (uploads checked and kept in the workdir; a presets reference
    checked against ``pipe``'s blocks, see ``Workdir.blocks_spec``)."""
    return Request(**form_fields(workdir, values, pipe))


def form_fields(workdir: Workdir, values: dict[str, Any], pipe: StylePipeline | None = None) -> dict[str, Any]:
    """The ``Request`` fields of a filled-in form, not validated together yet (a video's first-frame request fills in
    the clip's first frame before it is one: ``video_tab``)."""
    files = [file_path(f) for f in values.get("style") or []]
    if not files:
        raise UserError("upload a style image (or a style file) first")
    weights_text = (values.get("style_weights") or "").strip()
    weights = parse_number_list("style weight", weights_text) if weights_text else (1.0,) * len(files)
    if len(weights) != len(files):
        raise UserError(f"{len(weights)} style weights for {len(files)} style files")
    style = tuple(StyleRef(workdir.keep_upload(f, "style image", style_file=True), w)
                  for f, w in zip(files, weights, strict=True))

    def kept(name: str, what: str) -> str | None:
        item = values.get(name)
        return workdir.keep_upload(file_path(item), what) if item else None

    control, control_image = _control_from_form(values.get("control") or NO_CONTROL,
                                                kept("control_image", "control image"))
    if control is None and pipe is not None and pipe.resources.csgo is not None:
        control = csgo.CONTROL  # CSGO's own: its tile ControlNet on the content image (its field is hidden)
    plain = {f.name: f.to_request(values.get(f.name, f.default)) for f in FORM if f.to_request is not None}
    controlnet, depth_model = _or_none(values.get("controlnet")), _or_none(values.get("depth_model"))
    randomize = _true_or_false("randomize_seed")(values.get("randomize_seed", True))
    captioner, csd = _or_none(values.get("caption_model")), _or_none(values.get("csd"))
    if captioner is not None and plain["prompt"].strip():
        raise UserError("a caption model makes the prompt from the photo: clear the prompt, or pick none")
    if (plain["style_guidance"] or plain["content_guidance"]) and csd is None:
        raise UserError("CSD style and content guidance need a CSD checkpoint: pick one (from the models folders)")
    return dict(
        **plain,
        style=style,
        blocks=_blocks_from_form(workdir, values.get("blocks") or MODEL_BLOCKS, values.get("block_table"), pipe),
        content_image=kept("content_image", "content image"),
        seed=None if randomize else _whole("seed", values.get("seed", 0)),
        init_image=kept("init_image", "init image"),
        mask=kept("mask", "mask") or workdir.keep_painted_mask(values.get("mask_paint")),
        control=control,
        control_image=control_image,
        controlnet=None if controlnet is None else workdir.model_path("controlnet", controlnet, DEFAULT_CONTROLNETS),
        depth_model=None if depth_model is None else workdir.model_path("depth model", depth_model),
        lora=tuple(LoraRef(workdir.model_path("LoRA", ref.path), ref.scale) for ref in _loras(values.get("lora"))),
        composition=kept("composition", "composition image"),
        restyle=kept("restyle", "photo to restyle"),
        regions=tuple(workdir.keep_upload(file_path(f), "region mask") for f in values.get("regions") or []),
        adapters=_adapters_from_form(workdir, values, pipe),
        caption_model=None if captioner is None else workdir.model_path("caption model", captioner,
                                                                        frozenset({DEFAULT_CAPTION_MODEL})),
        csd=None if csd is None else workdir.model_path("CSD checkpoint", csd),
    )


def _blocks_from_form(workdir: Workdir, blocks: str, table: Any, pipe: StylePipeline | None) -> str | None:
    if blocks == CUSTOM:
        return spec_from_rows(table)
    return None if blocks == MODEL_BLOCKS else workdir.blocks_spec(blocks, pipe)


def _control_from_form(kind: str, upload: str | None) -> tuple[str | None, str | None]:
    """(control, control image) of the request from the control dropdown and the control upload."""
    if kind == READY_CONTROL:
        if upload is None:
            raise UserError("a ready control image needs the control image upload")
        return upload, None
    if kind in CONTROL_KINDS:
        return kind, upload
    if kind != NO_CONTROL:
        raise UserError(f"control must be one of {NO_CONTROL}, {', '.join(CONTROL_KINDS)}, {READY_CONTROL}; "
                        f"got {kind!r}")
    if upload is not None:
        raise UserError("a control image needs a control kind (canny, depth or ready control image)")
    return None, None


def _adapters_from_form(workdir: Workdir, values: dict[str, Any],
                        pipe: StylePipeline | None) -> tuple[AdapterUse, ...]:
    """The further adapters of the form's adapter blocks that name an adapter file."""
    uses = []
    for k in range(1, MAX_ADAPTERS + 1):
        ref = _or_none(values.get(f"adapter_{k}"))
        files = [file_path(f) for f in values.get(f"adapter_{k}_style") or []]
        if ref is None:
            if files:
                raise UserError(f"adapter {k}: pick its adapter file for its style image(s)")
            continue
        if not files:
            raise UserError(f"adapter {k} ({ref}): give its style image(s)")
        blocks = values.get(f"adapter_{k}_blocks") or MODEL_BLOCKS
        uses.append(AdapterUse(
            workdir.model_path("adapter", ref),
            tuple(StyleRef(workdir.keep_upload(f, f"adapter {k} style image", style_file=True)) for f in files),
            None if blocks == MODEL_BLOCKS else workdir.blocks_spec(blocks, pipe),
            _number(f"adapter {k} scale")(values.get(f"adapter_{k}_scale", 1.0)),
        ))
    return tuple(uses)


def block_rows(pipe: StylePipeline, preset: str) -> list[list[Any]]:
    """The per-block editor's rows for a preset: every attention block with scale 1 if the preset uses it."""
    res = pipe.resources
    preset = res.family.default_blocks if preset == MODEL_BLOCKS else preset
    return [[row.name, 1.0 if preset in row.presets else 0.0] for row in list_blocks(res.layers, res.family)]


def rows_from_spec(pipe: StylePipeline, spec: str | None) -> list[list[Any]]:
    """The editor's rows for any blocks spec (each block at the scale of its layers; ``None``: the family's
    default)."""
    res = pipe.resources
    scales = resolve_blocks(spec, res.layers, res.family)
    per_block = {res.family.attention_block(layer): scale for layer, scale in scales.items()}
    return [[row.name, per_block.get(row.name, 0.0)] for row in list_blocks(res.layers, res.family)]


def spec_from_rows(rows: Any) -> str:
    """``name=scale,...`` for the editor rows whose scale is above 0."""
    values = rows.values.tolist() if hasattr(rows, "values") else list(rows or [])
    items = []
    for row in values:
        if len(row) < 2 or row[0] in (None, ""):
            continue
        name, value = str(row[0]), row[1]
        try:
            scale = float(value)
        except (TypeError, ValueError):
            raise UserError(f"per-block scale {value!r} for {name} is not a number") from None
        if not scale >= 0 or scale == float("inf"):
            raise UserError(f"per-block scale for {name} must be a number of at least 0, got {value!r}")
        if scale > 0:
            items.append(f"{name}={scale:g}")
    if not items:
        raise UserError("custom blocks: give at least one block a scale above 0")
    return ",".join(items)


# --- request -> form ---------------------------------------------------------------------------------------


def form_values(pipe: StylePipeline, workdir: Workdir, request: Request) -> tuple[list[Any], list[str]]:
    """The form field values for a request, in ``FIELDS`` order, and the paths that could not be restored (only
    this app's kept uploads and the models folders' files are: the page never serves or reads other paths)."""
    lost: list[str] = []

    def own(path: str | None) -> str | None:
        if path and not workdir.owns(path):
            lost.append(path)
            return None
        return path

    def model(path: str | None, defaults: frozenset[str] = frozenset()) -> str:
        if not path or path in defaults:
            return path or ""
        name = workdir.model_name(path)
        if name is None:
            lost.append(path)
        return name or ""

    kept = [ref for ref in request.style if own(ref.path)]
    preset = (MODEL_BLOCKS if request.blocks is None
              else request.blocks if request.blocks in pipe.resources.family.presets else CUSTOM)
    ready = request.control is not None and request.control not in CONTROL_KINDS
    # CSGO's own tile ControlNet on its content image is what the form's "none" completes to (its field is hidden)
    control = (NO_CONTROL if pipe.resources.csgo is not None and request.control == csgo.CONTROL
               and request.control_image is None else READY_CONTROL if ready else request.control or NO_CONTROL)
    regions = [own(path) for path in request.regions]
    loras = [(model(ref.path), ref.scale) for ref in request.lora]
    values = {f.name: f.from_request(getattr(request, f.name)) for f in FORM if f.from_request is not None}
    values.update(
        style=[ref.path for ref in kept] or None,
        style_weights=", ".join(f"{ref.weight:g}" for ref in kept) if any(r.weight != 1 for r in kept) else "",
        blocks=preset,
        block_table=None if pipe.resources.csgo is not None  # CSGO's blocks are trained in: no table
        else rows_from_spec(pipe, workdir.blocks_spec(request.blocks or "", pipe)) if preset == CUSTOM
        else block_rows(pipe, preset),
        content_image=own(request.content_image),
        seed=request.seed or 0,
        randomize_seed=request.seed is None,
        init_image=own(request.init_image),
        mask=own(request.mask),
        control=control,
        control_image=own(request.control if ready else request.control_image),
        controlnet=model(request.controlnet, DEFAULT_CONTROLNETS),
        depth_model=model(request.depth_model),
        lora=", ".join(f"{name}:{scale:g}" if scale != 1 else name for name, scale in loras if name),
        mask_paint=None,  # a restored mask comes back as the mask upload
        composition=own(request.composition),
        restyle=own(request.restyle),
        regions=regions if all(regions) and regions else None,
        # a made prompt is in the prompt now: it makes the same image without captioning again
        caption_model="" if request.prompt.strip() else model(request.caption_model,
                                                                frozenset({DEFAULT_CAPTION_MODEL})),
        csd=model(request.csd),
    )
    for k in range(1, MAX_ADAPTERS + 1):
        values.update({f"adapter_{k}": "", f"adapter_{k}_style": None, f"adapter_{k}_blocks": MODEL_BLOCKS,
                       f"adapter_{k}_scale": 1.0})
    for k, use in enumerate(request.adapters, 1):
        if k > MAX_ADAPTERS:
            lost.append(use.path)
            continue
        style = [ref.path for ref in use.style if own(ref.path)]
        values.update({f"adapter_{k}": model(use.path), f"adapter_{k}_style": style or None,
                       f"adapter_{k}_blocks": use.blocks or MODEL_BLOCKS, f"adapter_{k}_scale": use.scale})
    return [values[name] for name in FIELDS], lost


def clamp_to_form(values: list[Any]) -> tuple[list[Any], list[str]]:
    """Form values (in ``FIELDS`` order) held to each field's range, as the page would refuse them otherwise, and
    one note per value changed (a PNG or style file made elsewhere may hold any value a ``Request`` allows)."""
    clamped, notes = list(values), []
    for i, field in enumerate(FORM):
        value = values[i]
        if field.limits is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = field.limits
        inside = max(low, value) if high is None else min(max(low, value), high)
        if inside != value:
            clamped[i] = type(value)(inside)
            shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in (value, inside)]
            notes.append(f"{field.name.replace('_', ' ')} {shown[0]} -> {shown[1]}")
    return clamped, notes


def fit_to_shown(values: list[Any], shown: dict[str, bool]) -> tuple[list[Any], list[str]]:
    """Form values (in ``FIELDS`` order) with the fields the page hides for its model back at their defaults
    (hidden, they would fail the request unseen), and one note per value reset."""
    fitted, notes = list(values), []
    for i, field in enumerate(FORM):
        if not shown[field.name] and values[i] not in (field.default, None, "", []):
            fitted[i] = field.default
            value = values[i] if isinstance(values[i], (bool, int, float, str)) else "(given)"
            notes.append(f"{field.name.replace('_', ' ')} {value} -> {field.default}")
    return fitted, notes


def takes_form(fields: tuple[Field, ...], fn: Callable[..., R]) -> Callable[..., R]:
    """A gradio handler taking ``fields`` by name, with their defaults (the API's parameters), then gradio's
    progress tracker and request, that calls ``fn(values, progress)`` with the fields as one dict (and
    ``session=`` the browser session, when ``fn`` takes it); user errors become messages in the page."""
    names = [f.name for f in fields]
    wants_session = "session" in inspect.signature(fn).parameters

    @shows_errors
    def handler(*args: Any, **kwargs: Any) -> R:
        bound = handler.__signature__.bind(*args, **kwargs)  # type: ignore[attr-defined]
        bound.apply_defaults()
        values = dict(bound.arguments)
        progress, request = values.pop("progress"), values.pop("request")
        form = {name: values[name] for name in names}
        if wants_session:
            return fn(form, progress, session=getattr(request, "session_hash", None))
        return fn(form, progress)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__annotations__ = {"request": gr.Request}  # gradio finds its special arguments by type hint
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f.name, kind, **({} if f.required else {"default": f.default})) for f in fields]
        + [inspect.Parameter("progress", kind, default=gr.Progress()),
           inspect.Parameter("request", kind, default=None, annotation=gr.Request)]
    )
    return handler


def note_lost(lost: list[str]) -> str:
    """A restore's note on what did not come back (by file name only)."""
    return "not restored (upload again, or pick from the models folders): " + ", ".join(Path(p).name for p in lost)
