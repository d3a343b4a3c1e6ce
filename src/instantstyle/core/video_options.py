"""What a styled video is made of, as plain serialisable data: the clip, the first-frame ``Request`` and
``VideoOptions`` (AnyV2V's settings on I2VGen-XL), together a ``VideoRequest``.

A ``VideoRequest`` is written as the first-frame request's JSON with one more key, ``"video"``: the clip path (or
``{"clip": PATH, ...options}``). That one shape is a batch job line, the sidecar ``OUT.json``, the metadata of the
output video and the record in the styled first frame's PNG, so every surface reads and writes the same thing.

The first-frame request is a template: ``SOURCE_FRAME`` stands for the clip's first frame (as sampled and fitted)
wherever an image path goes (``init_image``, ``control_image``); ``resolve_source`` puts the real file in. By default
(no ``init_image``, ``strength`` or ``control`` given) it is AnyV2V's recipe: a canny ControlNet on the source's first
frame at scale 0.6 (``first_frame_fields``). No torch here: the method itself is ``modes.video``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..files import safe_json
from .request import CONTROL_KINDS, MAX_GUIDANCE, Request, check_prompt

#: Stands for the clip's first frame in a first-frame request (replaced by ``resolve_source``).
SOURCE_FRAME = "@source-frame"
#: The I2V model when a video request names none.
DEFAULT_VIDEO_MODEL = "ali-vilab/i2vgen-xl"
#: AnyV2V's negative prompt for the video (``configs/group_pnp_edit/template.yaml``, the gradio demos).
ANYV2V_NEGATIVE_PROMPT = ("Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
                          "disconnected limbs, Ugly faces, incomplete arms")
#: AnyV2V's ControlNet scale for the canny first frame (``black_box_image_edit/instantstyle.py``).
ANYV2V_CONTROL_SCALE = 0.6
#: The most frames one request may ask for (the CLI's ``--max-frames`` lowers it; the README documents both).
MAX_FRAMES = 1024
DEFAULT_MAX_FRAMES = 128
MAX_VIDEO_SIZE = 2048  # output width and height, pixels


@dataclass(frozen=True)
class VideoOptions:
    """How a clip becomes a styled video (AnyV2V on I2VGen-XL); ``None`` means "derive it" as each comment says.

    Frames are taken from the clip every ``1 / fps`` seconds from ``start`` (or spread evenly over ``duration``
    seconds when given), centre-cropped to ``width`` x ``height``; ``fps`` is also the model's frame-rate input and
    the output's rate. More frames than ``window`` (the model's 16) run as chained windows: the last frame made in
    one window is the first frame of the next."""

    first_frame: str | None = None  # a ready styled first frame: the first-frame request is then not run
    frames: int = 16
    window: int = 16
    fps: int = 8
    start: float = 0.0
    duration: float | None = None
    width: int = 512
    height: int = 512
    inversion_steps: int = 50
    steps: int = 50
    conv_injection: float = 0.2  # fractions of ``steps`` that inject the inversion's features (paper defaults)
    spatial_injection: float = 0.2
    temporal_injection: float = 0.5
    guidance: float = 9.0
    init_step: int = 0  # start sampling this many steps into the schedule (AnyV2V's ``ddim_init_latents_t_idx``)
    prompt: str | None = None  # the video's prompt; None: the first-frame request's
    negative_prompt: str = ANYV2V_NEGATIVE_PROMPT
    seed: int | None = None  # None: the first-frame request's (random when that has none; recorded)
    video_model: str | None = None  # a diffusers I2VGenXLPipeline folder or hub id; None: ``DEFAULT_VIDEO_MODEL``

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ``UserError`` for any value that cannot make a video."""
        for name in ("first_frame", "video_model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise UserError(f"{name.replace('_', ' ')} must be a path, got {value!r}")
        _whole("frames", self.frames, 2, MAX_FRAMES)
        _whole("window", self.window, 2, 64)
        _whole("fps", self.fps, 1, 120)
        for name in ("width", "height"):
            value = getattr(self, name)
            _whole(f"video {name}", value, 64, MAX_VIDEO_SIZE)
            if value % 8:
                raise UserError(f"video {name} must be a multiple of 8, got {value}")
        _number("start", self.start, 0.0, 1e7)
        if self.duration is not None:
            _number("duration", self.duration, 0.0, 1e7)
            if self.duration <= 0:
                raise UserError(f"duration must be above 0 seconds, got {self.duration:g}")
        _whole("inversion steps", self.inversion_steps, 1, 1000)
        _whole("steps", self.steps, 1, 1000)
        _whole("init step", self.init_step, 0, self.steps - 1)
        for name in ("conv_injection", "spatial_injection", "temporal_injection"):
            _number(name.replace("_", " "), getattr(self, name), 0.0, 1.0)
        _number("video guidance", self.guidance, 0.0, MAX_GUIDANCE)
        if self.prompt is not None:
            check_prompt("video prompt", self.prompt)
        check_prompt("video negative prompt", self.negative_prompt)
        if self.seed is not None:
            _whole("seed", self.seed, 0, 2**64 - 1)

    def injection_steps(self) -> dict[str, int]:
        """How many of the first sampling steps inject each feature (AnyV2V: ``int(steps * fraction)``)."""
        return {name: int(self.steps * getattr(self, f"{name}_injection")) for name in ("conv", "spatial", "temporal")}

    def replace(self, **changes: Any) -> VideoOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> VideoOptions:
        """From JSON data; an unknown key or a value of the wrong type is a ``UserError``."""
        if not isinstance(data, dict):
            raise UserError("video options must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown video option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class VideoRequest:
    """One video to make: the source clip, the first-frame request (a template, see ``SOURCE_FRAME``) and the
    video options."""

    clip: str
    request: Request
    options: VideoOptions = field(default_factory=VideoOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.clip, str) or not self.clip:
            raise UserError(f"the video must be a path to a clip, got {self.clip!r}")

    def to_dict(self) -> dict[str, Any]:
        """The first-frame request's JSON data plus ``"video": {"clip": ..., ...options}``."""
        return {**self.request.to_dict(), "video": {"clip": self.clip, **self.options.to_dict()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> VideoRequest:
        """From a job line or a record: request fields plus ``"video": PATH`` or ``{"clip": PATH, ...options}``;
        the first frame defaults to AnyV2V's recipe (``first_frame_fields``)."""
        if not isinstance(data, dict) or "video" not in data:
            raise UserError('a video request is a JSON object with a "video" key (the clip, or {"clip": ...})')
        data = dict(data)
        clip, options = split_video_field(data.pop("video"))
        return cls(clip, Request.from_dict(first_frame_fields(data)), options)

    @classmethod
    def from_json(cls, text: str) -> VideoRequest:
        return cls.from_dict(safe_json.loads(text))

    def replace(self, **changes: Any) -> VideoRequest:
        return dataclasses.replace(self, **changes)


def split_video_field(value: Any) -> tuple[str, VideoOptions]:
    """``"clip.mp4"`` or ``{"clip": "clip.mp4", ...options}`` -> (clip, options)."""
    if isinstance(value, str):
        return value, VideoOptions()
    if isinstance(value, dict) and isinstance(value.get("clip"), str):
        options = dict(value)
        return options.pop("clip"), VideoOptions.from_dict(options)
    raise UserError(f'"video" must be a clip path or {{"clip": PATH, ...options}}, got {value!r}')


def first_frame_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The first-frame request's fields with the clip's first frame filled in where the request's mode needs an
    image: with no init image, strength or control given, AnyV2V's recipe (canny ControlNet on the source frame at
    scale 0.6, unless a scale is given); ``strength`` without an init image restyles the source frame (img2img); a
    canny/depth control without an image reads it from the source frame. (With ``options.first_frame`` the request
    is not run; it still records how the first frame would be made.)"""
    fields = dict(fields)
    if all(fields.get(name) is None for name in ("init_image", "strength", "control")):
        fields["control"] = "canny"
        if fields.get("control_scale") is None:
            fields["control_scale"] = ANYV2V_CONTROL_SCALE
    if fields.get("strength") is not None and fields.get("init_image") is None:
        fields["init_image"] = SOURCE_FRAME
    if fields.get("control") in CONTROL_KINDS and fields.get("control_image") is None and \
            fields.get("init_image") is None:
        fields["control_image"] = SOURCE_FRAME
    return fields


def resolve_source(request: Request, source: str) -> Request:
    """The request with ``SOURCE_FRAME`` replaced by the file of the clip's first frame."""
    changes = {name: source for name in ("init_image", "control_image", "control", "content_image", "composition")
               if getattr(request, name) == SOURCE_FRAME}
    return request.replace(**changes) if changes else request


def uses_source(request: Request) -> bool:
    """Whether the first-frame request reads the clip's first frame."""
    return SOURCE_FRAME in (request.init_image, request.control_image, request.control, request.content_image,
                            request.composition)


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, got {value}")


def _number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low:g} and {high:g}, got {value:g}")

