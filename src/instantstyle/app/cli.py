"""The command line: parses flags into a ``Request`` (what to make) and a ``Runtime`` (how to run), checks
them once (``preflight.check``, against the model's config), loads the pipeline once
(``StylePipeline.from_pretrained``, reusing what the check found) and runs the checked request.

Bad input exits 2 with one line on stderr (``--debug`` shows the traceback); everything that can be
checked without a model (images, numbers, output path, blocks) is checked before a model loads.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..core.caption import DEFAULT_CAPTION_MODEL
from ..core.preflight import Checked, check, default_adapter
from ..core.request import AdapterUse, LoraRef, Request, StyleRef, check_prompt, read_png_request, write_png
from ..core.video_options import DEFAULT_MAX_FRAMES
from ..errors import UserError
from ..files.atomic import writable_folder, write_text_atomically
from ..files.images import MAX_PIXELS, PIL_PIXEL_LIMIT
from ..files.logs import quiet_libraries
from ..files.textfiles import check_regular_target
from ..loading.hub import require_hub
from ..loading.runtime import (
    COMPILE_BACKENDS,
    DEFAULT_ADAPTER,
    DEFAULT_MODEL,
    DEVICE_MAPS,
    DEVICES,
    DTYPES,
    OFFLOAD_MODES,
    Runtime,
)

if TYPE_CHECKING:
    from ..core.pipeline import StylePipeline
    from ..scores.scorer import Scorer, Scores

FLOAT = click.FLOAT
INT = click.INT


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_cli(fn: Callable[..., Any], debug: bool, *args: Any, **kwargs: Any) -> Any:
    """Run a command body, turning user errors into one line and exit 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        if debug:
            traceback.print_exc()
        _fail(str(err))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as err:  # an unexpected failure: one line unless --debug
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err} (run with --debug for the traceback)", 1)


# Options shared by every command that runs a pipeline (how to run, not what to make): one Runtime field each,
# as (field, click.option arguments).
RUNTIME_OPTIONS: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("device", ("--device",), {"default": "auto", "show_default": True, "type": click.Choice(DEVICES)}),
    ("dtype", ("--dtype",), {"default": "auto", "show_default": True, "type": click.Choice(DTYPES),
                             "help": "auto: float16 on GPU (bfloat16 for SD3.5 and FLUX), float32 on CPU."}),
    ("keep_all_weights", ("--keep-all-weights",), {"is_flag": True,
                                                   "help": "Keep adapter weights of untargeted layers."}),
    ("single_file_config", ("--single-file-config",), {"default": None, "help": "Diffusers folder or hub id giving "
                                                       "the configs for a single-file --model."}),
    ("device_map", ("--device-map",), {"default": None, "type": click.Choice(DEVICE_MAPS), "help": "Spread each "
                                       "model over all GPUs of a machine (for models too large for one GPU)."}),
    ("offload", ("--offload",), {"default": None, "type": click.Choice(OFFLOAD_MODES), "help": "Keep models off the "
                                 "GPU until they run (model: whole models; sequential: layer by layer, slowest, "
                                 "least memory)."}),
    ("low_memory", ("--low-memory/--no-low-memory",), {"default": None, "help": "Keep the image encoder off the "
                                                       "device between encodes [default: when memory is tight or "
                                                       "with --offload]."}),
    ("memory_budget", ("--memory-budget",), {"default": None, "type": FLOAT, "metavar": "GIB", "help": "Stay under "
                                             "this much device memory: encoders on the device only while they "
                                             "encode, only the targeted adapter layers, the VAE decoding in tiles "
                                             "where a whole image would not fit (e.g. 8 for an 8 GB GPU)."}),
    ("vae_tiling", ("--vae-tiling",), {"is_flag": True, "help": "Decode in tiles and one image at a time at any "
                                       "size [default: in tiles above 1024 px]; tiles change the image slightly."}),
    ("compile", ("--compile", "compile_unet"), {"is_flag": True, "help": "torch.compile the UNet (first image slow, "
                                                "later ones faster)."}),
    ("compile_backend", ("--compile-backend",), {"default": "inductor", "type": click.Choice(COMPILE_BACKENDS),
                                                 "hidden": True}),
    ("cache_dir", ("--cache-dir",), {"default": None, "envvar": "INSTANTSTYLE_CACHE_DIR",
                                     "help": "Keep style embeddings here across runs [env INSTANTSTYLE_CACHE_DIR]."}),
    ("max_pixels", ("--max-pixels",), {"default": MAX_PIXELS, "type": INT, "show_default": True,
                                       "help": "Refuse any input image with more pixels (read from its header, "
                                       f"before decoding; at most {PIL_PIXEL_LIMIT:,})."}),
    ("debug", ("--debug",), {"is_flag": True, "help": "Show tracebacks."}),
]


def runtime_options(*, exclude: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with the runtime options (but ``exclude``) and ``--debug``."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name, decls, attrs in reversed(RUNTIME_OPTIONS):
            if name not in exclude:
                fn = click.option(*decls, **attrs)(fn)
        return fn

    return add


def runtime_from(params: dict[str, Any], **fixed: Any) -> Runtime:
    """The ``Runtime`` the runtime options describe (``fixed``: fields a command decides itself)."""
    return Runtime(
        device=params["device"],
        dtype=params["dtype"],
        device_map=params.get("device_map"),
        offload=params.get("offload"),
        low_memory=params.get("low_memory"),
        compile_backend=params["compile_backend"] if params.get("compile_unet") else None,
        cache_dir=params.get("cache_dir"),
        keep_all_weights=bool(params.get("keep_all_weights")),
        single_file_config=params.get("single_file_config"),
        max_pixels=params.get("max_pixels", MAX_PIXELS),
        vae_tiling=bool(params.get("vae_tiling")),
        memory_budget=params.get("memory_budget"),
    ).replace(**fixed)


def _request_option(field: str, help: str = "", **kwargs: Any) -> tuple[str, click.Option]:
    """A flag for one Request field, its help showing the Request default."""
    default = Request.__dataclass_fields__[field].default
    shown = f"  [default: {default}]" if isinstance(default, (int, float, str)) and default != "" else ""
    return field, click.Option(["--" + field.replace("_", "-")], help=help + shown, **kwargs)


# Request options: each maps to one Request field of the same name.
REQUEST_OPTIONS: list[tuple[str, click.Option]] = [
    _request_option("model", "Diffusers folder, hub id or single .safetensors file. [default: SDXL base 1.0]"),
    _request_option("adapter", "IP-Adapter weights file or org/repo/path/file. [default: h94 SDXL adapter] "
                    "Add further adapters as 'PATH;style=IMG[:W];blocks=SPEC;scale=F;region=MASK'.",
                    multiple=True),
    _request_option("image_encoder", "CLIP image encoder folder (default: found beside the adapter)."),
    _request_option("style", "Style image or .safetensors style file; repeat to blend, PATH:WEIGHT to weight.",
                    multiple=True),
    _request_option("prompt", "What to paint."),
    _request_option("negative_prompt", "What to avoid."),
    _request_option("blocks", "style | layout | style+layout | all | NAME[=S],... | PREFIX.A-B[=S] (a range) | "
                    "@FILE:NAME (a presets file) [default: the model's: style on SDXL/SD1.5, all on SD3/FLUX]"),
    _request_option("scale", "Multiplies every selected block's scale.", type=FLOAT),
    _request_option("content_prompt", "Content to subtract from the style (e.g. what the style image shows)."),
    _request_option("content_scale", "How much of the content to subtract.", type=FLOAT),
    _request_option("content_image", "Image whose content to subtract (CSGO: the content image to keep)."),
    _request_option("content_adapter_scale", "CSGO: scale of the content tokens in the UNet's down blocks (0: none, "
                    "as the authors' released code).", type=FLOAT),
    _request_option("content_text_encoder", "CLIP text model in the image encoder's space (ViT-H adapters)."),
    _request_option("steps", "Denoising steps.", type=INT),
    _request_option("guidance", "Classifier-free guidance scale (FLUX.1-dev: the distilled guidance, a model input). "
                    "[default: 5; CSGO: 10]", type=FLOAT),
    _request_option("true_cfg", "Guidance-distilled models (FLUX.1-dev): above 1, real classifier-free guidance "
                    "with the negative prompt and a negative image (two passes per step).", type=FLOAT),
    _request_option("seed", "Random seed (default: random, recorded in the PNG).", type=INT),
    _request_option("width", "Image width (default: the model's).", type=INT),
    _request_option("height", "Image height (default: the model's).", type=INT),
    _request_option("num_images", "Images per prompt.", type=INT),
    _request_option("init_image", "Image to start from (img2img), or to repaint with --mask; see --restyle to keep "
                    "a photo's content."),
    _request_option("strength", "How far from --init-image: 0 keeps it, 1 ignores it (default 0.8; 1.0 when "
                    "inpainting).", type=FLOAT),
    _request_option("mask", "Inpainting mask for --init-image: white = repaint."),
    _request_option("control", "ControlNet input: canny | depth | tile | a ready control image (needs --controlnet) "
                    "[default with --restyle: canny; with a CSGO checkpoint: tile, on --content-image]."),
    _request_option("control_image", "Image to take canny edges from, or the depth map (default: --init-image)."),
    _request_option("control_scale", "ControlNet strength. [default: 1.0; 0.6 with --restyle or CSGO]", type=FLOAT),
    _request_option("depth_model", "With --control depth: a transformers depth model (folder or hub id, e.g. "
                    "depth-anything/Depth-Anything-V2-Small-hf) that makes the map from --control-image."),
    _request_option("controlnet", "ControlNet folder or hub id (default: the canny/depth ControlNet for the model)."),
    _request_option("composition", "Image for the layout block; the style image keeps the style blocks."),
    _request_option("composition_scale", "Scale of the composition image in the layout block.", type=FLOAT),
    ("regions", click.Option(["--region", "regions"], multiple=True, help="Mask per --style, in order: white = "
                             "where that style applies.")),
    _request_option("style_start", "Fraction of the denoising run when the style starts acting.", type=FLOAT),
    _request_option("style_end", "Fraction of the denoising run when the style stops acting.", type=FLOAT),
    _request_option("style_fit", "Non-square references: centre crop, pad to square, or average square tiles.",
                    type=click.Choice(["crop", "pad", "tiles"])),
    _request_option("lora", "LoRA .safetensors file (diffusers/peft or kohya keys); repeat for several, "
                    "FILE:SCALE to scale.", multiple=True),
    _request_option("scheduler", "Sampler: euler, euler-a, euler-trailing, dpm++-2m, dpm++-2m-karras, ddim, lcm, "
                    "tcd, unipc, ... (default: the model's)."),
    ("hidiffusion", click.Option(["--hidiffusion/--no-hidiffusion"], default=None, help="HiDiffusion for sizes "
                                 "above the model's native one (SDXL: 2048 px and up): no repeated subjects, and "
                                 "faster. SDXL and SD1.5 only; not with --compile.")),
    _request_option("restyle", "A photo to restyle, keeping what is in it (InstantStyle-Plus): inverted, its content "
                    "in a global adapter slot, its edges in a ControlNet. Defaults become the recipe's: --scheduler "
                    "ddim, --control canny at 0.6, its negative prompt (docs/restyle.md)."),
    _request_option("restyle_content_scale", "With --restyle: how much of the photo's content the adapter keeps.",
                    type=FLOAT),
    _request_option("inversion_steps", "With --restyle: DDIM steps of the photo's inversion [default: --steps].",
                    type=INT),
    _request_option("renoise_steps", "With --restyle: ReNoise iterations per inversion step.", type=INT),
    _request_option("style_guidance", "With --restyle: CSD style guidance towards the style (needs --csd; memory "
                    "and time: a backward pass per step).", type=FLOAT),
    _request_option("content_guidance", "With --restyle: CSD content guidance towards the photo (needs --csd).",
                    type=FLOAT),
    ("caption", click.Option(["--caption"], is_flag=True, default=None, help="With --restyle (or a CSGO "
                             "checkpoint and --content-image): make the prompt from the photo (the content image) "
                             "with --caption-model, instead of --prompt.")),
    _request_option("caption_model", "Image-to-text model for --caption (folder or hub id; implies --caption) "
                    f"[default: {DEFAULT_CAPTION_MODEL}]."),
]


def request_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The Request fields given on the command line, parsed (style weights, further adapters)."""
    given = {
        name: params[name]
        for name, _ in REQUEST_OPTIONS
        if params.get(name) is not None and params.get(name) != ()
    }
    if "style" in given:
        given["style"] = tuple(StyleRef.parse(s) for s in given["style"])
    if "adapter" in given:  # a plain path names the main adapter (the last wins); 'PATH;style=...' adds one
        values = given.pop("adapter")
        plain = [text for text in values if ";" not in text]
        if plain:
            given["adapter"] = plain[-1]
        extra = tuple(AdapterUse.parse(text) for text in values if ";" in text)
        if extra:
            given["adapters"] = extra
    if "lora" in given:
        given["lora"] = tuple(LoraRef.parse(s) for s in given["lora"])
    if given.pop("caption", None) or "caption_model" in given:
        if "prompt" in given:
            raise UserError("give --prompt or --caption (the prompt made from the photo), not both")
        given.setdefault("caption_model", DEFAULT_CAPTION_MODEL)
        given["prompt"] = ""
    if params.get("csd") is not None and (given.get("style_guidance") or given.get("content_guidance")):
        given["csd"] = params["csd"]  # --csd is the guidance's CSD too
    return given


def request_from_cli(params: dict[str, Any], source: Request | None) -> Request:
    """Build the request: ``--from`` PNG first, then every flag given on the command line."""
    given = request_fields(params)
    if source is not None:
        if params.get("csd") is not None and (source.style_guidance or source.content_guidance):
            given.setdefault("csd", params["csd"])
        return source.replace(**given)
    if "prompt" not in given and "restyle" in given:
        raise UserError("--restyle needs --prompt (what the photo shows) or --caption (made from the photo)")
    if "prompt" not in given:
        raise UserError("--prompt is required (or --from IMAGE.png)")
    if "style" not in given:
        raise UserError("--style is required (or --from IMAGE.png)")
    given.setdefault("model", DEFAULT_MODEL)  # no adapter: the model family's own, named when it loads
    return Request(**given)


def output_paths(output: str, count: int, overwrite: bool) -> list[Path]:
    """``out.png`` for one image, ``out-1.png``... for several; refuses to clobber or an unwritable folder."""
    path = Path(output).expanduser()
    if path.suffix.lower() != ".png":
        raise UserError(f"output {output}: must end in .png (the PNG carries the generation parameters)")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i + 1}.png") for i in range(count)]
    for p in paths:
        check_output_file(p, f"output {p}" if p != path else f"output {output}", overwrite)
    return paths


def check_output_file(path: Path, label: str, overwrite: bool) -> None:
    """A file this command will write (``--output``, ``--save-style``), checked before any model loads: its folder
    made and writable, and no file there unless ``overwrite`` (never a folder, FIFO or device)."""
    if path.is_dir():
        raise UserError(f"{label}: is a folder")
    writable_folder(path.parent, f"{label}: its folder {path.parent}", made="cannot be created")
    check_regular_target(path, label)
    if path.exists() and not overwrite:
        raise UserError(f"{label} exists; pass --overwrite to replace it")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="instantstyle")
def main() -> None:
    """instantstyle: text-to-image in the style of a reference image (InstantStyle on diffusers)."""


def load_pipeline(checked: Checked) -> StylePipeline:
    """Load the checked request's model and adapter (no adapter: the model family's own, as the check found it),
    keeping the adapter weights of the layers its checks named (the request's blocks and any other spec checked
    with it)."""
    from ..core.pipeline import StylePipeline

    request = checked.request
    assert request.model is not None and checked.adapter is not None
    return StylePipeline.from_pretrained(request.model, checked.adapter, checked.runtime,
                                         image_encoder=request.image_encoder,
                                         content_text_encoder=request.content_text_encoder, checked=checked)


def pipeline_scorer(pipe: StylePipeline, content_text_encoder: str | None, csd: str | None) -> Scorer:
    """The scorer on the pipeline's loaded encoders (loaded before the run: a bad CSD file fails before any image)."""
    from ..scores.scorers import Scorers

    return Scorers(pipe).scorer(content_text_encoder, csd)


def _generate(params: dict[str, Any]) -> None:
    source = read_png_request(params["from_png"]) if params["from_png"] else None
    request = request_from_cli(params, source)
    runtime = runtime_from(params)
    paths = output_paths(params["output"], request.num_images, params["overwrite"])
    if params["save_style"]:
        if not params["save_style"].endswith(".safetensors"):
            raise UserError(f"--save-style {params['save_style']}: must end in .safetensors")
        check_output_file(Path(params["save_style"]).expanduser(), f"--save-style {params['save_style']}",
                          params["overwrite"])
    scoring = params["score"] or params["csd"] is not None
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    assert request.model is not None
    checked = check(request, runtime, request.model)
    if not params["debug"]:
        quiet_libraries()
    pipe = load_pipeline(checked)
    if params["save_style"]:
        click.echo(str(pipe.save_style(request, params["save_style"])))
    scorer = pipeline_scorer(pipe, request.content_text_encoder, params["csd"]) if scoring else None
    result = pipe(checked, progress=True)
    if request.restyle is not None:  # the inversion's cost, apart from the denoising's
        seconds = pipe.resources.inversions.seconds
        click.echo(f"inverted the photo in {seconds:.1f} s" if seconds else "inverted photo reused", err=True)
    scores, failure = score_safely(lambda: scorer.score_request(result.images, result.request) if scorer else None)
    for i, (image, path) in enumerate(zip(result.images, paths, strict=True)):
        write_png(image, path, result.request, i, scores[i].png_text() if scores else None)
        click.echo(str(path))
    if failure is not None:  # the images are written; only their scores are missing
        raise failure
    if scorer is not None and scores is not None:
        echo_scores([str(p) for p in paths], scores, scorer.unavailable())


def check_csd_path(path: str) -> None:
    """A CSD checkpoint given on the command line exists (read, safely, when it loads)."""
    if not Path(path).expanduser().exists():
        raise UserError(f"CSD checkpoint {path}: no such file")


def score_safely(fn: Callable[[], Any]) -> tuple[Any, UserError | None]:
    """(``fn()``, None), or (None, the error) when scoring fails: the caller writes the images first."""
    try:
        return fn(), None
    except UserError as err:
        return None, UserError(f"the images are written, but not scored: {err}")


def echo_scores(names: Sequence[str], scores: Sequence[Scores], unavailable: dict[str, str],
                as_json: bool = False) -> None:
    """Print scores: a table (or one JSON object per line), and on stderr a note per score never computed."""
    from ..scores.scorer import ScoreRecord, format_table

    records = [ScoreRecord(name, s) for name, s in zip(names, scores, strict=True)]
    click.echo("\n".join(r.to_json() for r in records) if as_json else format_table(records))
    for key, reason in unavailable.items():
        click.echo(f"note: {key} not scored: {reason}", err=True)


@main.command()
@click.option("--from", "from_png", default=None, help="Reproduce a PNG made by instantstyle (flags override).")
@click.option("--output", "-o", required=True, help="Output .png (several images: NAME-1.png, ...).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--save-style", default=None, help="Also save the style (embedding + sources) to this .safetensors file.")
@click.option("--score", is_flag=True, help="Score each image (CLIP style, CLIP text, content leak against "
              "--content-prompt; CSD with --csd): printed, and stored in the PNG.")
@click.option("--csd", default=None, help="CSD checkpoint for the csd_style score (implies --score).")
@runtime_options()
def generate(**params: Any) -> None:
    """Make images in the style of --style, with the content of --prompt."""
    run_cli(_generate, params["debug"], params)


generate.params[6:6] = [option for _, option in REQUEST_OPTIONS]  # after --from ... --csd


@main.command()
@click.option("--model", default=None, help="Model whose blocks to list (default: SDXL base 1.0).")
@click.option("--adapter", default=None, help="With a CSGO checkpoint: its content and style blocks instead.")
@click.option("--single-file-config", default=None)
@click.option("--debug", is_flag=True)
def blocks(model: str | None, adapter: str | None, single_file_config: str | None, debug: bool) -> None:
    """List a model's attention blocks the adapter reaches: name, layer count, presets that use it."""

    def body() -> None:
        from ..core.blocks import list_blocks
        from ..core.preflight import model_info

        name = model or DEFAULT_MODEL
        info = model_info(name, single_file_config)
        family, denoiser = info.family, info.denoiser
        if denoiser is None:  # a single file without configs: load it to see its denoiser
            import torch

            from ..loading.loader import load_base_pipeline

            denoiser = family.denoiser_of(load_base_pipeline(name, torch.float32))
        if adapter is not None and echo_csgo_blocks(name, family, adapter, denoiser):
            return
        layers = family.layers(denoiser)
        click.echo(f"{name} ({family.name}): {len(layers)} attention layers take image features; default "
                   f"blocks: {family.default_blocks}")
        rows = list_blocks(layers, family)
        width = max(len(r.name) for r in rows)
        click.echo(f"{'block':<{width}}  layers  presets")
        for row in rows:
            click.echo(f"{row.name:<{width}}  {row.layers:>6}  {', '.join(row.presets)}")
        note = family.blocks_note(denoiser) if family.blocks_note is not None else None
        if note:
            click.echo(note)

    run_cli(body, debug)


def echo_csgo_blocks(model: str, family: Any, adapter: str, denoiser: Any) -> bool:
    """``blocks --adapter`` with a CSGO checkpoint: print where its tokens go (``csgo.blocks_table``); ``False`` for
    another adapter (its blocks are the model's)."""
    from ..core import csgo
    from ..core.adapter import adapter_kind, read_adapter
    from ..loading.hub import resolve_adapter_file

    path = resolve_adapter_file(adapter)
    if adapter_kind(path) != "csgo":
        return False
    weights = read_adapter(path)
    csgo.check_fits(weights, family, denoiser, model)
    content, style = weights.tokens
    click.echo(f"{model} ({family.name}) with CSGO checkpoint {adapter}: {content} content and {style} style tokens; "
               "its blocks are trained in (no --blocks)")
    rows = csgo.blocks_table(denoiser, weights)
    width = max(len(row[1]) for row in rows)
    click.echo(f"{'model':<10}  {'block':<{width}}  layers  tokens")
    for where, block, count, tokens in rows:
        click.echo(f"{where:<10}  {block:<{width}}  {count:>6}  {tokens}")
    return True


# --- video: a clip in the style of a reference (AnyV2V on I2VGen-XL) -------------------------------------------------

#: Request fields the video command names otherwise: steps and guidance are the video's (the first frame's are
#: --first-frame-steps/--first-frame-guidance), size and seed are the video's too, one image per first frame.
VIDEO_TAKEN = ("steps", "guidance", "width", "height", "seed", "num_images", "inversion_steps")  # the clip's own
#: Video options and their flags (``VideoOptions`` fields; ``--size`` sets width and height).
VIDEO_OPTIONS: list[tuple[str, click.Option]] = [
    ("first_frame", click.Option(["--first-frame"], help="A ready styled first frame: the first-frame request is "
                                 "not run.")),
    ("frames", click.Option(["--frames"], type=INT, help="Frames to make (more than --window: chained windows). "
                            "[default: 16]")),
    ("window", click.Option(["--window"], type=INT, help="Frames per video-model run; the last frame of one window "
                            "is the first of the next. [default: 16, I2VGen-XL's]")),
    ("fps", click.Option(["--fps"], type=INT, help="Frames taken per second of the clip, the model's frame-rate "
                         "input and the output's rate. [default: 8]")),
    ("size", click.Option(["--size"], help="Video size: N (square) or WxH, multiples of 8; frames are centre-cropped "
                          "to it. [default: 512]")),
    ("start", click.Option(["--start"], type=FLOAT, help="Seconds into the clip to start at. [default: 0]")),
    ("duration", click.Option(["--duration"], type=FLOAT, help="Spread the frames evenly over this many seconds "
                              "(default: one every 1/fps s).")),
    ("inversion_steps", click.Option(["--inversion-steps"], type=INT, help="DDIM inversion steps (their timesteps "
                                     "must include the sampling ones: equal to --steps or a multiple). [default: 50]")),
    ("steps", click.Option(["--steps"], type=INT, help="Video sampling steps. [default: 50]")),
    ("conv_injection", click.Option(["--conv-injection"], type=FLOAT, help="Fraction of the steps that inject the "
                                    "source's convolution features. [default: 0.2]")),
    ("spatial_injection", click.Option(["--spatial-injection"], type=FLOAT, help="... its spatial attention. "
                                       "[default: 0.2]")),
    ("temporal_injection", click.Option(["--temporal-injection"], type=FLOAT, help="... its temporal attention. "
                                        "[default: 0.5]")),
    ("guidance", click.Option(["--guidance"], type=FLOAT, help="Video classifier-free guidance. [default: 9]")),
    ("init_step", click.Option(["--init-step"], type=INT, help="Start sampling this many steps into the schedule "
                               "(AnyV2V's ddim_init_latents_t_idx). [default: 0]")),
    ("prompt", click.Option(["--video-prompt"], "video_prompt", help="The video's prompt (default: --prompt).")),
    ("negative_prompt", click.Option(["--video-negative-prompt"], help="The video's negative prompt [default: "
                                     "AnyV2V's]."), ),
    ("video_model", click.Option(["--video-model"], help="Diffusers I2VGenXLPipeline folder or hub id. [default: "
                                 "ali-vilab/i2vgen-xl]")),
]
#: Flags of the first-frame request renamed in the video command.
FIRST_FRAME_OPTIONS: list[tuple[str, click.Option]] = [
    ("steps", click.Option(["--first-frame-steps"], type=INT, help="Denoising steps of the first frame. "
                           "[default: 30]")),
    ("guidance", click.Option(["--first-frame-guidance"], type=FLOAT, help="Guidance of the first frame. "
                              "[default: 5.0]")),
]


def parse_size(text: str) -> tuple[int, int]:
    """``512`` -> (512, 512); ``768x448`` -> (768, 448)."""
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height if sep else width))
    except ValueError:
        raise UserError(f"--size {text!r}: give N or WxH (whole numbers)") from None
    return size


def video_request_from_cli(params: dict[str, Any]) -> Any:
    """The ``VideoRequest``: ``--from`` (a video's record) first, then the clip argument and every flag given."""
    from ..core.video_options import VideoOptions, VideoRequest, first_frame_fields
    from ..modes.video import read_video_request

    source = read_video_request(params["from_record"]) if params["from_record"] else None
    clip = params["clip"] or (source.clip if source else None)
    if not clip:
        raise UserError("give the clip: instantstyle video CLIP.mp4 ... (or --from OUT.json)")
    given_options = {name: params[option.name] for name, option in VIDEO_OPTIONS
                     if name != "size" and params[option.name] is not None}
    if params["size"] is not None:
        given_options["width"], given_options["height"] = parse_size(params["size"])
    if params["seed"] is not None:
        given_options["seed"] = params["seed"]
    options = (source.options if source else VideoOptions()).replace(**given_options)
    fields = request_fields({**params, **dict.fromkeys(VIDEO_TAKEN)})
    for name, option in FIRST_FRAME_OPTIONS:
        if params[option.name] is not None:
            fields[name] = params[option.name]
    if params["seed"] is not None:
        fields["seed"] = params["seed"]
    if source is not None:
        merged = source.request.replace(**fields)
        fields = {f.name: getattr(merged, f.name) for f in dataclasses.fields(Request)}
    else:
        if "prompt" not in fields:
            raise UserError("--prompt is required (or --from OUT.json)")
        if "style" not in fields:
            raise UserError("--style is required (or --from OUT.json)")
        fields.setdefault("model", DEFAULT_MODEL)
        fields.setdefault("adapter", DEFAULT_ADAPTER)
    request = Request(**first_frame_fields(fields))
    return VideoRequest(str(clip), request, options)


def _video(params: dict[str, Any]) -> None:
    from ..modes.video import PHASES, check_outputs
    from .video import check_video, load_video_scorer, make_video, score_result

    video = video_request_from_cli(params)
    runtime = runtime_from(params)
    if not 1 <= params["max_frames"]:
        raise UserError(f"--max-frames must be at least 1, got {params['max_frames']}")
    files = check_outputs(params["output"], params["overwrite"])
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    checked = check_video(video, runtime, files, params["max_frames"])
    if not params["debug"]:
        quiet_libraries()
    bars: list[Any] = []
    seen: dict[str, Any] = {"phase": "", "done": 0, "windows": 0}

    def progress(phase: str, done: int, total: int) -> None:
        """One bar per phase and window (each window runs inversion, sampling and decoding again)."""
        from tqdm import tqdm

        if phase != seen["phase"] or done < seen["done"]:
            if bars:
                bars[-1].close()
            seen["windows"] += phase == "inversion"
            window = f" {seen['windows']}/{checked.windows}" if checked.windows > 1 and phase != "first-frame" else ""
            bars.append(tqdm(total=total, desc=f"{phase}{window}", unit="frame" if phase == "decoding" else "step",
                             dynamic_ncols=True))
        bars[-1].total, bars[-1].n = total, done  # the first frame's total is known once its steps start
        bars[-1].refresh()
        seen.update(phase=phase, done=done)

    try:
        load = lambda r: load_pipeline(check(r, runtime, r.model or DEFAULT_MODEL))  # noqa: E731
        result = make_video(checked, runtime, files, load, progress)
    finally:
        for bar in bars:
            bar.close()
    assert set(result.seconds) <= set(PHASES)
    for path in (files.video, files.first_frame, files.record, *([checked.source_path] if checked.source_path else [])):
        click.echo(str(path))
    if params["score"] or params["csd"] is not None:
        try:
            scorer = load_video_scorer(result, runtime, params["csd"])
            scores, unavailable = score_result(result, scorer, files), scorer.unavailable()
        except UserError as err:
            raise UserError(f"the video is written, but not scored: {err}") from None
        click.echo(scores.table())
        click.echo(str(files.scores))
        for key, reason in unavailable.items():
            if key in ("clip_style", "csd_style", "clip_text"):
                click.echo(f"note: {key} not scored: {reason}", err=True)


@main.command(context_settings={"show_default": True})
@click.argument("clip", required=False)
@click.option("--from", "from_record", default=None, help="Reproduce a video made by instantstyle: its OUT.json, "
              "the video or its OUT.first.png (flags override).")
@click.option("--output", "-o", required=True, help="Output video (.mp4, .mov or .mkv); beside it OUT.first.png, "
              "OUT.json, OUT.source.png (and OUT.scores.json with --score).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--max-frames", default=DEFAULT_MAX_FRAMES, type=INT, help="Refuse to make more frames than this.")
@click.option("--score", is_flag=True, help="Score the frames (CLIP style, CLIP text; CSD with --csd) and temporal "
              "consistency: printed, and written to OUT.scores.json.")
@click.option("--csd", default=None, help="CSD checkpoint for csd_style (implies --score).")
@runtime_options()
def video(**params: Any) -> None:
    """Restyle a clip frame-consistently (AnyV2V on I2VGen-XL): the first frame by an instantstyle request (by
    default a canny ControlNet on the clip's first frame, as AnyV2V), then DDIM inversion of the clip and sampling
    from it with the source's features injected."""
    run_cli(_video, params["debug"], params)


video.params[7:7] = ([option for _, option in VIDEO_OPTIONS] + [option for _, option in FIRST_FRAME_OPTIONS]
                     + [option for name, option in REQUEST_OPTIONS if name not in VIDEO_TAKEN]
                     + [click.Option(["--seed"], type=INT, help="Seed of the first frame and the video (default: "
                                     "random, recorded).")])


# --- score: the scores of images that exist ----------------------------------------------------------

#: The models ``score`` loads: each from its flag, else from the requests the images carry (all must agree).
SCORE_MODELS = ("model", "adapter", "image_encoder", "content_text_encoder")


def _score(params: dict[str, Any]) -> None:
    from PIL import Image

    from ..core.request import PNG_KEY
    from ..files.images import load_image
    from ..loading.hub import is_local_adapter_ref, model_source, resolve_adapter_file
    from ..scores.scorers import load_scorer

    if not params["images"]:
        raise UserError("give the images to score: instantstyle score IMAGE... --prompt TEXT --style REF")
    runtime = runtime_from(params)  # its pixel cap holds for every image read here
    for name in ("prompt", "content_prompt"):
        if params[name] is not None and not params[name].strip():
            raise UserError(f"--{name.replace('_', '-')} is empty")
        if params[name] is not None:
            check_prompt(f"--{name.replace('_', '-')}", params[name])
    styles = tuple(StyleRef.parse(text) for text in params["style"])
    if styles:
        Request("", style=styles)  # the weights' checks
    for ref in styles:
        if ref.path.endswith(".safetensors"):
            if not Path(ref.path).is_file():
                raise UserError(f"style file {ref.path}: no such file")
        else:
            load_image(ref.path, "style image", runtime.max_pixels)
    pictures, saved = [], []
    for path in params["images"]:
        pictures.append(load_image(path, "image", runtime.max_pixels))
        with Image.open(path) as image:  # readable: load_image said so
            saved.append(read_png_request(path) if PNG_KEY in image.info else None)
    if params["photo"] is not None:
        load_image(params["photo"], "photo to restyle", runtime.max_pixels)
    wanted: list[tuple[str | None, tuple[StyleRef, ...], str | None, str, str | None]] = []
    for path, request in zip(params["images"], saved, strict=True):
        prompt = params["prompt"] if params["prompt"] is not None else request and request.prompt
        style = styles or (request.style if request else ())
        if not prompt and not style:
            raise UserError(f"image {path}: nothing to score it against; give --prompt and/or --style (it carries "
                            "no instantstyle parameters)")
        content = params["content_prompt"] or (request.content_prompt if request else None)
        fit = params["style_fit"] or (request.style_fit if request else "crop")
        photo = params["photo"] or (request.restyle if request else None)
        wanted.append((prompt or None, style, content, fit, photo))
    models = {name: params[name] or _shared(name, saved) for name in SCORE_MODELS}
    model = None if models["content_text_encoder"] else models["model"] or DEFAULT_MODEL
    adapter = models["adapter"] or (default_adapter(model, params.get("single_file_config")) if model else
                                    DEFAULT_ADAPTER)
    require_hub(("model", model), ("adapter", adapter), ("image encoder", models["image_encoder"]),
                ("content text encoder", models["content_text_encoder"]))  # what is missing, in one line, at once
    if model is not None:
        model_source(model)  # shaped like a model, before anything loads
    if is_local_adapter_ref(adapter):
        resolve_adapter_file(adapter)
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    if not params["debug"]:
        quiet_libraries()
    scorer = load_scorer(adapter, runtime, model=model,
                         image_encoder=models["image_encoder"], content_text_encoder=models["content_text_encoder"],
                         csd=params["csd"])
    scores = [scorer.score([picture], *against)[0] for picture, against in zip(pictures, wanted, strict=True)]
    echo_scores(params["images"], scores, scorer.unavailable(), params["as_json"])


def _shared(name: str, saved: Sequence[Request | None]) -> str | None:
    """The value of a request field that every image carrying a request agrees on (``None``: none carries one)."""
    values = {getattr(r, name) for r in saved if r is not None and getattr(r, name) is not None}
    if len(values) > 1:
        flag = "--" + name.replace("_", "-")
        raise UserError(f"the images were made with different {name.replace('_', ' ')}s ({', '.join(sorted(values))}); "
                        f"give {flag}")
    return values.pop() if values else None


@main.command(context_settings={"show_default": True})
@click.argument("images", nargs=-1)
@click.option("--prompt", default=None, help="The prompt to score prompt fidelity against (default: each image's own, "
              "from its PNG).")
@click.option("--style", multiple=True, help="Style reference (image or style file), PATH:WEIGHT to weight; repeat "
              "to blend (default: each image's own).")
@click.option("--content-prompt", default=None, help="What the style reference shows: the content leak is scored "
              "against it (default: each image's own).")
@click.option("--model", default=None, help="Model whose CLIP text tower is in the adapter's space (SDXL's "
              "text_encoder_2) [default: the images' own, else SDXL base 1.0].")
@click.option("--adapter", default=None, help="IP-Adapter whose image encoder scores [default: the images' own, "
              "else h94 SDXL].")
@click.option("--image-encoder", default=None, help="CLIP image encoder folder (default: found beside the adapter).")
@click.option("--content-text-encoder", default=None, help="CLIP text tower in the image encoder's space (ViT-H "
              "adapters); replaces --model's.")
@click.option("--style-fit", default=None, type=click.Choice(["crop", "pad", "tiles"]),
              help="How non-square references are encoded [default: the images' own, else crop].")
@click.option("--csd", default=None, help="CSD checkpoint (the authors' checkpoint.pth, or .safetensors) for "
              "csd_style (and csd_content_keep).")
@click.option("--photo", default=None, help="The photo the images restyle: content_keep (and csd_content_keep with "
              "--csd) against it [default: each image's own, from its PNG].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image and line, instead of a table.")
@runtime_options(exclude=[name for name, _, _ in RUNTIME_OPTIONS if name not in ("device", "dtype",
                                                                                  "single_file_config", "max_pixels",
                                                                                  "debug")])
def score(**params: Any) -> None:
    """Score images: CLIP text (prompt fidelity), CLIP style, content leak, CSD style; cosines in [-1, 1].

    Images made by instantstyle carry their prompt, style and model: `instantstyle score out/*.png` scores
    each against its own."""
    run_cli(_score, params["debug"], params)


@main.command()
@click.option("--keep", default=None, help="Folder to keep the fixture and output image in.")
@click.option("--debug", is_flag=True)
def selftest(keep: str | None, debug: bool) -> None:
    """Run the whole path offline on a built-in tiny random-weight SDXL: about 20 s on 2 idle CPU cores, most of it
    importing torch and diffusers (a minute on a busy machine, and longer on the first run after installing).
    `instantstyle demo DIR` runs every mode."""

    def body() -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see _demo
        quiet_libraries()
        from .selftest import run_selftest

        for line in run_selftest(Path(keep) if keep else None):
            click.echo(line)

    run_cli(body, debug)


def _demo(folder: str, run_modes: bool, only: Sequence[str]) -> int:
    from . import demo

    os.environ["HF_HUB_OFFLINE"] = "1"  # every path is local: nothing asks the hub, even where there is network
    # Idle OpenMP threads sleep instead of spinning (before torch loads): on a busy 2-core machine the tiny models'
    # steps took 30x longer with spinning threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    modes = demo.select([name for text in only for name in text.split(",") if name])
    quiet_libraries()
    start = time.perf_counter()
    models = demo.build(Path(folder))
    click.echo(f"# built the demo models in {folder} ({time.perf_counter() - start:.0f} s): tiny RANDOM-WEIGHT models "
               "in the real layouts, so the images show that each mode runs, not what a trained model paints")
    plan = demo.commands(models, Path(folder), modes)
    if not run_modes:
        for mode, argv in plan:
            click.echo(f"# {mode.title}\n{demo.shown(argv)}")
        click.echo(f"# run them all, with a contact sheet: instantstyle demo {shlex.quote(folder)} --run")
        return 0
    failed = []
    for mode, argv, code, seconds in demo.run(run_in_process, plan):
        click.echo(f"# {mode.title}: {'done' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s\n"
                   f"{demo.shown(argv)}", err=code != 0)
        if code:
            failed.append(mode.name)
    if any(mode.writes_image and mode.name not in failed for mode in modes):
        click.echo(f"sheet: {demo.sheet(Path(folder), [m for m in modes if m.name not in failed], models)}")
    click.echo(f"# {len(plan) - len(failed)} of {len(plan)} modes ran in {time.perf_counter() - start:.0f} s")
    if failed:
        raise UserError(f"demo modes failed: {', '.join(failed)} (each command above runs alone, with --debug)")
    return 0


def run_in_process(argv: list[str]) -> int:
    """Run one ``instantstyle`` command line in this process: its exit code (its errors printed as the CLI does)."""
    try:
        main(args=argv, standalone_mode=False)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except click.ClickException as err:
        click.echo(f"error: {usage_error(err)}", err=True)
        return 2
    return 0


@main.command()
@click.argument("folder", metavar="DIR")
@click.option("--run", "run_modes", is_flag=True, help="Run every command: one image per mode in DIR/out/ and a "
              "contact sheet, DIR/out/sheet.png (about two minutes on 2 CPU cores).")
@click.option("--only", multiple=True, metavar="MODE[,MODE]", help="Only these modes (and those they need): "
              "sdxl, sd15, img2img, inpaint, canny, depth, tile, hidiffusion, sd3, flux, score.")
@click.option("--debug", is_flag=True)
def demo(folder: str, run_modes: bool, only: tuple[str, ...], debug: bool) -> None:
    """Every mode on tiny random-weight models, offline: build them into DIR (seconds; docs/fixtures.md has the
    layout) and print the command that runs each mode on them; --run runs them."""
    sys.exit(run_cli(_demo, debug, folder, run_modes, only) or 0)


def _batch(params: dict[str, Any]) -> int:
    from .batch import run_batch
    from .workers import Scoring

    defaults = request_fields(params)  # a job naming no adapter gets its own model family's (workers.pipeline_for)
    defaults.setdefault("model", DEFAULT_MODEL)
    runtime = runtime_from(params)
    address = params["ray"]
    if params["workers"] is not None and address is None:
        raise UserError("--workers is the number of Ray workers; add --ray")
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    scoring = Scoring(params["csd"]) if params["score"] or params["csd"] is not None else None
    if not params["debug"]:
        quiet_libraries()
    try:
        report = run_batch(
            params["jobs"], params["output"], runtime=runtime, batch_size=params["batch_size"],
            retry_failed=params["retry_failed"], strict=params["strict"], defaults=defaults,
            ray=address is not None, ray_address=None if address in (None, "local") else address,
            workers=params["workers"], progress=not params["quiet"],
            on_problem=lambda message: click.echo(f"skipped: {message}", err=True), scoring=scoring,
            on_warning=lambda message: click.echo(f"warning: {message}", err=True),
        )
    except KeyboardInterrupt:
        click.echo("finished images and the manifest are kept; run the same command again to resume", err=True)
        raise
    for error in report.errors[:20]:
        click.echo(f"failed: {error}", err=True)
    if len(report.errors) > 20:
        click.echo(f"failed: ... and {len(report.errors) - 20} more (see the manifest)", err=True)
    click.echo(report.summary())
    return 1 if report.failed or report.failed_before else 2 if report.problems else 0


@main.command(context_settings={"show_default": True})
@click.argument("jobs")
@click.option("--output", "-o", required=True, help="Folder for the images and manifest.jsonl.")
@click.option("--batch-size", default=1, type=click.IntRange(min=1), help="Images per denoising call (jobs "
              "sharing size, steps, guidance, blocks and model).")
@click.option("--retry-failed", is_flag=True, help="Also rerun jobs the manifest records as failed.")
@click.option("--strict", is_flag=True, help="Stop before starting if any job line is bad.")
@click.option("--ray", default=None, is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Run on Ray: a cluster address (e.g. ray://head:10001 or auto), or a local Ray without one.")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="Ray workers (default: one per GPU, "
              "else 1).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--score", is_flag=True, help="Score every image (CLIP style, CLIP text, content leak; CSD with "
              "--csd): in its manifest line and its PNG.")
@click.option("--csd", default=None, help="CSD checkpoint for the csd_style score (implies --score).")
@runtime_options()
def batch(**params: Any) -> None:
    """Render every job of JOBS (.jsonl, .csv or a .json matrix) into --output; rerun to resume.

    Request options given here are defaults for jobs that do not set them."""
    code = run_cli(_batch, params["debug"], params)
    sys.exit(code or 0)


for _name, _option in REQUEST_OPTIONS:
    batch.params.append(_option)


#: Flags people reach for that do not exist, and what to do instead (click's own message names no way forward).
GUESSED_FLAGS = {
    "--family": "there is no --family: the family (sdxl, sd15, sd3, flux) is detected from the model; give --model",
    "--arch": "there is no --arch: the family (sdxl, sd15, sd3, flux) is detected from the model; give --model",
}


def usage_error(err: click.ClickException) -> str:
    """The one line for a click usage error: what to do instead where a guessed flag does not exist."""
    if isinstance(err, click.NoSuchOption) and err.option_name.split("=")[0] in GUESSED_FLAGS:
        return GUESSED_FLAGS[err.option_name.split("=")[0]]
    return err.format_message()


def entry(argv: list[str] | None = None) -> None:
    """Console entry point (``argv`` for tests): click's own usage errors become one line too."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
    try:
        main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        _fail("aborted", 130)
    except click.ClickException as err:
        _fail(usage_error(err), 2)


# --- sweep: a labelled contact sheet over blocks x scale (x content scale) ---------------------------

SWEPT = ("blocks", "scale", "content_scale", "content_adapter_scale", "restyle_content_scale", "num_images")


def _sweep(params: dict[str, Any]) -> None:
    from ..core.preflight import adapter_kind_of, model_info
    from .sweep import (
        Axes,
        cell_name,
        check_sweep,
        csv_path,
        default_rows,
        parse_blocks_list,
        parse_number_list,
        plot_path,
        render_sweep,
    )

    source = read_png_request(params["from_png"]) if params["from_png"] else None
    base = request_from_cli({**params, **dict.fromkeys(SWEPT)}, source).replace(num_images=1)
    model = base.model
    assert model is not None
    restyle_scales = (parse_number_list("restyle content scale", params["sweep_restyle_content_scales"])
                      if params["sweep_restyle_content_scales"] else ())
    # CSGO: its trained blocks in every row; its content axis is the content tokens'
    if base.adapter is not None and adapter_kind_of(base.adapter) == "csgo":
        if params["sweep_blocks"] or params["sweep_content_scales"] or restyle_scales:
            raise UserError("a CSGO sweep varies --scale (style) and --content-adapter-scale (content tokens); its "
                            "blocks are trained in and it subtracts no content (--blocks, --content-scale, "
                            "--restyle-content-scale)")
        base = base.replace(blocks=None)
        axes = Axes((None,), parse_number_list("scale", params["sweep_scales"]),
                    parse_number_list("content adapter scale", params["sweep_content_adapter_scales"])
                    if params["sweep_content_adapter_scales"] else (), content_field="content_adapter_scale")
    else:
        if params["sweep_content_adapter_scales"]:
            raise UserError("--content-adapter-scale is for CSGO checkpoints (content tokens); this adapter has none")
        family = model_info(model, params.get("single_file_config")).family if not params["sweep_blocks"] else None
        rows = params["sweep_blocks"] or default_rows(list(family.presets if family else ()))
        axes = Axes(
            parse_blocks_list(rows),
            parse_number_list("scale", params["sweep_scales"]),
            parse_number_list("content scale", params["sweep_content_scales"]) if params["sweep_content_scales"]
            else (),
            restyle_scales,
        )
    if not params["score"] and (params["pick"] or params["csd"] is not None):
        raise UserError(f"{'--pick' if params['pick'] else '--csd'} needs the scores; drop --no-score")
    if not 0 <= params["pick_style_floor"] <= 1:  # click's range lets nan through
        raise UserError(f"--pick-style-floor must be between 0 and 1, got {params['pick_style_floor']}")
    content_floor = params["pick_content_floor"]
    if content_floor is not None and not 0 <= content_floor <= 1:
        raise UserError(f"--pick-content-floor must be between 0 and 1, got {content_floor}")
    if content_floor is not None and (not params["pick"] or base.restyle is None):
        raise UserError("--pick-content-floor is for --pick in a sweep restyling a photo (--restyle PHOTO)")
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    runtime = runtime_from(params)
    checked = check_sweep(base, axes, runtime, model)
    if not params["debug"]:
        quiet_libraries()
    sheet = output_paths(params["output"], 1, params["overwrite"])[0]
    outputs = [sheet.with_name(cell_name(sheet.stem, axes, r, c)) for r in range(len(axes.rows))
               for c in range(len(axes.scales))]
    if params["score"]:
        outputs += [plot_path(sheet), csv_path(sheet)]
    if params["pick"]:
        outputs += [*pick_paths(sheet)]
    for path in outputs:  # nothing finished is overwritten without --overwrite, checked before any work
        if path.suffix == ".png":
            output_paths(str(path), 1, params["overwrite"])
        elif path.exists() and not params["overwrite"]:
            raise UserError(f"output {path} exists; pass --overwrite to replace it")
    pipe = load_pipeline(checked)
    scorer = pipeline_scorer(pipe, base.content_text_encoder, params["csd"]) if params["score"] else None
    if params["pick"] and scorer is not None and "clip_text" in scorer.unavailable():
        raise UserError(f"--pick needs prompt scores, and this model has none: {scorer.unavailable()['clip_text']}")
    out = render_sweep(pipe, base, axes, sheet, on_cell=lambda path: click.echo(str(path)), scorer=scorer,
                       style_floor=params["pick_style_floor"] if params["pick"] else None, progress=True,
                       content_floor=content_floor)
    click.echo(str(sheet))
    if scorer is None:
        return
    click.echo(f"{out.plot}\n{out.table}")
    echo_scores([cell.settings["file"] for cell in out.cells], [cell.scores for cell in out.cells],
                scorer.unavailable())
    if out.picked is not None:
        write_pick(pipe, out.picked_request(), out.cells[out.picked], sheet)


def pick_paths(sheet: Path) -> tuple[Path, Path]:
    """Where ``sweep --pick`` writes the pick: a ``generate`` command line and a style file with its settings."""
    return sheet.with_name(f"{sheet.stem}-pick.sh"), sheet.with_name(f"{sheet.stem}-pick.safetensors")


def write_pick(pipe: StylePipeline, request: Request, cell: Any, sheet: Path) -> None:
    """Print the picked cell and save it as a ready ``generate`` command line and a style file carrying its
    settings (the web UI restores them when the file is uploaded as the style)."""
    from ..core.styles import style_settings

    script, style_file = pick_paths(sheet)
    command = generate_command(request, sheet.with_name(f"{sheet.stem}-pick.png"))
    write_text_atomically(script, f"#!/bin/sh\n# {cell.label}: {cell.scores.caption(', ')}\n{command}\n")
    pipe.save_style(request, style_file, extra=style_settings(request))
    click.echo(f"pick: {cell.label} ({cell.scores.caption(', ')})\n{command}\n{script}\n{style_file}")


def generate_command(request: Request, output: str | Path) -> str:
    """The ``instantstyle generate`` command line that makes ``request`` (its fields that differ from the defaults,
    as flags) into ``output``."""
    import shlex

    defaults = {f.name: f.default for f in dataclasses.fields(Request)}
    flags: list[str] = []
    for name, option in REQUEST_OPTIONS:
        if name in ("caption", "caption_model"):  # the prompt holds the caption
            continue
        value = getattr(request, name)
        if value is None or value == () or value == defaults.get(name) and name not in ("prompt", "seed"):
            continue
        flag = option.opts[0]
        if name == "style":
            flags += [a for ref in value for a in (flag, ref.path if ref.weight == 1 else f"{ref.path}:{ref.weight!r}")]
        elif name == "lora":
            flags += [a for ref in value for a in (flag, ref.path if ref.scale == 1 else f"{ref.path}:{ref.scale!r}")]
        elif name == "regions":
            flags += [a for region in value for a in (flag, region)]
        else:
            flags += [flag, str(value)]
    for use in request.adapters:
        parts = [use.path, *(f"style={r.path}" + ("" if r.weight == 1 else f":{r.weight!r}") for r in use.style),
                 *([f"blocks={use.blocks}"] if use.blocks is not None else []), f"scale={use.scale!r}",
                 *(f"region={r}" for r in use.regions)]
        flags += ["--adapter", ";".join(parts)]
    if request.csd is not None:
        flags += ["--csd", request.csd]
    return shlex.join(["instantstyle", "generate", *flags, "-o", str(output)])


@main.command(context_settings={"show_default": True})
@click.option("--blocks", "sweep_blocks", multiple=True, default=(),
              help="Blocks specs to compare, one row each (';' between specs that contain commas) [default: "
              "style,style+layout,all; all on SD3/FLUX].")
@click.option("--scale", "sweep_scales", default="0.4,0.7,1.0", help="Scales to compare, one column each.")
@click.option("--content-scale", "sweep_content_scales", default=None,
              help="Content scales to compare (rows within each blocks spec); needs --content-prompt.")
@click.option("--restyle-content-scale", "sweep_restyle_content_scales", default=None,
              help="With --restyle: the photo's content scales to compare (rows); the photo is inverted once.")
@click.option("--content-adapter-scale", "sweep_content_adapter_scales", default=None,
              help="CSGO: content-token scales to compare, one row each (its blocks are trained in: no --blocks).")
@click.option("--from", "from_png", default=None, help="Take the other settings from a PNG made by instantstyle.")
@click.option("--output", "-o", required=True, help="The sheet .png; cells are written beside it as "
              "SHEET-BLOCKS-sSCALE.png.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--score/--no-score", default=True, help="Score every cell (CLIP style, CLIP text, content leak; CSD "
              "with --csd): captions on the sheet, SHEET-plot.png (style vs prompt, Pareto front) and SHEET.csv.")
@click.option("--csd", default=None, help="CSD checkpoint: csd_style becomes the style score.")
@click.option("--pick", is_flag=True, help="Pick the cell on the Pareto front with the best prompt score whose style "
              "score stays within --pick-style-floor of the best: print it, save SHEET-pick.sh (the generate command "
              "line) and SHEET-pick.safetensors (a style file with those settings).")
@click.option("--pick-style-floor", default=0.9, type=click.FloatRange(0, 1), help="The fraction of the best style "
              "score the pick must keep.")
@click.option("--pick-content-floor", default=None, type=click.FloatRange(0, 1), help="With --restyle: the fraction "
              "of the best content-kept score (how much of the photo a cell keeps) the pick must keep.")
@runtime_options()
def sweep(**params: Any) -> None:
    """Render every blocks x scale combination with one seed into a labelled contact sheet."""
    run_cli(_sweep, params["debug"], params)


for _name, _option in REQUEST_OPTIONS:
    if _name not in SWEPT:
        sweep.params.append(_option)


# --- probe-blocks: find a model's style blocks ----------------------------------------------------------

PROBED = ("blocks", "scale", "style", "prompt", "content_prompt", "content_scale", "content_image", "num_images")
PROBE_FILES = ("probe.png", "probe.csv", "probe.md")


def _probe_blocks(params: dict[str, Any]) -> None:
    from ..core.blocks import list_blocks, read_presets
    from ..core.plan import complete
    from ..scores.pareto import cell_points, cells_csv, pareto_front
    from ..scores.plots import save_plot, scatter_plot
    from ..scores.preset_file import write_presets
    from ..scores.probe import probe_cells, probe_presets, probe_requests, probe_table, rank_blocks, run_probe
    from ..scores.scorer import SCORE_TITLES

    if not params["probe_styles"]:
        raise UserError("--style is required: the reference(s) whose style the blocks are probed with")
    if not params["probe_prompts"] or not all(p.strip() for p in params["probe_prompts"]):
        raise UserError("--prompt is required (and not empty): what the probe images show")
    styles = tuple(StyleRef.parse(text) for text in params["probe_styles"])
    contents = list(params["probe_content_prompts"])
    if len(contents) not in (0, 1, len(styles)):
        raise UserError(f"{len(contents)} content prompts for {len(styles)} styles: give one per style, or one")
    given = request_fields({**params, **dict.fromkeys(PROBED)})
    given.setdefault("model", DEFAULT_MODEL)
    base = Request(params["probe_prompts"][0], style=styles, **given)
    runtime = runtime_from(params)
    assert base.model is not None
    checked = check(base, runtime, base.model, specs=["all"])
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    folder = Path(params["output"]).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir()) and not params["overwrite"]):
        raise UserError(f"output {folder}: " + ("is a file" if not folder.is_dir() else
                                                "is not empty; pass --overwrite to write into it"))
    presets_file = Path(params["save_presets"]).expanduser() if params["save_presets"] else None
    if presets_file is not None and presets_file.exists():
        read_presets(presets_file)  # new presets merge into it: it must be one
    elif presets_file is not None:  # made if missing, as --output's folder is (the docs save it beside the probe)
        writable_folder(presets_file.parent, f"presets file {presets_file}: its folder {presets_file.parent}",
                        made="cannot be created")
    output_paths(str(folder / PROBE_FILES[0]), 1, overwrite=True)  # the folder can be made and written
    if not params["debug"]:
        quiet_libraries()
    pipe = load_pipeline(checked)
    scorer = pipeline_scorer(pipe, base.content_text_encoder, params["csd"])
    resources = pipe.resources
    blocks = list_blocks(resources.layers, resources.family)
    jobs = probe_requests(complete(base, resources), blocks, styles, params["probe_prompts"], contents)
    per_block = len(styles) * len(params["probe_prompts"])
    click.echo(f"probing {len(blocks)} blocks (+ all, none) x {len(styles)} style(s) x "
               f"{len(params['probe_prompts'])} prompt(s): {len(jobs)} images into {folder}", err=True)

    def save(index: int, job: Any, image: Any, request: Request, scores: Any) -> None:
        style, prompt = divmod(index % per_block, len(params["probe_prompts"]))
        name = f"{job.block}-style{style + 1}-prompt{prompt + 1}.png"
        write_png(image, folder / name, request, extra=scores.png_text())

    rows, key = rank_blocks(run_probe(pipe, jobs, scorer, params["batch_size"], save), blocks)
    click.echo(probe_table(rows, key))
    cells = probe_cells(rows)
    points = cell_points(cells, key)
    front = pareto_front(points)
    plot = scatter_plot(points, [c.label for c in cells], SCORE_TITLES[key], SCORE_TITLES["clip_text"], front=front,
                        title="probe: the adapter in each block alone (and all, none)")
    paths = [save_plot(plot, folder / PROBE_FILES[0]), folder / PROBE_FILES[1], folder / PROBE_FILES[2]]
    write_text_atomically(paths[1], cells_csv(cells, front))
    write_text_atomically(paths[2], probe_table(rows, key, markdown=True) + "\n")
    click.echo("\n".join(str(p) for p in paths))
    for name, reason in scorer.unavailable().items():
        click.echo(f"note: {name} not scored: {reason}", err=True)
    if presets_file is not None:
        presets = probe_presets(rows)
        write_presets(presets_file, presets)
        click.echo(f"presets in {presets_file}: " + ", ".join(f"{k}={v}" for k, v in presets.items()))
        click.echo(f"use them as --blocks @{presets_file}:style", err=True)


@main.command("probe-blocks", context_settings={"show_default": True})
@click.option("--style", "probe_styles", multiple=True, help="Style reference(s) to probe with; repeat for several "
              "(each probed alone).")
@click.option("--prompt", "probe_prompts", multiple=True, help="Prompt(s) to probe with; repeat for several.")
@click.option("--content-prompt", "probe_content_prompts", multiple=True, help="What each style reference shows "
              "(one per --style, or one for all): scored as the content leak, never subtracted.")
@click.option("--output", "-o", required=True, help="Folder for the probe images, probe.png (plot), probe.csv and "
              "probe.md (the ranked table).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
@click.option("--save-presets", default=None, help="Save the best blocks as named presets (style, style-top2, ... "
              "layout, style+layout) in this JSON file (merged into it; its folder made if missing), for "
              "--blocks @FILE:NAME.")
@click.option("--csd", default=None, help="CSD checkpoint: blocks are then ranked by csd_style.")
@click.option("--batch-size", default=4, type=click.IntRange(min=1), help="Images per denoising call.")
@runtime_options()
def probe_blocks(**params: Any) -> None:
    """Find a model's style blocks: inject the style into each attention block alone (and all, and none), score
    every image, and rank the blocks by style score (with prompt score and content leak)."""
    run_cli(_probe_blocks, params["debug"], params)


for _name, _option in REQUEST_OPTIONS:
    if _name not in PROBED:
        probe_blocks.params.append(_option)


# --- ui: the web page ---------------------------------------------------------------------------------


def _ui(params: dict[str, Any]) -> None:
    try:
        from .ui import launch, read_auth
    except ImportError as err:
        raise UserError(f"the web UI needs gradio: pip install 'instantstyle[ui]' ({err})") from None
    import socket

    from ..core.pipeline import StylePipeline

    runtime = runtime_from(params, keep_all_weights=True)  # any blocks per request, without reloading the adapter
    auth = read_auth(params["auth"], params["auth_file"])
    for folder in params["models_dir"]:
        if not Path(folder).expanduser().is_dir():
            raise UserError(f"--models-dir {folder}: no such folder")
    if params["csd"] is not None:
        check_csd_path(params["csd"])
    if params["video_model"] is not None:  # a folder that is no I2VGen-XL pipeline: one line, before anything loads
        from ..modes.video import check_video_model

        check_video_model(params["video_model"])
    try:  # a taken port fails before the model loads, not after
        with socket.create_server((params["host"], params["port"])):
            pass
    except OSError as err:
        where = f"{params['host']}:{params['port']}"
        raise UserError(f"cannot serve on {where} ({err.strerror or err}); check --host and --port") from None
    if params["host"] not in ("127.0.0.1", "localhost", "::1") or params["share"]:
        where = "a public gradio.live link" if params["share"] else params["host"]
        if auth:
            click.echo(f"warning: serving on {where} with a login; over plain HTTP the password travels in clear "
                       "(put the page behind HTTPS)", err=True)
        else:
            click.echo(f"warning: serving on {where} without a login: anyone who can reach it can use the page "
                       "(--auth USER:PASSWORD or --auth-file FILE adds one)", err=True)
    model = params["model"] or DEFAULT_MODEL
    pipe = StylePipeline.from_pretrained(
        model, params["adapter"] or default_adapter(model, params.get("single_file_config")), runtime,
        image_encoder=params["image_encoder"], content_text_encoder=params["content_text_encoder"],
    )
    public = "" if params["share"] else "; no public link (--share makes a temporary gradio.live one)"
    click.echo(f"serving http://{params['host']}:{params['port']}/ (outputs in {params['workdir']}{public})")
    launch(pipe, params["workdir"], params["host"], params["port"], share=params["share"], auth=auth,
           models_dirs=params["models_dir"], max_pixels=runtime.max_pixels, csd=params["csd"],
           video_model=params["video_model"])


@main.command(context_settings={"show_default": True})
@click.option("--model", default=None, help="Diffusers folder, hub id or single .safetensors file "
              "[default: SDXL base 1.0].")
@click.option("--adapter", default=None, help="IP-Adapter weights file or org/repo/path/file [default: h94 SDXL].")
@click.option("--image-encoder", default=None, help="CLIP image encoder folder (default: found beside the adapter).")
@click.option("--content-text-encoder", default=None, help="CLIP text model in the image encoder's space.")
@click.option("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 serves every network interface.")
@click.option("--port", default=7860, type=click.IntRange(1, 65535))
@click.option("--share", is_flag=True, help="Also open a public gradio.live link (off unless asked).")
@click.option("--workdir", default="instantstyle-ui", help="Folder for uploads and generated images.")
@click.option("--auth", multiple=True, metavar="USER:PASSWORD", help="Require a login (repeat for more users; "
              "--auth-file keeps passwords out of the process list).")
@click.option("--auth-file", multiple=True, metavar="FILE", help="Logins, one USER:PASSWORD per line.")
@click.option("--models-dir", multiple=True, metavar="DIR", help="A folder the page may read LoRA and adapter "
              "files, ControlNet, depth and captioning model folders, CSD checkpoints and presets files (--blocks "
              "@FILE:NAME) from (repeatable; none by default).")
@click.option("--csd", default=None, help="CSD checkpoint: images are also scored by csd_style.")
@click.option("--video-model", default=None, help="Diffusers I2VGenXLPipeline folder or hub id (e.g. "
              "ali-vilab/i2vgen-xl): the page gets a Video tab (instantstyle video); loaded on the first video.")
@runtime_options(exclude=("keep_all_weights",))  # the page keeps every weight: any blocks per request
def ui(**params: Any) -> None:
    """Serve the web UI: generate, sweep, restore settings from PNGs, save style files."""
    run_cli(_ui, params["debug"], params)
