"""The one request type: everything that determines an image, as plain serialisable data.

CLI flags, the PNG text chunk, batch job lines and the UI state are all this dataclass as JSON.
How to run (device, dtype, offload) is deliberately not part of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, shown
from ..files import safe_json
from ..files.textfiles import open_regular

PNG_KEY = "instantstyle"
FORMAT_VERSION = 1
#: ``--control`` values computed by the project (tile: the image itself; with a CSGO checkpoint the content image, see
#: ``csgo``); anything else is a ready control image.
CONTROL_KINDS = ("canny", "depth", "tile")
#: How a non-square reference becomes the encoder's square input.
STYLE_FITS = ("crop", "pad", "tiles")
#: Ranges past any useful image (the README's "Limits" explains them); past them a float16 run overflows into a
#: black NaN image. Scales, style weights and block scales multiply what the adapter or ControlNet was trained at
#: (1.0; useful up to about 2); guidance tops out at 30 in AUTOMATIC1111, images burn long before 50.
MAX_SCALE = 10.0
MAX_GUIDANCE = 50.0
MAX_LORA_SCALE = 10.0  # either sign: negative LoRA scales are a real use (slider LoRAs)
#: CLIP reads 75 tokens (about 300 characters) and warns past them; this only stops absurd text (10 MB took 74 s).
MAX_PROMPT_CHARS = 10_000
MIN_SIZE, MAX_SIZE = 64, 8192  # output width and height, pixels
#: What ``guidance`` and ``control_scale`` left at ``None`` become (restyle and CSGO have their own recipes).
DEFAULT_GUIDANCE, DEFAULT_CONTROL_SCALE = 5.0, 1.0
#: Longer than any path a file system takes (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096
#: The fields naming a file, folder or hub id (``control`` may also be a control kind, ``canny`` or ``depth``).
PATH_FIELDS = ("model", "adapter", "image_encoder", "content_text_encoder", "content_image", "init_image", "mask",
               "control", "control_image", "controlnet", "depth_model", "composition", "restyle", "csd",
               "caption_model")
#: ReNoise iterations per inversion step: the original's default is 1; it averages at most 5 in its first steps.
MAX_RENOISE_STEPS = 10
#: CSD guidance scales multiply a cosine's gradient through the model and the VAE (the original leaves them at 0).
MAX_CSD_GUIDANCE = 10_000.0


@dataclass(frozen=True)
class StyleRef:
    """One style reference: an image or a ``.safetensors`` style file, with its blend weight."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> StyleRef:
        """Read ``image.png`` or ``image.png:0.3`` (a trailing ``:number`` is the weight)."""
        path, weight = split_weight(text, "style weight")
        return cls(path) if weight is None else cls(path, weight)


@dataclass(frozen=True)
class LoraRef:
    """One LoRA file and the scale it is applied at."""

    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraRef:
        """Read ``lora.safetensors`` or ``lora.safetensors:0.8`` (a trailing ``:number`` is the scale)."""
        path, scale = split_weight(text, "LoRA scale")
        return cls(path) if scale is None else cls(path, scale)


def split_weight(text: str, what: str) -> tuple[str, float | None]:
    """``PATH[:NUMBER]`` -> (path, number or None); a non-number after the last colon is an error
    unless it looks like part of a path (``C:\\x``, ``dir:v2/file.png``)."""
    path, sep, tail = text.rpartition(":")
    if sep and path and _is_number(tail):
        return path, float(tail)
    if sep and path and "." not in tail and "/" not in tail and "\\" not in tail:
        raise UserError(f"{what} {tail!r} in {text!r} is not a number")
    return text, None


@dataclass(frozen=True)
class AdapterUse:
    """A further IP-Adapter beside the main one, with its own references, blocks, scale and region masks."""

    path: str
    style: tuple[StyleRef, ...] = ()
    blocks: str | None = None  # None: the model family's default (SDXL/SD1.5: style; SD3/FLUX: all)
    scale: float = 1.0
    regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "style", tuple(_style_from_json(s) for s in _as_list(self.style) if s != ()))
        object.__setattr__(self, "regions", tuple(_as_list(self.regions)) if self.regions else ())

    @classmethod
    def parse(cls, text: str) -> AdapterUse:
        """Read ``PATH;style=IMG[:W];blocks=SPEC;scale=F;region=MASK`` (style and region may repeat)."""
        path, *items = [part.strip() for part in text.split(";")]
        fields: dict[str, Any] = {"style": [], "regions": []}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or key not in ("style", "blocks", "scale", "region"):
                raise UserError(f"adapter option {item!r} in {text!r}: use style=, blocks=, scale= or region=")
            if key in ("style", "region"):
                fields["regions" if key == "region" else "style"].append(value)
            elif key == "scale":
                if not _is_number(value):
                    raise UserError(f"adapter scale {value!r} in {text!r} is not a number")
                fields["scale"] = float(value)
            else:
                fields["blocks"] = value
        return cls(path, **fields)

    def validate(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise UserError(f"an extra adapter needs a weights file, got {shown(self.path)}")
        check_path("an extra adapter", self.path)
        if not self.style:
            raise UserError(f"adapter {self.path}: give its style image(s) (--adapter 'PATH;style=IMAGE')")
        try:
            _check_styles(self.style)
            _check_number("adapter scale", self.scale, low=0.0, high=MAX_SCALE)
            if self.blocks is not None and not isinstance(self.blocks, str):
                raise UserError(f"blocks must be text, got {shown(self.blocks)}")
            for region in self.regions:
                check_path("a region", region, "a mask image path")
        except UserError as err:
            raise UserError(f"adapter {self.path}: {err}") from None
        if self.regions and len(self.regions) != len(self.style):
            raise UserError(
                f"adapter {self.path}: {len(self.regions)} region mask(s) for {len(self.style)} style(s)"
            )


def check_prompt(label: str, text: Any) -> None:
    """A prompt is text of at most ``MAX_PROMPT_CHARS`` (a 10 MB prompt took 74 s and 3.3 GB to tokenize) that
    UTF-8 can hold (a lone surrogate such as ``"\\ud800"`` made the tokenizer raise ``TypeError``)."""
    if not isinstance(text, str):
        raise UserError(f"{label} must be text")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"{label} is {len(text):,} characters; the most is {MAX_PROMPT_CHARS:,} (CLIP reads about 300)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(f"{label} holds {shown(text[err.start])} at character {err.start + 1}, half of a UTF-16 "
                        "pair and no character (not Unicode text)") from None


def check_path(label: str, value: Any, kind: str = "a path") -> None:
    """A path (or hub id) is non-empty text the file system can name: no NUL byte, no lone surrogate, at most
    ``MAX_PATH_CHARS`` characters (a number, list or object there raised ``TypeError`` deep in a batch)."""
    if not isinstance(value, str) or not value:
        raise UserError(f"{label} must be {kind}, got {shown(value)}")
    if len(value) > MAX_PATH_CHARS:
        raise UserError(f"{label} is {len(value):,} characters long; no path is over {MAX_PATH_CHARS:,}")
    try:
        if b"\0" in os.fsencode(value):
            raise ValueError
    except (UnicodeEncodeError, ValueError):
        raise UserError(f"{label} {shown(value)} holds a character no file name can hold") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Request:
    """What to make. ``None`` for model/adapter/size/blocks means "the pipeline's own" (blocks: its family's
    default, ``style`` on SDXL and SD1.5, ``all`` on SD3 and FLUX)."""

    prompt: str
    style: tuple[StyleRef, ...] = ()
    negative_prompt: str | None = None  # None: the mode's default ("", the recipe's in restyle mode)
    blocks: str | None = None
    scale: float = 1.0
    content_prompt: str | None = None
    content_scale: float = 0.5
    content_image: str | None = None  # InstantStyle: whose content to subtract; CSGO: the content to keep
    # CSGO: the content tokens' scale in the UNet's down blocks (0: none, as the authors' released code runs).
    content_adapter_scale: float = 0.0
    steps: int = 30
    guidance: float | None = None  # None: DEFAULT_GUIDANCE (CSGO: 10)
    # Guidance-distilled models (FLUX.1-dev): ``guidance`` is the model's guidance input; above 1, ``true_cfg``
    # also runs real classifier-free guidance (negative prompt and negative image, two forwards per step).
    true_cfg: float = 1.0
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    model: str | None = None
    adapter: str | None = None
    image_encoder: str | None = None
    content_text_encoder: str | None = None
    # Image-based modes (see modes.py): img2img, inpainting, ControlNet, alone or together.
    init_image: str | None = None
    strength: float | None = None  # None: the mode's default (img2img 0.8, inpainting 1.0)
    mask: str | None = None  # white = repaint
    control: str | None = None  # canny | depth | tile (CSGO) | a ready control image
    control_image: str | None = None  # the image canny/depth is made from (default: the init image)
    control_scale: float | None = None  # None: the mode's default (1.0; 0.6 in restyle mode and with CSGO)
    controlnet: str | None = None  # None: the default ControlNet for the control kind and model
    depth_model: str | None = None  # with control=depth: estimate the depth map of control_image with it
    # Where and when the image features act (see routing.py).
    composition: str | None = None
    composition_scale: float = 1.0
    regions: tuple[str, ...] = ()  # one mask per style: white = that style's area
    style_start: float = 0.0
    style_end: float = 1.0
    style_fit: str = "crop"
    adapters: tuple[AdapterUse, ...] = ()  # further adapters, each with its own images and blocks
    lora: tuple[LoraRef, ...] = ()
    scheduler: str | None = None
    hidiffusion: bool = False  # HiDiffusion (RAU-Net + MSW-MSA) on UNet models, for sizes above the native one
    # Restyle a photo keeping its content (InstantStyle-Plus, see modes/restyle.py): the photo inverted (ReNoise) is
    # the start; a global adapter slot fed the photo at restyle_content_scale, the style blocks fed the style; a
    # ControlNet on its edges. Unset fields take the recipe's values (DDIM, canny at 0.6, its negative prompt).
    restyle: str | None = None  # the photo
    restyle_content_scale: float = 0.3
    inversion_steps: int | None = None  # None: steps
    renoise_steps: int = 1
    style_guidance: float = 0.0  # CSD style guidance towards the references (needs csd)
    content_guidance: float = 0.0  # CSD content guidance towards the photo (needs csd)
    csd: str | None = None  # the CSD checkpoint CSD guidance uses
    caption_model: str | None = None  # an empty prompt is made from the photo (CSGO: content image) by this model

    def __post_init__(self) -> None:
        object.__setattr__(self, "style", tuple(_style_from_json(s) for s in _as_list(self.style) if s != ()))
        object.__setattr__(self, "regions", tuple(_as_list(self.regions)) if self.regions else ())
        object.__setattr__(self, "adapters", tuple(_adapter_from_json(a) for a in _as_list(self.adapters) if a != ()))
        object.__setattr__(self, "lora", tuple(_lora_from_json(s) for s in _as_list(self.lora) if s != ()))
        if isinstance(self.scheduler, str):
            from .schedulers import canonical_name

            object.__setattr__(self, "scheduler", canonical_name(self.scheduler))
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ``UserError`` for any value that cannot make an image: every field's type and range,
        checked here once for every surface that reads a request (flags, PNGs, job lines, the page, style files)."""
        for name in ("prompt", "negative_prompt", "content_prompt"):
            text, label = getattr(self, name), name.replace("_", " ")
            if text is None and name != "prompt":
                continue
            check_prompt(label, text)
        if not self.style:
            raise UserError("a style reference is required (--style IMAGE)")
        _check_styles(self.style)
        _check_number("scale", self.scale, low=0.0, high=MAX_SCALE)
        _check_number("content scale", self.content_scale, low=0.0, high=MAX_SCALE)
        _check_number("content adapter scale", self.content_adapter_scale, low=0.0, high=MAX_SCALE)
        if self.guidance is not None:
            _check_number("guidance", self.guidance, low=0.0, high=MAX_GUIDANCE)
        _check_number("true CFG scale", self.true_cfg, low=1.0, high=MAX_GUIDANCE)
        if self.blocks is not None and not isinstance(self.blocks, str):
            raise UserError(f"blocks must be text, got {shown(self.blocks)}")
        _check_int("steps", self.steps, low=1, high=1000)
        _check_int("number of images", self.num_images, low=1, high=64)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**64 - 1)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low=MIN_SIZE, high=MAX_SIZE)
                if value % 8:
                    raise UserError(f"{name} must be a multiple of 8, got {value}")
        if self.content_image is not None and self.content_prompt is not None:
            raise UserError("give either a content prompt or a content image, not both")
        for lora in self.lora:
            check_path("a LoRA", lora.path)
            _check_number("LoRA scale", lora.scale, low=-MAX_LORA_SCALE, high=MAX_LORA_SCALE)
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise UserError(f"scheduler must be a name, got {shown(self.scheduler)}")
        if not isinstance(self.hidiffusion, bool):
            raise UserError(f"hidiffusion must be true or false, got {shown(self.hidiffusion)}")
        for name in PATH_FIELDS:
            if getattr(self, name) is not None:
                check_path(name.replace("_", " "), getattr(self, name))
        self._validate_restyle()  # first: a photo to restyle changes what the other modes' errors mean
        self._validate_modes()

    def _validate_modes(self) -> None:
        if self.strength is not None:
            _check_number("strength", self.strength, low=0.0)
            if not 0 < self.strength <= 1:
                raise UserError(f"strength must be above 0 and at most 1, got {_number(self.strength)}")
            if self.init_image is None:
                raise UserError("strength needs an init image (--init-image)")
            if int(self.steps * self.strength) < 1:
                raise UserError(f"strength {self.strength} of {self.steps} steps runs no denoising step; "
                                "raise --steps or --strength")
        if self.mask is not None and self.init_image is None:
            raise UserError("a mask needs an init image to repaint (--init-image)")
        if self.control_scale is not None:
            _check_number("control scale", self.control_scale, low=0.0, high=MAX_SCALE)
        if self.depth_model is not None and self.control != "depth":
            raise UserError("--depth-model needs --control depth (it makes the depth map from --control-image)")
        if self.control is None:  # restyle mode's default is canny
            if (self.control_image is not None or self.controlnet is not None) and self.restyle is None:
                raise UserError("--control-image and --controlnet need --control canny|depth|tile|IMAGE")
        elif self.control in CONTROL_KINDS:
            # tile with no image: CSGO's (its content image, or black); another adapter is refused once it is known
            if self.control_image is None and self.init_image is None and self.restyle is None and \
                    self.control != "tile":
                raise UserError(f"--control {self.control} needs --control-image IMAGE (or --init-image)")
        elif self.control_image is not None:
            raise UserError("--control IMAGE is the ready control image; --control-image is for canny|depth")
        elif self.controlnet is None:
            raise UserError(f"--control {self.control} (a ready control image) needs --controlnet MODEL")
        _check_number("composition scale", self.composition_scale, low=0.0, high=MAX_SCALE)
        for region in self.regions:
            check_path("a region", region, "a mask image path")
        if self.regions and len(self.regions) != len(self.style):
            raise UserError(f"{len(self.regions)} region mask(s) for {len(self.style)} style(s): give one per style")
        for name in ("style_start", "style_end"):
            label, value = name.replace("_", " "), getattr(self, name)
            _check_number(label, value, low=0.0)
            if value > 1:
                raise UserError(f"{label} is a fraction of the run (0 to 1), got {_number(value)}")
        if self.style_start > self.style_end:
            raise UserError(f"style start {self.style_start} is after style end {self.style_end}")
        for extra in self.adapters:
            extra.validate()
        if not isinstance(self.style_fit, str) or self.style_fit not in STYLE_FITS:
            raise UserError(f"style fit must be one of {', '.join(STYLE_FITS)}, got {shown(self.style_fit)}")

    def _validate_restyle(self) -> None:
        _check_number("restyle content scale", self.restyle_content_scale, low=0.0, high=MAX_SCALE)
        if self.inversion_steps is not None:
            _check_int("inversion steps", self.inversion_steps, low=1, high=1000)
        _check_int("renoise steps", self.renoise_steps, low=1, high=MAX_RENOISE_STEPS)
        for name in ("style_guidance", "content_guidance"):
            _check_number(name.replace("_", " "), getattr(self, name), low=0.0, high=MAX_CSD_GUIDANCE)
        if (self.style_guidance or self.content_guidance) and self.csd is None:
            raise UserError("--style-guidance and --content-guidance need a CSD checkpoint (--csd FILE)")
        if self.style_guidance and any(ref.path.endswith(".safetensors") for ref in self.style):
            raise UserError("--style-guidance needs style images (CSD reads pixels), not style files")
        if self.restyle is None:
            given = [flag for flag, on in (("--style-guidance", self.style_guidance), ("--content-guidance",
                     self.content_guidance), ("--inversion-steps", self.inversion_steps is not None),
                     ("--renoise-steps", self.renoise_steps != 1)) if on]
            if given:
                raise UserError(f"{given[0]} is for restyling a photo (--restyle PHOTO)")
            if self.caption_model is not None and self.content_image is None:
                raise UserError("--caption makes the prompt from a photo: the photo to restyle (--restyle PHOTO) or, "
                                "with a CSGO checkpoint, the content image (--content-image)")
            return
        for flag, field in (("--init-image", "init_image"), ("--mask", "mask"), ("--composition", "composition")):
            if getattr(self, field) is not None:
                raise UserError(f"--restyle starts from the photo itself; it takes no {flag}")
        if self.regions:
            raise UserError("--restyle takes no --region masks")
        if self.hidiffusion:
            raise UserError("--restyle does not take --hidiffusion (the inversion runs at the photo's own size)")
        if self.num_images != 1:
            raise UserError("--restyle makes one image per photo and seed (the inversion fixes the start); "
                            "vary --seed for others")

    def check_restyle_prompt(self) -> None:
        """A photo to restyle needs its prompt, or a caption model to make one (not checked in ``validate``: a
        request's prompt is blanked while batches are grouped)."""
        if self.restyle is not None and not self.prompt.strip() and self.caption_model is None:
            raise UserError("--restyle needs --prompt (what the photo shows) or --caption (made from the photo)")

    @property
    def mode(self) -> str:
        """``text``, ``img2img``, ``inpaint`` (each may add a ControlNet) or ``restyle`` (with one)."""
        if self.restyle is not None:
            return "restyle"
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "text"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (styles as ``{"path", "weight"}``), with the format version."""
        data = dataclasses.asdict(self)
        return {"version": FORMAT_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        """Build from JSON data; an unknown key or a value of the wrong type is a ``UserError``."""
        if not isinstance(data, dict):
            raise UserError("a request must be a JSON object")
        data = dict(data)
        data.pop("version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown option(s): {', '.join(unknown)}")
        if "prompt" not in data and data.get("caption_model") is not None and \
                (data.get("restyle") is not None or data.get("content_image") is not None):
            data["prompt"] = ""  # made from the photo (restyle) or the content image (CSGO)
        if "prompt" not in data:
            raise UserError("a request needs a prompt")
        data["style"] = tuple(_style_from_json(s) for s in _as_list(data.get("style", ())))
        data["lora"] = tuple(_lora_from_json(s) for s in _as_list(data.get("lora", ())))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Request:
        return cls.from_dict(safe_json.loads(text))

    def replace(self, **changes: Any) -> Request:
        return dataclasses.replace(self, **changes)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _adapter_from_json(item: Any) -> AdapterUse:
    if isinstance(item, AdapterUse):
        return item
    if isinstance(item, str):
        return AdapterUse.parse(item)
    names = {"path", "style", "blocks", "scale", "regions"}
    if isinstance(item, dict) and set(item) <= names and "path" in item:
        return AdapterUse(**item)
    raise UserError(f"an extra adapter must be 'PATH;style=...' or {{'path': ..., 'style': [...]}}, got {shown(item)}")


def _style_from_json(item: Any) -> StyleRef:
    if isinstance(item, StyleRef):
        return item
    if isinstance(item, str):
        return StyleRef.parse(item)
    if isinstance(item, dict) and isinstance(item.get("path"), str) and set(item) <= {"path", "weight"}:
        return StyleRef(item["path"], item.get("weight", 1.0))
    raise UserError(f"a style must be a path or {{'path': ..., 'weight': ...}}, got {shown(item)}")


def _lora_from_json(item: Any) -> LoraRef:
    if isinstance(item, LoraRef):
        return item
    if isinstance(item, str):
        return LoraRef.parse(item)
    if isinstance(item, dict) and isinstance(item.get("path"), str) and set(item) <= {"path", "scale"}:
        return LoraRef(item["path"], item.get("scale", 1.0))
    raise UserError(f"a LoRA must be a path or {{'path': ..., 'scale': ...}}, got {shown(item)}")


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"{name} must be a number, got {shown(value)}")
    if high is not None and not low <= value <= high:  # compared exactly: a 400-digit int never becomes a float
        raise UserError(f"{name} must be between {low:g} and {high:g}, got {_number(value)}")
    if value < low:
        raise UserError(f"{name} must be at least {low}, got {_number(value)}")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) or abs(value) < 10**15 else shown(value)


def _check_styles(refs: tuple[StyleRef, ...]) -> None:
    """Each style a path with a weight in range, and not all weights 0 (blending divides by their sum)."""
    for ref in refs:
        check_path("a style", ref.path)
        _check_number("style weight", ref.weight, low=0.0, high=MAX_SCALE)
    if refs and not any(ref.weight for ref in refs):
        raise UserError("style weights must not all be 0")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number, got {shown(value)}")
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {shown(value)}")


def read_png_text(path: str | Path, key: str) -> str | None:
    """The text chunk ``key`` of a PNG (``None``: it has none), or a one-line ``UserError``: missing, not an image,
    a decompression bomb, or a text chunk that inflates past PIL's limit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path, str(path)) as file, Image.open(file) as image:
            text = image.info.get(key)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None
    except Image.DecompressionBombError as err:
        raise UserError(f"{path}: refused as a possible decompression bomb ({err})") from None
    except ValueError as err:  # PIL's cap on inflating text chunks (zTXt/iTXt)
        raise UserError(f"{path}: a text chunk is too large to read ({err})") from None
    return text if isinstance(text, str) else None


def read_png_request(path: str | Path) -> Request:
    """Read the request stored in a PNG made by instantstyle (``generate --from image.png``)."""
    text = read_png_text(path, PNG_KEY)
    if text is None:
        raise UserError(f"{path}: carries no instantstyle parameters")
    try:
        return Request.from_json(text)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def write_png(image: Any, path: str | Path, request: Request, index: int = 0,
              extra: dict[str, str] | None = None) -> Path:
    """Save an image with its request in a PNG text chunk, atomically (temp file, then rename); ``extra``: more
    text chunks (the image's scores)."""
    from ..files.atomic import save_png_atomically

    return save_png_atomically(image, path, {PNG_KEY: request.to_json(), PNG_KEY + "-index": str(index),
                                             **(extra or {})})
