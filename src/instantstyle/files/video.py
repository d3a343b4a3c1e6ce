"""Reading the clips a user gives and writing videos, with PyAV: a one-line error for anything that is not a
decodable video, the pixel cap checked from the stream header before a frame is decoded, and only the frames asked
for kept (decoding stops at the last one).

Frames are taken at times ``start + k * step`` (the frame on screen at that time: the last one that starts at or
before it), turned upright (the stream's rotation), centre-cropped to the aspect asked for and resized with Lanczos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..errors import UserError
from .atomic import atomic_path
from .images import MAX_PIXELS

#: Output containers we write (H.264 needs even sizes: every video size is a multiple of 8).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
#: The metadata key holding the record that reproduces a video (``VideoRequest`` JSON).
METADATA_KEY = "comment"
#: A frame starts "at" a time within this many seconds (timestamps are rationals printed as floats).
TIME_EPS = 1e-4
#: Encoders tried in order for the output (PyAV's wheels carry libx264).
ENCODERS = ("libx264", "h264", "mpeg4")


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header says: frame size, frame rate and duration (``None`` where the file does not say)."""

    width: int
    height: int
    fps: float | None
    duration: float | None
    codec: str


@dataclass
class Clip:
    """Frames taken from a clip (RGB, at the size asked for) and the time in the clip each was taken at."""

    frames: list[Image.Image]
    times: list[float]
    info: ClipInfo


def _av() -> Any:
    try:
        import av
    except ImportError as err:  # pragma: no cover - av is a dependency; a broken install says so in one line
        raise UserError(f"video needs PyAV: pip install 'instantstyle[video]' ({err})") from None
    return av


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder, not a video")
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path}: the file is empty")


def _open(path: Path, what: str) -> Any:
    av = _av()
    try:
        return av.open(str(path), "r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path}: not a readable video ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    return (getattr(err, "strerror", None) or str(err) or type(err).__name__).splitlines()[0]


def _stream(container: Any, path: Path, what: str, max_pixels: int | None) -> tuple[Any, ClipInfo]:
    """The first video stream and its header facts; refuses no stream, no decoder, or too many pixels."""
    if not container.streams.video:
        raise UserError(f"{what} {path}: has no video stream (no frames to read)")
    stream = container.streams.video[0]
    context = stream.codec_context
    name = getattr(context, "name", None) if context is not None else None
    if context is None or not name or name == "none":
        raise UserError(f"{what} {path}: its video codec is not one this FFmpeg (PyAV) can decode")
    width, height = int(context.width or 0), int(context.height or 0)
    if width <= 0 or height <= 0:
        raise UserError(f"{what} {path}: its video stream has no frame size (no frames?)")
    if max_pixels is not None and width * height > max_pixels:
        raise UserError(f"{what} {path}: {width}x{height} frames are over the limit of {max_pixels:,} pixels")
    rate = stream.average_rate or stream.guessed_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    return stream, ClipInfo(width, height, float(rate) if rate else None, duration, name)


def probe_clip(path: str | Path, what: str = "video", max_pixels: int | None = MAX_PIXELS) -> ClipInfo:
    """A clip's header facts, or a one-line ``UserError`` (missing, empty, not a video, no video stream, a codec
    without a decoder here, frames over ``max_pixels``); no frame is decoded."""
    path = Path(path).expanduser()
    _check_file(path, what)
    with _open(path, what) as container:
        return _stream(container, path, what, max_pixels)[1]


def upright(image: Image.Image, rotation: int) -> Image.Image:
    """The frame as it is shown: the stream's display matrix turns it ``rotation`` degrees counterclockwise."""
    turns = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, -90: Image.Transpose.ROTATE_270,
             270: Image.Transpose.ROTATE_270, -180: Image.Transpose.ROTATE_180}
    return image.transpose(turns[rotation]) if rotation in turns else image


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop to the aspect of ``size`` = (width, height) and resize with Lanczos (untouched when it fits)."""
    if image.size == size:
        return image
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def read_clip(path: str | Path, count: int, step: float, start: float = 0.0, size: tuple[int, int] | None = None,
              what: str = "video", max_pixels: int | None = MAX_PIXELS) -> Clip:
    """Up to ``count`` frames at ``start, start + step, ...`` seconds (fewer when the clip ends first), fitted to
    ``size`` (``None``: as they are). A one-line ``UserError`` for a file that is not a decodable video (see
    ``probe_clip``), a stream that breaks while decoding, or no frame at or after ``start``."""
    av = _av()
    path = Path(path).expanduser()
    _check_file(path, what)
    targets = [start + k * step for k in range(count)]
    frames: list[Image.Image] = []
    times: list[float] = []
    with _open(path, what) as container:
        stream, info = _stream(container, path, what, max_pixels)
        stream.thread_type = "AUTO"
        last: tuple[float, Any] | None = None
        gap = 1.0 / info.fps if info.fps else step

        def take(time: float, frame: Any) -> None:
            picture = upright(frame.to_image(), int(getattr(frame, "rotation", 0) or 0))
            frames.append(fit(picture, size) if size else picture)
            times.append(time)

        try:
            if start > 0 and stream.time_base:
                container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
            for index, frame in enumerate(container.decode(stream)):
                time = float(frame.time) if frame.time is not None else index * gap
                while len(frames) < count and targets[len(frames)] < time - TIME_EPS:
                    if last is None:  # a target before the first frame: the first frame is what shows
                        break
                    take(last[0], last[1])
                if len(frames) == count:
                    break
                if last is not None:
                    gap = max(time - last[0], TIME_EPS)
                last = (time, frame)
        except av.error.FFmpegError as err:
            raise UserError(f"{what} {path}: cannot be decoded ({_reason(err)})") from None
        if last is not None:  # the last frame shows for one frame's time
            while len(frames) < count and targets[len(frames)] < last[0] + gap - TIME_EPS:
                take(last[0], last[1])
    if last is None:
        raise UserError(f"{what} {path}: has no frames")
    if not frames:
        length = f"; the clip is {info.duration:.2f} s long" if info.duration else ""
        raise UserError(f"{what} {path}: no frame at or after {start:g} s{length}")
    return Clip(frames, times, info)


def encoder_name() -> str:
    """The first video encoder this PyAV has (``ENCODERS``)."""
    av = _av()
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):  # not in this build
            continue
    raise UserError(f"this PyAV has none of the video encoders {', '.join(ENCODERS)}")


def yuv420p_frame(image: Image.Image) -> Any:
    """An RGB image as the encoder's yuv420p frame, converted explicitly (see ``write_video``)."""
    import numpy as np

    av = _av()
    return av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24").reformat(format="yuv420p")


def write_video(path: str | Path, frames: list[Image.Image], fps: int, record: dict[str, Any] | None = None,
                quality: int = 17) -> Path:
    """Write RGB frames as H.264 (yuv420p, CRF ``quality``) atomically; ``record`` (JSON data) goes in the
    container's ``comment`` metadata, where ``read_video_record`` finds it."""
    av = _av()
    path = Path(path)
    suffix = path.suffix.lower()
    container_format = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[suffix]
    width, height = frames[0].size
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=container_format) as container:
            if record is not None:
                container.metadata[METADATA_KEY] = json.dumps(record, sort_keys=True)
            codec = encoder_name()
            options = {"crf": str(quality)} if codec == "libx264" else {}
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            for image in frames:
                # Converted here, not by encode(): PyAV's implicit conversion gave different bytes (and pixels) from
                # the same frames depending on what was in freed memory; this one is repeatable (measured).
                frame = yuv420p_frame(image)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def read_video_record(path: str | Path) -> str | None:
    """The record text a video made by instantstyle carries (``None``: it carries none)."""
    path = Path(path).expanduser()
    _check_file(path, "video")
    with _open(path, "video") as container:
        text = container.metadata.get(METADATA_KEY)
    return text if isinstance(text, str) and text.startswith("{") else None
