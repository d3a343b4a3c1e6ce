"""The web UI: a gradio page that turns its form into a ``Request`` and runs it on one loaded ``StylePipeline``.

The pipeline loads once (at start, or on first use when given a factory) and stays loaded; events
that use it share one queue slot, so requests run one at a time per device. Every image is written
with ``write_png`` (the request rides in the PNG), so a downloaded image dropped back into the page
restores its settings. Bad input (a non-image upload, an out-of-range number) becomes a message in
the page; the app keeps serving.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from PIL import Image

from ..core.blocks import expand_preset_ref, is_preset_ref, list_blocks, resolve_blocks, split_preset_ref
from ..core.embeddings import load_style
from ..core.pipeline import Result, StylePipeline
from ..core.preflight import check_request, check_runtime
from ..core.request import (
    CONTROL_KINDS,
    DEFAULT_GUIDANCE,
    MAX_SIZE,
    LoraRef,
    Request,
    StyleRef,
    read_png_request,
    write_png,
)
from ..core.schedulers import SCHEDULERS
from ..core.styles import style_settings
from ..errors import UserError
from ..families import Family, all_families
from ..files.images import MAX_PIXELS, image_size, load_image
from ..files.textfiles import read_small_text
from ..modes.hidiffusion_settings import FEATURE as HIDIFFUSION
from ..scores.scorer import Scores
from .sweep import Axes, default_rows, parse_blocks_list, parse_number_list, render_sweep

#: Largest upload gradio accepts (the most pixels an image may have is the app's pixel cap, ``ui --max-pixels``).
MAX_FILE_SIZE = "25mb"
#: gradio's own copies of uploads are deleted an hour after they arrive (checked every 10 minutes) and all of them
#: when the server stops; the app keeps what it uses under ``WORKDIR/inputs``.
DELETE_CACHE = (600, 3600)
#: The mask painter takes one layer of strokes; more than this many from a client is refused before decoding.
MAX_MASK_LAYERS = 4
#: The largest ``--auth-file`` read (a file of logins is a few lines).
MAX_AUTH_FILE = 1024 * 1024
#: ControlNets the page may name without a models folder: each family's default for a control kind.
DEFAULT_CONTROLNETS = frozenset(ref for family in all_families() for ref in family.default_controlnets.values())
CUSTOM = "custom"
MODEL_BLOCKS = "model's default"  # the request names no blocks: the family's default (style; all on SD3/FLUX)
NO_CONTROL = "none"
READY_CONTROL = "ready control image"  # the control upload is the control image itself (needs a ControlNet)
DEFAULT_SCHEDULER = "model's own"
QUEUE = "pipeline"  # every event that runs the pipeline shares this concurrency slot
#: Block presets offered in the page (every family has the same preset names).
PRESET_NAMES = tuple(dict.fromkeys(name for family in all_families() for name in family.presets))
R = TypeVar("R")

PipeSource = StylePipeline | Callable[[], StylePipeline]


class PipelineHolder:
    """The one pipeline of the app: given, or made by a factory on first use and then kept."""

    def __init__(self, source: PipeSource) -> None:
        self._pipe = source if isinstance(source, StylePipeline) else None
        self._factory = None if isinstance(source, StylePipeline) else source
        self._lock = threading.Lock()

    def get(self) -> StylePipeline:
        with self._lock:
            if self._pipe is None:
                assert self._factory is not None
                self._pipe = self._factory()
            return self._pipe


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


def _file_path(item: Any) -> str:
    """A path from what gradio hands a File input (a path string, or an object with ``.name``/``.path``)."""
    return str(getattr(item, "path", None) or getattr(item, "name", None) or item)


class Workdir:
    """The server's files as the page sees them: where the app keeps what it makes (``inputs/``: uploads, by
    content hash; ``outputs/``), the operator's models folders it may read LoRAs, ControlNets and presets files
    from (``ui --models-dir``; none by default), and the pixel cap on every image a visitor sends."""

    def __init__(self, root: str | Path, models_dirs: Sequence[str | Path] = (), max_pixels: int = MAX_PIXELS) -> None:
        self.root = Path(root).expanduser().resolve()
        self.inputs = self.root / "inputs"
        self.outputs = self.root / "outputs"
        self.models_dirs = tuple(Path(os.path.abspath(Path(d).expanduser())) for d in models_dirs)
        self.max_pixels = max_pixels
        for folder in (self.inputs, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)

    def keep_upload(self, path: str | Path, what: str) -> str:
        """Check an uploaded reference (an image within the pixel cap, read from its header before decoding, or a
        style file) and keep a copy."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".safetensors":
                load_style(path)
            else:
                load_image(path, what, self.max_pixels)
        except UserError as err:  # name the file as the user knows it, not by gradio's temp path
            raise UserError(str(err).replace(str(path), path.name)) from None
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
        kept = self.inputs / f"{digest}{path.suffix.lower()}"
        if not kept.exists():
            shutil.copyfile(path, kept)
        return str(kept)

    def keep_painted_mask(self, editor: Any) -> str | None:
        """The mask painted in the editor (any stroke = repaint, white), kept as a PNG; ``None`` if unpainted."""
        layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
        painted = [layer[..., 3] > 0 for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
        if not painted or not any(p.any() for p in painted):
            return None
        mask = Image.fromarray(np.logical_or.reduce(painted).astype(np.uint8) * 255, "L")
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        kept = self.inputs / f"{hashlib.sha256(buffer.getvalue()).hexdigest()[:20]}.png"
        kept.write_bytes(buffer.getvalue())
        return str(kept)

    def model_path(self, what: str, ref: str, defaults: frozenset[str] = frozenset()) -> str:
        """A LoRA file, ControlNet folder or presets file named in the page: ``ref`` inside one of the models folders
        (a path in one, or relative to one), as an absolute path; one of ``defaults`` as it is. Anything else
        (missing, outside the folders, a hub id, ``..``) gets the same message, so the page tells a visitor nothing
        about the server's other files."""
        if ref in defaults:
            return ref
        if ".." not in Path(ref).parts:
            for folder in self.models_dirs:
                real, inside = Path(os.path.realpath(folder / ref)), Path(os.path.realpath(folder))
                if (real == inside or inside in real.parents) and real.exists():  # a link out of it is outside
                    return str(real)
        where = "the models folders this page may read" if self.models_dirs else "any models folder (none is allowed)"
        raise UserError(f"{what} {ref}: not found in {where}; the server's operator allows folders with "
                        "`instantstyle ui --models-dir DIR`")

    def blocks_spec(self, spec: str, pipe: StylePipeline | None = None) -> str:
        """A blocks spec from the page, with ``@FILE:NAME`` expanded to the blocks it names: FILE is read only from
        the models folders, as LoRAs are (``model_path``), and errors name it as the visitor gave it; with ``pipe``,
        its blocks are checked against the model's there, so no later message quotes what the file holds."""
        if not is_preset_ref(spec):
            return spec
        file, name = split_preset_ref(spec)
        path = self.model_path("presets file", file)
        try:
            if pipe is None:
                return expand_preset_ref(f"@{path}:{name}")
            return expand_preset_ref(f"@{path}:{name}", layers=pipe.layers, family=pipe.family)
        except UserError as err:
            raise UserError(str(err).replace(path, file)) from None

    def owns(self, path: str) -> bool:
        """Whether a path from a restored request is one of this app's kept uploads (never serve others)."""
        resolved = Path(path).expanduser().resolve()
        return resolved.parent == self.inputs and resolved.is_file()

    def new_output(self, stem: str, suffix: str = ".png") -> Path:
        """A fresh output path (time-stamped; never one that exists, so nothing made is overwritten)."""
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
        path, n = self.outputs / f"{name}{suffix}", 1
        while path.exists() or any(path.parent.glob(f"{path.stem}-*")):
            n += 1
            path = self.outputs / f"{name}-{n}{suffix}"
        return path


def cap_mask_painter(editor: gr.ImageEditor, max_pixels: int | None = MAX_PIXELS) -> gr.ImageEditor:
    """gradio decodes an image editor's background, every layer and the composite before a handler runs: make this
    editor refuse, before that, an image over ``editor.max_pixels`` (read from its header; settable later, as
    ``build_app`` does) and more than ``MAX_MASK_LAYERS`` layers. (Patched on the instance: a subclass of a gradio
    component makes gradio write a ``.pyi`` file beside this module.)"""
    preprocess, convert = editor.preprocess, editor.convert_and_format_image
    editor.max_pixels = max_pixels  # type: ignore[attr-defined]

    def checked_preprocess(payload: Any) -> Any:
        if payload is not None:
            sent = editor.blob_storage.get(payload.id) if payload.id is not None else payload
            if sent is not None and len(sent.layers or []) > MAX_MASK_LAYERS:
                raise gr.Error(f"mask painter: {len(sent.layers)} layers sent; the most is {MAX_MASK_LAYERS}",
                               duration=None, print_exception=False)
        return preprocess(payload)

    def checked_convert(file: Any, flatten_on_white: bool = False) -> Any:
        if file is not None:
            source = file.path if isinstance(file, FileData) else io.BytesIO(file)
            name = Path(file.orig_name or file.path).name if isinstance(file, FileData) else "(painted)"
            try:
                image_size(source, "mask painter image", editor.max_pixels, name=name)  # type: ignore[attr-defined]
            except UserError as err:
                raise gr.Error(str(err), duration=None, print_exception=False) from None
        return convert(file, flatten_on_white)

    setattr(editor, "preprocess", checked_preprocess)  # noqa: B010  (mypy: no assigning to a method)
    setattr(editor, "convert_and_format_image", checked_convert)  # noqa: B010
    return editor


def block_rows(pipe: StylePipeline, preset: str) -> list[list[Any]]:
    """The per-block editor's rows for a preset: every attention block with scale 1 if the preset uses it."""
    preset = pipe.family.default_blocks if preset == MODEL_BLOCKS else preset
    return [[row.name, 1.0 if preset in row.presets else 0.0] for row in list_blocks(pipe.layers, pipe.arch)]


def rows_from_spec(pipe: StylePipeline, spec: str | None) -> list[list[Any]]:
    """The editor's rows for any blocks spec (each block at the scale of its layers; ``None``: the family's
    default)."""
    scales = resolve_blocks(spec, pipe.layers, pipe.arch)
    per_block = {pipe.family.attention_block(layer): scale for layer, scale in scales.items()}
    return [[row.name, per_block.get(row.name, 0.0)] for row in list_blocks(pipe.layers, pipe.arch)]


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


# --- the form: every field declared once ------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One form field: its component (built around its default, which is also the API default) and, for a
    field that is one ``Request`` field of the same name, how its value goes into the request and comes back.
    The composite fields (style and weights, blocks and table, seed and randomize, uploads, control) are
    translated by ``form_request`` / ``form_values``."""

    name: str
    default: Any
    component: Callable[[Any], Any]
    to_request: Callable[[Any], Any] | None = None
    from_request: Callable[[Any], Any] | None = None
    required: bool = False  # no API default (the style and the prompt)

    @property
    def limits(self) -> tuple[float, float | None] | None:
        """(lowest, highest or ``None``) the field's component accepts; ``None`` for fields without a range."""
        return getattr(self.component, "limits", None)


def _text(label: str, elem_id: str | None = None, lines: int = 1) -> Callable[[Any], Any]:
    return lambda value: gr.Textbox(value, label=label, elem_id=elem_id, lines=lines)


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
        return gr.Slider(self.low, self.high, value=value, step=self.step, label=self.label, elem_id=self.elem_id)


@dataclass(frozen=True)
class _Number:
    """A whole-number field's component (at least 0), with ``limits`` like a slider's."""

    label: str
    elem_id: str
    limits: tuple[float, float | None] = (0, None)

    def __call__(self, value: Any) -> Any:
        return gr.Number(value=value, precision=0, minimum=self.limits[0], maximum=self.limits[1], label=self.label,
                         elem_id=self.elem_id)




def _upload(label: str, elem_id: str) -> Callable[[Any], Any]:
    return lambda value: gr.File(value, label=label, file_types=["image"], elem_id=elem_id)


def _checkbox(value: Any) -> Any:
    """A checkbox's value as sent (``None``: unticked); anything but true/false is left for ``Request`` to refuse,
    never read as its truthiness (an API client's ``"false"``)."""
    return False if value is None else value


def _or_none(value: Any) -> str | None:
    return (value or "").strip() or None


def _scale_or_default(value: float | None) -> float:
    """A request's control scale for the form: ``None`` (the mode's default) is 1.0 outside restyling."""
    return 1.0 if value is None else float(value)


def _or_empty(value: Any) -> str:
    return value or ""


def _or_default(default: float) -> Callable[[Any], float]:
    """A number restored from a request, ``None`` (the pipeline decides, see ``Request``) as its usual value."""
    return lambda value: default if value is None else float(value)


def _optional_whole(name: str) -> Callable[[Any], int | None]:
    return lambda value: _whole(name, value) or None


def _scheduler(value: Any) -> str | None:
    name = (value or "").strip()
    return None if name in ("", DEFAULT_SCHEDULER) else name


def _loras(value: Any) -> tuple[LoraRef, ...]:
    return tuple(LoraRef.parse(item.strip()) for item in (value or "").split(",") if item.strip())


FORM: tuple[Field, ...] = (
    Field("style", None, lambda value: gr.File(value, label="Style image(s) or style file (.safetensors)",
                                               file_count="multiple", file_types=["image", ".safetensors"],
                                               elem_id="style"), required=True),
    Field("prompt", "", _text("Prompt", "prompt", lines=2), _or_empty, _or_empty, required=True),
    Field("style_weights", "", _text("Style weights (comma separated, blank: equal)", "weights")),
    Field("negative_prompt", "", _text("Negative prompt", "negative"), _or_empty, _or_empty),
    Field("blocks", MODEL_BLOCKS, lambda value: gr.Dropdown([MODEL_BLOCKS, *PRESET_NAMES, CUSTOM], value=value,
                                                            label="Blocks (a preset, or type a spec or @FILE:NAME)",
                                                            allow_custom_value=True, elem_id="blocks")),
    Field("block_table", None, lambda value: gr.Dataframe(value, headers=["block", "scale"],
                                                          datatype=["str", "number"], static_columns=[0],
                                                          label="Per-block scales", elem_id="block-table")),
    Field("scale", 1.0, _Slider(0, 2, 0.05, "Scale", "scale"), float, float),
    Field("content_prompt", "", _text("Content prompt (what the style image shows)", "content-prompt"), _or_none,
          _or_empty),
    Field("content_scale", 0.5, _Slider(0, 2, 0.05, "Content scale"), float, float),
    Field("content_image", None, _upload("…or a content image", "content-image")),
    Field("seed", 0, _Number("Seed", "seed", (0, 2**53))),  # a float in the page: whole numbers up to 2**53
    Field("randomize_seed", True, lambda value: gr.Checkbox(value=value, label="Randomize seed", elem_id="randomize")),
    Field("steps", 30, _Slider(1, 100, 1, "Steps", "steps"), lambda v: _whole("steps", v), int),
    Field("guidance", 5.0, _Slider(0, 20, 0.5, "Guidance"), float, _or_default(DEFAULT_GUIDANCE)),
    Field("true_cfg", 1.0, _Slider(1, 10, 0.5, "True CFG (above 1: real CFG with the negative prompt)", "true-cfg"),
          float, float),
    Field("width", 0, _Number("Width (0 = model's)", "width", (0, MAX_SIZE)), _optional_whole("width"),
          lambda v: v or 0),
    Field("height", 0, _Number("Height (0 = model's)", "height", (0, MAX_SIZE)), _optional_whole("height"),
          lambda v: v or 0),
    Field("num_images", 1, _Slider(1, 8, 1, "Images"), lambda v: _whole("number of images", v), int),
    Field("init_image", None, _upload("Init image (restyle it: img2img)", "init-image")),
    Field("strength", 0, _Slider(0, 1, 0.05, "Strength (how much to change; 0 = default: 0.8, inpainting 1)",
                                 "strength"), lambda v: float(v or 0) or None, lambda v: v or 0),
    Field("mask", None, _upload("Mask for inpainting (white = repaint; needs the init image)", "mask")),
    Field("control", NO_CONTROL, lambda value: gr.Dropdown([NO_CONTROL, *CONTROL_KINDS, READY_CONTROL], value=value,
                                                           label="ControlNet control", elem_id="control")),
    Field("control_image", None, _upload("Control image (canny/depth source; default: the init image)",
                                         "control-image")),
    Field("control_scale", 1.0, _Slider(0, 2, 0.05, "Control scale", "control-scale"), float, _scale_or_default),
    Field("controlnet", "", _text("ControlNet model (blank: the default for the control kind)", "controlnet"),
          _or_none, _or_empty),
    Field("scheduler", DEFAULT_SCHEDULER, lambda value: gr.Dropdown([DEFAULT_SCHEDULER, *SCHEDULERS], value=value,
                                                                    label="Scheduler", elem_id="scheduler"),
          _scheduler, lambda v: v or DEFAULT_SCHEDULER),
    Field("lora", "", _text("LoRA file(s) (PATH[:SCALE], comma separated)", "lora"), _loras,
          lambda refs: ", ".join(f"{r.path}:{r.scale:g}" if r.scale != 1 else r.path for r in refs)),
    Field("mask_paint", None, lambda value: cap_mask_painter(gr.ImageEditor(
        value, label="…or paint the area to repaint on the init image", type="numpy", image_mode="RGBA",
        sources=("upload",), brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False,
        elem_id="mask-paint"))),
    Field("hidiffusion", False, lambda value: gr.Checkbox(value=value, label="HiDiffusion: for sizes above the "
                                                          "model's own (SDXL: 2048 px and up)", elem_id="hidiffusion"),
          _checkbox, bool),
)
#: The form's field names, in the order every handler (and the API) takes them.
FIELDS = tuple(f.name for f in FORM)
#: Where each field goes: (accordion label, or None for the column itself; items), an item being a field or a row.
LAYOUT: tuple[tuple[str | None, tuple[str | tuple[str, ...], ...]], ...] = (
    (None, ("style", "style_weights", "prompt", "negative_prompt", "blocks", "scale")),
    ("Advanced: per-block scales (choose blocks = custom)", ("block_table",)),
    ("Content subtraction", ("content_prompt", "content_scale", "content_image")),
    ("Image modes: img2img, inpainting, ControlNet",
     ("init_image", "strength", "mask", "mask_paint", ("control", "control_scale"), "control_image", "controlnet")),
    ("Advanced: scheduler and LoRA", ("scheduler", "lora")),
    (None, (("seed", "randomize_seed"), ("steps", "guidance", "true_cfg"), ("width", "height", "num_images"),
            "hidiffusion")),
)
#: The sweep tab's own fields, taken after the form's by the sweep handler.
SWEEP_FORM: tuple[Field, ...] = (
    Field("sweep_blocks", "", _text("Blocks to compare (rows; blank: the model's presets among style, "
                                    "style+layout, all)", "sweep-blocks")),
    Field("sweep_scales", "0.4, 0.7, 1.0", _text("Scales to compare (columns)", "sweep-scales")),
    Field("sweep_content_scales", "", _text("Content scales to compare (optional, rows)")),
)


def form_request(workdir: Workdir, values: dict[str, Any], pipe: StylePipeline | None = None) -> Request:
    """The ``Request`` a filled-in form stands for (uploads checked and kept in the workdir; a presets reference
    checked against ``pipe``'s blocks, see ``Workdir.blocks_spec``)."""
    files = [_file_path(f) for f in values.get("style") or []]
    if not files:
        raise UserError("upload a style image (or a style file) first")
    weights_text = (values.get("style_weights") or "").strip()
    weights = parse_number_list("style weight", weights_text) if weights_text else (1.0,) * len(files)
    if len(weights) != len(files):
        raise UserError(f"{len(weights)} style weights for {len(files)} style files")
    style = tuple(StyleRef(workdir.keep_upload(f, "style image"), w) for f, w in zip(files, weights, strict=True))
    blocks = values.get("blocks", MODEL_BLOCKS)
    if blocks == CUSTOM:
        blocks = spec_from_rows(values.get("block_table"))
    elif blocks == MODEL_BLOCKS:
        blocks = None
    else:
        blocks = workdir.blocks_spec(blocks, pipe)

    def kept(name: str, what: str) -> str | None:
        item = values.get(name)
        return workdir.keep_upload(_file_path(item), what) if item else None

    content_image = kept("content_image", "content image")
    control, control_image = _control_from_form(values.get("control") or NO_CONTROL,
                                                kept("control_image", "control image"))
    plain = {f.name: f.to_request(values.get(f.name, f.default)) for f in FORM if f.to_request is not None}
    plain["lora"] = tuple(LoraRef(workdir.model_path("LoRA", ref.path), ref.scale) for ref in plain["lora"])
    if plain["controlnet"] is not None:
        plain["controlnet"] = workdir.model_path("controlnet", plain["controlnet"], DEFAULT_CONTROLNETS)
    randomize = values.get("randomize_seed", True)
    return Request(
        **plain,
        style=style,
        blocks=blocks,
        content_image=content_image,
        seed=None if randomize else _whole("seed", values.get("seed", 0)),
        init_image=kept("init_image", "init image"),
        mask=kept("mask", "mask") or workdir.keep_painted_mask(values.get("mask_paint")),
        control=control,
        control_image=control_image,
    )


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


def form_values(pipe: StylePipeline, workdir: Workdir, request: Request) -> tuple[list[Any], list[str]]:
    """The form field values for a request, in ``FIELDS`` order, and the paths that could not be restored
    (only this app's kept uploads are: the page never serves other paths)."""
    lost: list[str] = []

    def own(path: str | None) -> str | None:
        if path and not workdir.owns(path):
            lost.append(path)
            return None
        return path

    kept = [ref for ref in request.style if own(ref.path)]
    preset = (MODEL_BLOCKS if request.blocks is None
              else request.blocks if request.blocks in pipe.family.presets else CUSTOM)
    ready = request.control is not None and request.control not in CONTROL_KINDS
    values = {f.name: f.from_request(getattr(request, f.name)) for f in FORM if f.from_request is not None}
    values.update(
        style=[ref.path for ref in kept] or None,
        style_weights=", ".join(f"{ref.weight:g}" for ref in kept) if any(r.weight != 1 for r in kept) else "",
        blocks=preset,
        block_table=rows_from_spec(pipe, workdir.blocks_spec(request.blocks or "", pipe)) if preset == CUSTOM
        else block_rows(pipe, preset),
        content_image=own(request.content_image),
        seed=request.seed or 0,
        randomize_seed=request.seed is None,
        init_image=own(request.init_image),
        mask=own(request.mask),
        control=READY_CONTROL if ready else (request.control or NO_CONTROL),
        control_image=own(request.control if ready else request.control_image),
        mask_paint=None,  # a restored mask comes back as the mask upload
    )
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


def family_fields(family: Family) -> dict[str, bool]:
    """The form's fields only some model families take, and whether ``family`` takes each (the page shows them only
    then): true CFG (FLUX.1-dev), HiDiffusion (the families with its settings)."""
    return {"true_cfg": family.takes_true_cfg, "hidiffusion": HIDIFFUSION in family.features}


def fit_to_family(values: list[Any], family: Family) -> tuple[list[Any], list[str]]:
    """Form values (in ``FIELDS`` order) with the fields ``family`` does not take back at their defaults (hidden in
    its page, they would fail the request unseen), and one note per value reset."""
    fitted, notes = list(values), []
    for name, taken in family_fields(family).items():
        i = FIELDS.index(name)
        if not taken and values[i] != FORM[i].default:
            fitted[i] = FORM[i].default
            notes.append(f"{name.replace('_', ' ')} {values[i]} -> {FORM[i].default}")
    return fitted, notes


def takes_form(fields: tuple[Field, ...], fn: Callable[[dict[str, Any], Any], R]) -> Callable[..., R]:
    """A gradio handler taking ``fields`` by name, with their defaults (the API's parameters), then gradio's
    progress tracker, that calls ``fn(values, progress)`` with the fields as one dict; user errors become
    messages in the page (``shows_errors``)."""
    names = [f.name for f in fields]

    @shows_errors
    def handler(*args: Any, **kwargs: Any) -> R:
        bound = handler.__signature__.bind(*args, **kwargs)  # type: ignore[attr-defined]
        bound.apply_defaults()
        values = dict(bound.arguments)
        progress = values.pop("progress")
        return fn({name: values[name] for name in names}, progress)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f.name, kind, **({} if f.required else {"default": f.default})) for f in fields]
        + [inspect.Parameter("progress", kind, default=gr.Progress(track_tqdm=True))]
    )
    return handler


THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline


@dataclass
class App:
    """What the page's events do, on the app's one pipeline and its workdir; every image is scored (CSD too when
    the app was given a checkpoint) and its scores shown under it."""

    holder: PipelineHolder
    work: Workdir
    csd: str | None = None

    def scores(self, result: Result) -> list[Scores] | None:
        """The result's scores, or ``None`` (with a warning in the page) when they cannot be computed."""
        try:
            return self.holder.get().score(result, csd=self.csd)
        except UserError as err:
            gr.Warning(f"not scored: {err}")
            return None

    def generate(self, values: dict[str, Any], progress: Any) -> tuple[list[tuple[str, str]], list[str], str]:
        """Make images from the form: the gallery (scores under each image), the PNG files (with their settings and
        scores) and the request JSON."""
        pipe = self.holder.get()
        request = form_request(self.work, values, pipe)
        check_request(request, self.work.max_pixels)
        check_runtime(request, pipe.runtime)
        progress(0, desc="generating")
        result = pipe(request, progress=True)
        scores = self.scores(result)
        paths, captions = [], []
        for i, image in enumerate(result.images):
            path = self.work.new_output(f"seed{result.request.seed}-{i + 1}")
            paths.append(str(write_png(image, path, result.request, i, scores[i].png_text() if scores else None)))
            items = scores[i].caption_items() if scores else []
            captions.append(" · ".join([f"seed {result.request.seed} #{i + 1}", *items]))
        return list(zip(paths, captions, strict=True)), paths, json.dumps(result.request.to_dict(), indent=2)

    def sweep(self, values: dict[str, Any], progress: Any) -> tuple[str, list[tuple[str, str]], list[str]]:
        """Render a labelled sheet over blocks x scale (x content scale) with the form's other settings."""
        contents = (values["sweep_content_scales"] or "").strip()
        pipe = self.holder.get()
        rows = (values["sweep_blocks"] or "").strip() or default_rows(list(pipe.family.presets))
        axes = Axes(tuple(self.work.blocks_spec(spec, pipe) for spec in parse_blocks_list(rows)),
                    parse_number_list("scale", values["sweep_scales"] or ""),
                    parse_number_list("content scale", contents) if contents else ())
        base = form_request(self.work, values, pipe).replace(num_images=1)
        if axes.content_scales and base.content_prompt is None and base.content_image is None:
            raise UserError("content scales need a content prompt or a content image")
        check_request(base, self.work.max_pixels)
        check_runtime(base, pipe.runtime)
        for row_blocks, *_ in axes.rows:
            resolve_blocks(row_blocks, pipe.layers, pipe.family)
        total, done = len(axes.rows) * len(axes.scales), []

        def tick(path: Path) -> None:
            done.append(str(path))
            progress((len(done), total), desc="sweep cells", unit="cells")

        out = render_sweep(pipe, base, axes, self.work.new_output("sweep"), on_cell=tick,
                           scorer=pipe.scorer(base.content_text_encoder, self.csd))
        cells = [(path, " · ".join([cell.label, *cell.scores.caption_items()]))
                 for path, cell in zip(done, out.cells, strict=True)]
        return str(out.sheet), cells, [str(out.sheet), str(out.plot), str(out.table), *done]

    def save_style(self, values: dict[str, Any], progress: Any) -> str:
        """Save the current style (blended embedding + settings) as a ``.safetensors`` style file."""
        request = form_request(self.work, values, self.holder.get())
        path = self.work.new_output("style", ".safetensors")
        self.holder.get().save_style(request, path, extra=style_settings(request))
        return str(path)

    def restore(self, png: str | None) -> list[Any]:
        """Read the settings carried by a PNG made by instantstyle back into the form."""
        if not png:
            return [gr.skip()] * len(FIELDS)
        path = _file_path(png)
        try:
            request = read_png_request(path)
        except UserError as err:
            raise UserError(str(err).replace(path, Path(path).name)) from None
        pipe = self.holder.get()
        values, lost = form_values(pipe, self.work, request)
        values, clamped = clamp_to_form(values)
        values, reset = fit_to_family(values, pipe.family)
        notes = []
        if lost:
            notes.append("upload the reference image(s) again: " + ", ".join(Path(p).name for p in lost))
        if clamped:
            notes.append("held to the form's limits: " + ", ".join(clamped))
        if reset:
            notes.append(f"{pipe.family.name} models do not take: " + ", ".join(reset))
        if request.model is not None and request.model != pipe.model_id:
            notes.append(f"it was made with model {request.model}; this page runs {pipe.model_id}")
        (gr.Warning if notes else gr.Info)("settings restored" + "".join(f"; {n}" for n in notes))
        return values

    def style_uploaded(self, files: list[str] | None) -> list[Any]:
        """A style file brings its settings along: restore them (the style file stays the style)."""
        paths = [_file_path(f) for f in files or []]
        if len(paths) != 1 or not paths[0].endswith(".safetensors"):
            return [gr.skip()] * (len(FIELDS) - 1)
        kept = self.work.keep_upload(paths[0], "style file")
        settings = load_style(kept).metadata.get("request")
        if settings is None:
            return [gr.skip()] * (len(FIELDS) - 1)
        try:
            request = Request.from_json(settings)
        except UserError as err:
            raise UserError(f"style file {Path(paths[0]).name}: {err}") from None
        pipe = self.holder.get()
        values, _ = form_values(pipe, self.work, request.replace(style=(kept,)))
        values, clamped = clamp_to_form(values)
        values, reset = fit_to_family(values, pipe.family)
        notes = [f"held to the form's limits: {', '.join(clamped)}"] * bool(clamped)
        notes += [f"{pipe.family.name} models do not take: {', '.join(reset)}"] * bool(reset)
        (gr.Warning if notes else gr.Info)("style file loaded with its settings" + "".join(f"; {n}" for n in notes))
        return values[1:]  # everything but the style input itself

    def paint_over(self, init_image: Any) -> dict[str, Any] | None:
        """The mask painter's value for a new init image: the image as background, no strokes yet (an image over
        the pixel cap is refused here, from its header, before the page shows it)."""
        path = _file_path(init_image) if init_image else None
        if path is None:
            return None
        image_size(path, "init image", self.work.max_pixels, name=Path(path).name)
        return {"background": path, "layers": [], "composite": path}

    def load_blocks(self, spec: str) -> Any:
        """The per-block table for the blocks field: the model's default, a preset, a typed spec or ``@FILE:NAME``."""
        if not spec or spec == CUSTOM:
            return gr.skip()
        pipe = self.holder.get()
        return rows_from_spec(pipe, None if spec == MODEL_BLOCKS else self.work.blocks_spec(spec, pipe))

    def describe_pipeline(self) -> tuple[str, Any, Any]:
        """The line naming the loaded model, and the form's family-specific fields shown only where the model's
        family takes them (true CFG: FLUX; HiDiffusion: the families with its settings)."""
        pipe = self.holder.get()
        line = f"Model `{pipe.model_id}` ({pipe.arch}) with adapter `{Path(pipe.adapter.path).name}` on {pipe.device}"
        shown = family_fields(pipe.family)
        return line, gr.update(visible=shown["true_cfg"]), gr.update(visible=shown["hidiffusion"])


def _build(fields: tuple[Field, ...], items: tuple[str | tuple[str, ...], ...], made: dict[str, Any]) -> None:
    """Build the components of ``items`` (a field, or a row of fields) in place, noting them in ``made``."""
    by_name = {f.name: f for f in fields}
    for item in items:
        if isinstance(item, tuple):
            with gr.Row():
                _build(fields, item, made)
        else:
            made[item] = by_name[item].component(by_name[item].default)


def _form_column() -> dict[str, Any]:
    """The form, laid out by ``LAYOUT``: field name -> component."""
    made: dict[str, Any] = {}
    for label, items in LAYOUT:
        if label is None:
            _build(FORM, items, made)
        else:
            with gr.Accordion(label, open=False):
                _build(FORM, items, made)
    return made


def build_app(
    source: PipeSource, workdir: str | Path, csd: str | None = None, *, models_dirs: Sequence[str | Path] = (),
    max_pixels: int = MAX_PIXELS,
) -> gr.Blocks:
    """The gradio app over one pipeline (or a factory called on first use); outputs go under ``workdir``; ``csd``:
    a CSD checkpoint for the csd_style score. LoRAs and ControlNets named in the page are read only from
    ``models_dirs``; every image sent is held to ``max_pixels``."""
    app = App(PipelineHolder(source), Workdir(workdir, models_dirs, max_pixels), csd)
    with gr.Blocks(title="InstantStyle", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# InstantStyle\nImages in the style of a reference image, without its content: "
                    "from text, or from an image (img2img, inpainting, ControlNet).")
        loaded = gr.Markdown("Loading the model…", elem_id="loaded")
        with gr.Row():
            with gr.Column(scale=1):
                field = _form_column()
                field["mask_paint"].max_pixels = max_pixels
            with gr.Column(scale=1):
                out = _result_tabs()
        form = [field[name] for name in FIELDS]
        queue = {"concurrency_limit": 1, "concurrency_id": QUEUE}  # events that use the pipeline take turns
        quiet = {"api_visibility": "undocumented"}
        out["generate"].click(takes_form(FORM, app.generate), form, [out["gallery"], out["downloads"], out["json"]],
                              api_name="generate", **queue)
        out["run-sweep"].click(takes_form(FORM + SWEEP_FORM, app.sweep), form + [out[f.name] for f in SWEEP_FORM],
                               [out["sheet"], out["cells"], out["sweep-files"]], api_name="sweep", **queue)
        out["save-style"].click(takes_form(FORM, app.save_style), form, out["style-file"], api_name="save_style",
                                **queue)
        out["restore"].upload(shows_errors(app.restore), out["restore"], form, api_name="restore")
        field["style"].upload(shows_errors(app.style_uploaded), field["style"], form[1:], **quiet)
        field["blocks"].change(shows_errors(app.load_blocks), field["blocks"], field["block_table"], **quiet)
        field["init_image"].change(shows_errors(app.paint_over), field["init_image"], field["mask_paint"], **quiet)
        field["block_table"].input(lambda: CUSTOM, None, field["blocks"], **quiet)  # an edited table: custom
        demo.load(shows_errors(app.load_blocks), field["blocks"], field["block_table"], **quiet)
        demo.load(app.describe_pipeline, None, [loaded, field["true_cfg"], field["hidiffusion"]], **quiet)
    return demo


def _result_tabs() -> dict[str, Any]:
    """The right-hand tabs (results, sweep, restore and style files): name -> component."""
    out: dict[str, Any] = {}
    with gr.Tab("Generate"):
        out["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
        out["gallery"] = gr.Gallery(label="Results", columns=2, elem_id="gallery", format="png")
        out["downloads"] = gr.File(label="Download PNGs (settings inside)", file_count="multiple", interactive=False,
                                   elem_id="downloads")
        out["json"] = gr.Code(label="Request", language="json", interactive=False)
    with gr.Tab("Sweep"):
        _build(SWEEP_FORM, tuple(f.name for f in SWEEP_FORM), out)
        out["run-sweep"] = gr.Button("Render sweep", variant="primary", elem_id="run-sweep")
        out["sheet"] = gr.Image(label="Sweep sheet", type="filepath", format="png", interactive=False, elem_id="sheet")
        out["cells"] = gr.Gallery(label="Cells", columns=3, format="png")
        out["sweep-files"] = gr.File(label="Download sheet and cells", file_count="multiple", interactive=False)
    with gr.Tab("Restore & style files"):
        out["restore"] = gr.File(label="Drop a PNG made by instantstyle to restore its settings",
                                 file_types=[".png"], elem_id="restore")
        out["save-style"] = gr.Button("Save current style as a style file", elem_id="save-style")
        out["style-file"] = gr.File(label="Style file (upload it as the style to reuse it without the image)",
                                    interactive=False, elem_id="style-file")
    return out


def read_auth(pairs: Sequence[str] = (), files: Sequence[str | Path] = ()) -> list[tuple[str, str]]:
    """Logins for the page from ``USER:PASSWORD`` values and files of such lines (blank lines and ``#`` comments
    skipped); a malformed one is a one-line ``UserError`` that never shows the password."""
    found = [("--auth value", pair) for pair in pairs]
    for name in files:
        text = read_small_text(name, "auth file", MAX_AUTH_FILE, "USER:PASSWORD lines")  # never all of /dev/zero
        lines = [(f"auth file {name} line {n}", line.strip()) for n, line in enumerate(text.split("\n"), 1)]
        lines = [(where, line) for where, line in lines if line and not line.startswith("#")]
        if not lines:
            raise UserError(f"auth file {name}: holds no USER:PASSWORD line")
        found += lines
    logins: dict[str, str] = {}
    for where, pair in found:
        user, _, password = pair.partition(":")
        user = user.strip()
        if not user or not password:
            raise UserError(f"{where}: give USER:PASSWORD, neither empty")
        if user in logins:
            raise UserError(f"{where}: user {user!r} is given twice")
        logins[user] = password
    return list(logins.items())


def launch(
    source: PipeSource,
    workdir: str | Path = "instantstyle-ui",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
    csd: str | None = None,
    *,
    auth: Sequence[tuple[str, str]] = (),
    models_dirs: Sequence[str | Path] = (),
    max_pixels: int = MAX_PIXELS,
) -> gr.Blocks:
    """Serve the app on ``host:port`` (localhost unless told otherwise; no public link unless ``share``; a login
    page when ``auth`` gives (user, password) pairs). gradio prints nothing: the caller says where it serves."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(source, workdir, csd, models_dirs=models_dirs, max_pixels=max_pixels)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(Workdir(workdir).root)], ssr_mode=False, quiet=True, auth=list(auth) or None,
        theme=gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]),
    )
    return demo

