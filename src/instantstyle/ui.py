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
import io
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, UnidentifiedImageError

from .blocks import PRESETS, attention_block, list_blocks, resolve_blocks
from .embeddings import MAX_PIXELS, load_image, load_style
from .errors import UserError
from .pipeline import StylePipeline
from .request import CONTROL_KINDS, LoraRef, Request, read_png_request, write_png
from .schedulers import SCHEDULERS
from .sweep import Axes, parse_blocks_list, parse_number_list, render_sweep

#: Largest upload gradio accepts (the most pixels an image may have is the core's MAX_PIXELS, about 8k x 5k).
MAX_FILE_SIZE = "25mb"
CUSTOM = "custom"
NO_CONTROL = "none"
READY_CONTROL = "ready control image"  # the control upload is the control image itself (needs a ControlNet)
DEFAULT_SCHEDULER = "model's own"
QUEUE = "pipeline"  # every event that runs the pipeline shares this concurrency slot

PipeSource = StylePipeline | Callable[[], StylePipeline]


class PipelineHolder:
    """The one pipeline of the app: given, or made by a factory on first use and then kept."""

    def __init__(self, source: PipeSource) -> None:
        self._source = source
        self._pipe = source if isinstance(source, StylePipeline) else None
        self._lock = threading.Lock()

    def get(self) -> StylePipeline:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._source()  # type: ignore[operator]
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
    """Where the app keeps what it makes: ``inputs/`` (uploads, by content hash) and ``outputs/``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.inputs = self.root / "inputs"
        self.outputs = self.root / "outputs"
        for folder in (self.inputs, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)

    def keep_upload(self, path: str | Path, what: str) -> str:
        """Check an uploaded reference (image within the pixel limit, or a style file) and keep a copy."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".safetensors":
                load_style(path)
            else:
                check_pixels(path, what)
                load_image(path, what)
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


def check_pixels(path: str | Path, what: str) -> None:
    """Refuse images over ``MAX_PIXELS`` before decoding them (reads only the header)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return  # load_image gives the message for unreadable files
    if width * height > MAX_PIXELS:
        raise UserError(f"{what} {Path(path).name}: {width}x{height} is over the limit of {MAX_PIXELS:,} pixels")


def block_rows(pipe: StylePipeline, preset: str) -> list[list[Any]]:
    """The per-block editor's rows for a preset: every attention block with scale 1 if the preset uses it."""
    return [[row.name, 1.0 if preset in row.presets else 0.0] for row in list_blocks(pipe.layers, pipe.arch)]


def rows_from_spec(pipe: StylePipeline, spec: str) -> list[list[Any]]:
    """The editor's rows for any blocks spec (each block at the scale of its layers)."""
    scales = resolve_blocks(spec, pipe.layers, pipe.arch)
    per_block = {attention_block(layer): scale for layer, scale in scales.items()}
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


# The form fields in the order every handler takes them (and the API documents them).
FIELDS = (
    "style", "prompt", "style_weights", "negative_prompt", "blocks", "block_table", "scale",
    "content_prompt", "content_scale", "content_image", "seed", "randomize_seed", "steps", "guidance",
    "width", "height", "num_images",
    "init_image", "strength", "mask", "control", "control_image", "control_scale", "controlnet", "scheduler", "lora",
    "mask_paint",
)


def form_request(workdir: Workdir, values: dict[str, Any]) -> Request:
    """The ``Request`` a filled-in form stands for (uploads checked and kept in the workdir)."""
    files = [_file_path(f) for f in values["style"] or []]
    if not files:
        raise UserError("upload a style image (or a style file) first")
    weights_text = (values["style_weights"] or "").strip()
    weights = parse_number_list("style weight", weights_text) if weights_text else (1.0,) * len(files)
    if len(weights) != len(files):
        raise UserError(f"{len(weights)} style weights for {len(files)} style files")
    style = tuple(f"{workdir.keep_upload(f, 'style image')}:{w:g}" for f, w in zip(files, weights, strict=True))
    blocks = values["blocks"]
    if blocks == CUSTOM:
        blocks = spec_from_rows(values["block_table"])
    content_image = values["content_image"]
    content_prompt = (values["content_prompt"] or "").strip() or None

    def kept(name: str, what: str) -> str | None:
        item = values.get(name)
        return workdir.keep_upload(_file_path(item), what) if item else None

    control_kind = values.get("control") or NO_CONTROL
    control_image = kept("control_image", "control image")
    control: str | None = None
    if control_kind == READY_CONTROL:
        if control_image is None:
            raise UserError("a ready control image needs the control image upload")
        control, control_image = control_image, None
    elif control_kind in CONTROL_KINDS:
        control = control_kind
    elif control_kind != NO_CONTROL:
        raise UserError(f"control must be one of {NO_CONTROL}, {', '.join(CONTROL_KINDS)}, {READY_CONTROL}; "
                        f"got {control_kind!r}")
    elif control_image is not None:
        raise UserError("a control image needs a control kind (canny, depth or ready control image)")
    strength = float(values.get("strength") or 0)
    scheduler = (values.get("scheduler") or "").strip()
    lora_text = (values.get("lora") or "").strip()
    return Request(
        prompt=values["prompt"] or "",
        style=style,
        negative_prompt=values["negative_prompt"] or "",
        blocks=blocks,
        scale=float(values["scale"]),
        content_prompt=content_prompt,
        content_scale=float(values["content_scale"]),
        content_image=workdir.keep_upload(_file_path(content_image), "content image") if content_image else None,
        steps=_whole("steps", values["steps"]),
        guidance=float(values["guidance"]),
        seed=None if values["randomize_seed"] else _whole("seed", values["seed"]),
        width=_whole("width", values["width"]) or None,
        height=_whole("height", values["height"]) or None,
        num_images=_whole("number of images", values["num_images"]),
        init_image=kept("init_image", "init image"),
        strength=strength or None,  # 0: the mode's default
        mask=kept("mask", "mask") or workdir.keep_painted_mask(values.get("mask_paint")),
        control=control,
        control_image=control_image,
        control_scale=float(values.get("control_scale", 1.0)),
        controlnet=(values.get("controlnet") or "").strip() or None,
        scheduler=None if scheduler in ("", DEFAULT_SCHEDULER) else scheduler,
        lora=tuple(LoraRef.parse(item.strip()) for item in lora_text.split(",") if item.strip()),
    )


def form_values(pipe: StylePipeline, workdir: Workdir, request: Request) -> tuple[list[Any], list[str]]:
    """The form field values for a request, in ``FIELDS`` order, and the style paths that could not be restored."""
    kept = [ref for ref in request.style if workdir.owns(ref.path)]
    lost = [ref.path for ref in request.style if not workdir.owns(ref.path)]
    preset = request.blocks if request.blocks in PRESETS.get(pipe.arch, {}) else CUSTOM
    content_image = request.content_image if request.content_image and workdir.owns(request.content_image) else None
    if request.content_image and content_image is None:
        lost.append(request.content_image)

    def own(path: str | None) -> str | None:
        """An upload to restore (or ``None``, noting it lost when it is not one of this app's kept files)."""
        if path and not workdir.owns(path):
            lost.append(path)
            return None
        return path

    ready = request.control is not None and request.control not in CONTROL_KINDS
    control_kind = READY_CONTROL if ready else (request.control or NO_CONTROL)
    values = {
        "style": [ref.path for ref in kept] or None,
        "style_weights": ", ".join(f"{ref.weight:g}" for ref in kept) if any(r.weight != 1 for r in kept) else "",
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "blocks": preset,
        "block_table": rows_from_spec(pipe, request.blocks) if preset == CUSTOM else block_rows(pipe, preset),
        "scale": request.scale,
        "content_prompt": request.content_prompt or "",
        "content_scale": request.content_scale,
        "content_image": content_image,
        "seed": request.seed or 0,
        "randomize_seed": request.seed is None,
        "steps": request.steps,
        "guidance": request.guidance,
        "width": request.width or 0,
        "height": request.height or 0,
        "num_images": request.num_images,
        "init_image": own(request.init_image),
        "strength": request.strength or 0,
        "mask": own(request.mask),
        "control": control_kind,
        "control_image": own(request.control if ready else request.control_image),
        "control_scale": request.control_scale,
        "controlnet": request.controlnet or "",
        "scheduler": request.scheduler or DEFAULT_SCHEDULER,
        "lora": ", ".join(f"{ref.path}:{ref.scale:g}" if ref.scale != 1 else ref.path for ref in request.lora),
        "mask_paint": None,  # a restored mask comes back as the mask upload
    }
    return [values[name] for name in FIELDS], lost


def style_settings(request: Request) -> dict[str, str]:
    """The metadata that makes a style file bring its settings along in the page (the request, minus the style)."""
    return {"request": request.replace(style=("(this style file)",)).to_json()}


THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline


def build_app(source: PipeSource, workdir: str | Path) -> gr.Blocks:
    """The gradio app over one pipeline (or a factory called on first use); outputs go under ``workdir``."""
    holder = PipelineHolder(source)
    work = Workdir(workdir)

    def run_request(values: dict[str, Any], progress: gr.Progress) -> tuple[list[tuple[str, str]], list[str], str]:
        pipe = holder.get()
        request = form_request(work, values)
        progress(0, desc="generating")
        result = pipe(request, progress=True)
        paths = []
        for i, image in enumerate(result.images):
            path = work.new_output(f"seed{result.request.seed}-{i + 1}")
            paths.append(str(write_png(image, path, result.request, i)))
        captions = [f"seed {result.request.seed} #{i + 1}" for i in range(len(paths))]
        return list(zip(paths, captions, strict=True)), paths, json.dumps(result.request.to_dict(), indent=2)

    # The API endpoints take the form's fields by name, with the form's defaults (see docs: "API").
    @shows_errors
    def generate(
        style: list[str] | None, prompt: str, style_weights: str = "", negative_prompt: str = "",
        blocks: str = "style", block_table: Any = None, scale: float = 1.0, content_prompt: str = "",
        content_scale: float = 0.5, content_image: str | None = None, seed: float = 0, randomize_seed: bool = True,
        steps: float = 30, guidance: float = 5.0, width: float = 0, height: float = 0, num_images: float = 1,
        init_image: str | None = None, strength: float = 0, mask: str | None = None, control: str = NO_CONTROL,
        control_image: str | None = None, control_scale: float = 1.0, controlnet: str = "",
        scheduler: str = DEFAULT_SCHEDULER, lora: str = "", mask_paint: Any = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (gradio's idiom)
    ) -> tuple[list[tuple[str, str]], list[str], str]:
        """Make images from the form: returns the gallery, the PNG files (with their settings) and the request JSON."""
        form = locals()
        return run_request({name: form[name] for name in FIELDS}, progress)

    @shows_errors
    def restore(png: str | None) -> list[Any]:
        """Read the settings carried by a PNG made by instantstyle back into the form."""
        if not png:
            return [gr.skip()] * len(FIELDS)
        path = _file_path(png)
        try:
            request = read_png_request(path)
        except UserError as err:
            raise UserError(str(err).replace(path, Path(path).name)) from None
        pipe = holder.get()
        values, lost = form_values(pipe, work, request)
        notes = []
        if lost:
            notes.append("upload the reference image(s) again: " + ", ".join(Path(p).name for p in lost))
        if request.model is not None and request.model != pipe.model_id:
            notes.append(f"it was made with model {request.model}; this page runs {pipe.model_id}")
        if notes:
            gr.Warning("settings restored; " + "; ".join(notes))
        else:
            gr.Info("settings restored")
        return values

    @shows_errors
    def style_uploaded(files: list[str] | None) -> list[Any]:
        """A style file brings its settings along: restore them (the style file stays the style)."""
        paths = [_file_path(f) for f in files or []]
        if len(paths) != 1 or not paths[0].endswith(".safetensors"):
            return [gr.skip()] * (len(FIELDS) - 1)
        kept = work.keep_upload(paths[0], "style file")
        settings = load_style(kept).metadata.get("request")
        if settings is None:
            return [gr.skip()] * (len(FIELDS) - 1)
        request = Request.from_json(settings).replace(style=(kept,))
        values, _ = form_values(holder.get(), work, request)
        gr.Info("style file loaded with its settings")
        return values[1:]  # everything but the style input itself

    @shows_errors
    def save_current_style(
        style: list[str] | None, prompt: str, style_weights: str = "", negative_prompt: str = "",
        blocks: str = "style", block_table: Any = None, scale: float = 1.0, content_prompt: str = "",
        content_scale: float = 0.5, content_image: str | None = None, seed: float = 0, randomize_seed: bool = True,
        steps: float = 30, guidance: float = 5.0, width: float = 0, height: float = 0, num_images: float = 1,
        init_image: str | None = None, strength: float = 0, mask: str | None = None, control: str = NO_CONTROL,
        control_image: str | None = None, control_scale: float = 1.0, controlnet: str = "",
        scheduler: str = DEFAULT_SCHEDULER, lora: str = "", mask_paint: Any = None,
    ) -> str:
        """Save the current style (blended embedding + settings) as a ``.safetensors`` style file."""
        form = locals()
        request = form_request(work, {name: form[name] for name in FIELDS})
        path = work.new_output("style", ".safetensors")
        holder.get().save_style(request, path, extra=style_settings(request))
        return str(path)

    @shows_errors
    def sweep(
        style: list[str] | None, prompt: str, style_weights: str = "", negative_prompt: str = "",
        blocks: str = "style", block_table: Any = None, scale: float = 1.0, content_prompt: str = "",
        content_scale: float = 0.5, content_image: str | None = None, seed: float = 0, randomize_seed: bool = True,
        steps: float = 30, guidance: float = 5.0, width: float = 0, height: float = 0, num_images: float = 1,
        init_image: str | None = None, strength: float = 0, mask: str | None = None, control: str = NO_CONTROL,
        control_image: str | None = None, control_scale: float = 1.0, controlnet: str = "",
        scheduler: str = DEFAULT_SCHEDULER, lora: str = "", mask_paint: Any = None,
        sweep_blocks: str = "style, style+layout, all", sweep_scales: str = "0.4, 0.7, 1.0",
        sweep_content_scales: str = "",
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008
    ) -> tuple[str, list[tuple[str, str]], list[str]]:
        """Render a labelled sheet over blocks x scale (x content scale) with the form's other settings."""
        form = locals()
        values = {name: form[name] for name in FIELDS}
        axes = Axes(parse_blocks_list(sweep_blocks or ""), parse_number_list("scale", sweep_scales or ""),
                    parse_number_list("content scale", sweep_content_scales)
                    if (sweep_content_scales or "").strip() else ())
        pipe = holder.get()
        base = form_request(work, values).replace(num_images=1)
        if axes.content_scales and base.content_prompt is None and base.content_image is None:
            raise UserError("content scales need a content prompt or a content image")
        for row_blocks, _ in axes.rows:
            resolve_blocks(row_blocks, pipe.layers, pipe.arch)
        total = len(axes.rows) * len(axes.scales)
        done: list[str] = []

        def tick(path: Path) -> None:
            done.append(str(path))
            progress((len(done), total), desc="sweep cells", unit="cells")

        sheet, _ = render_sweep(pipe, base, axes, work.new_output("sweep"), on_cell=tick)
        return str(sheet), [(p, Path(p).stem.split("-sweep-")[-1]) for p in done], [str(sheet), *done]

    def load_blocks(preset: str) -> list[list[Any]]:
        return block_rows(holder.get(), preset) if preset != CUSTOM else gr.skip()

    def describe_pipeline() -> str:
        pipe = holder.get()
        return f"Model `{pipe.model_id}` ({pipe.arch}) with adapter `{Path(pipe.adapter.path).name}` on {pipe.device}"

    with gr.Blocks(title="InstantStyle", analytics_enabled=False) as demo:
        gr.Markdown("# InstantStyle\nImages in the style of a reference image, without its content: "
                    "from text, or from an image (img2img, inpainting, ControlNet).")
        loaded = gr.Markdown("Loading the model…", elem_id="loaded")
        with gr.Row():
            with gr.Column(scale=1):
                style = gr.File(label="Style image(s) or style file (.safetensors)", file_count="multiple",
                                file_types=["image", ".safetensors"], elem_id="style")
                style_weights = gr.Textbox("", label="Style weights (comma separated, blank: equal)",
                                           elem_id="weights")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox("", label="Negative prompt", elem_id="negative")
                blocks = gr.Dropdown([*PRESETS["sdxl"], CUSTOM], value="style", label="Blocks", elem_id="blocks")
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Scale", elem_id="scale")
                with gr.Accordion("Advanced: per-block scales (choose blocks = custom)", open=False):
                    table = gr.Dataframe(headers=["block", "scale"], datatype=["str", "number"],
                                         static_columns=[0], label="Per-block scales", elem_id="block-table")
                with gr.Accordion("Content subtraction", open=False):
                    content_prompt = gr.Textbox("", label="Content prompt (what the style image shows)",
                                                elem_id="content-prompt")
                    content_scale = gr.Slider(0, 2, value=0.5, step=0.05, label="Content scale")
                    content_image = gr.File(label="…or a content image", file_types=["image"],
                                            elem_id="content-image")
                with gr.Accordion("Image modes: img2img, inpainting, ControlNet", open=False):
                    init_image = gr.File(label="Init image (restyle it: img2img)", file_types=["image"],
                                         elem_id="init-image")
                    strength = gr.Slider(0, 1, value=0, step=0.05, elem_id="strength",
                                         label="Strength (how much to change; 0 = default: 0.8, inpainting 1)")
                    mask = gr.File(label="Mask for inpainting (white = repaint; needs the init image)",
                                   file_types=["image"], elem_id="mask")
                    mask_paint = gr.ImageEditor(
                        label="…or paint the area to repaint on the init image", type="numpy", image_mode="RGBA",
                        sources=("upload",), brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                        elem_id="mask-paint",
                    )
                    with gr.Row():
                        control = gr.Dropdown([NO_CONTROL, *CONTROL_KINDS, READY_CONTROL], value=NO_CONTROL,
                                              label="ControlNet control", elem_id="control")
                        control_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Control scale",
                                                  elem_id="control-scale")
                    control_image = gr.File(label="Control image (canny/depth source; default: the init image)",
                                            file_types=["image"], elem_id="control-image")
                    controlnet = gr.Textbox("", label="ControlNet model (blank: the default for the control kind)",
                                            elem_id="controlnet")
                with gr.Accordion("Advanced: scheduler and LoRA", open=False):
                    scheduler = gr.Dropdown([DEFAULT_SCHEDULER, *SCHEDULERS], value=DEFAULT_SCHEDULER,
                                            label="Scheduler", elem_id="scheduler")
                    lora = gr.Textbox("", label="LoRA file(s) (PATH[:SCALE], comma separated)", elem_id="lora")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    randomize = gr.Checkbox(value=True, label="Randomize seed", elem_id="randomize")
                with gr.Row():
                    steps = gr.Slider(1, 100, value=30, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance")
                with gr.Row():
                    width = gr.Number(value=0, precision=0, minimum=0, label="Width (0 = model's)", elem_id="width")
                    height = gr.Number(value=0, precision=0, minimum=0, label="Height (0 = model's)",
                                       elem_id="height")
                    num_images = gr.Slider(1, 8, value=1, step=1, label="Images")
            with gr.Column(scale=1):
                with gr.Tab("Generate"):
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    gallery = gr.Gallery(label="Results", columns=2, elem_id="gallery", format="png")
                    files = gr.File(label="Download PNGs (settings inside)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                    request_json = gr.Code(label="Request", language="json", interactive=False)
                with gr.Tab("Sweep"):
                    sweep_blocks = gr.Textbox("style, style+layout, all", label="Blocks to compare (rows)",
                                              elem_id="sweep-blocks")
                    sweep_scales = gr.Textbox("0.4, 0.7, 1.0", label="Scales to compare (columns)",
                                              elem_id="sweep-scales")
                    sweep_contents = gr.Textbox("", label="Content scales to compare (optional, rows)")
                    run_sweep = gr.Button("Render sweep", variant="primary", elem_id="run-sweep")
                    sheet = gr.Image(label="Sweep sheet", type="filepath", format="png", interactive=False,
                                     elem_id="sheet")
                    cells = gr.Gallery(label="Cells", columns=3, format="png")
                    sweep_files = gr.File(label="Download sheet and cells", file_count="multiple",
                                          interactive=False)
                with gr.Tab("Restore & style files"):
                    dropped = gr.File(label="Drop a PNG made by instantstyle to restore its settings",
                                      file_types=[".png"], elem_id="restore")
                    save = gr.Button("Save current style as a style file", elem_id="save-style")
                    style_out = gr.File(label="Style file (upload it as the style to reuse it without the image)",
                                        interactive=False, elem_id="style-file")

        form = [style, prompt, style_weights, negative, blocks, table, scale, content_prompt, content_scale,
                content_image, seed, randomize, steps, guidance, width, height, num_images,
                init_image, strength, mask, control, control_image, control_scale, controlnet, scheduler, lora,
                mask_paint]
        pipeline_event = {"concurrency_limit": 1, "concurrency_id": QUEUE}
        run.click(generate, form, [gallery, files, request_json], api_name="generate", **pipeline_event)
        run_sweep.click(sweep, [*form, sweep_blocks, sweep_scales, sweep_contents], [sheet, cells, sweep_files],
                        api_name="sweep", **pipeline_event)
        save.click(save_current_style, form, style_out, api_name="save_style", **pipeline_event)
        dropped.upload(restore, dropped, form, api_name="restore")
        style.upload(style_uploaded, style, form[1:], api_visibility="undocumented")
        blocks.change(load_blocks, blocks, table, api_visibility="undocumented")
        init_image.change(paint_over, init_image, mask_paint, api_visibility="undocumented")
        table.input(lambda: CUSTOM, None, blocks, api_visibility="undocumented")  # editing the table: custom blocks
        demo.load(load_blocks, blocks, table, api_visibility="undocumented")
        demo.load(describe_pipeline, None, loaded, api_visibility="undocumented")
    return demo


def paint_over(init_image: Any) -> dict[str, Any] | None:
    """The mask painter's value for a new init image: the image as background, no strokes yet."""
    path = _file_path(init_image) if init_image else None
    return {"background": path, "layers": [], "composite": path} if path else None


def launch(
    source: PipeSource,
    workdir: str | Path = "instantstyle-ui",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
) -> gr.Blocks:
    """Serve the app on ``host:port`` (localhost unless told otherwise; no public link unless ``share``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(source, workdir)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(Workdir(workdir).root)], ssr_mode=False, quiet=not block,
        theme=gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]),
    )
    return demo

