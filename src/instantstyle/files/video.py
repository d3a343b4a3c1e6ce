"""Reading the clips a user gives and writing videos, with PyAV: a one-line error for anything that is not a
decodable video, the pixel cap checked from the stream header before a frame is decoded, and only the frames asked
for kept (decoding stops at the last one).

Frames are taken at times ``start + k * step`` (the frame on screen at that time: the last one that starts at or
before it), turned upright (the stream's rotation), centre-cropped to the aspect asked for and resized with Lanczos.

Colour is converted here, in numpy, never by FFmpeg's libswscale (which read uninitialised row padding):
``frame_rgb`` reads Y'CbCr frames with the matrix and range their stream is tagged with (untagged: BT.601, limited
range), chroma repeated over the pixels it covers; ``rgb_to_yuv420p`` writes BT.601 limited range, chroma the mean
of each 2 x 2 block, and the output is tagged so. The same file gives the same pixels in every process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
#: libx264 without its macroblock tree: x264's AVX-512 code for it reads memory it never wrote when the width is not
#: a multiple of 128 px, so the same frames gave different files (and pixels, up to 20 levels at 64 px) from run to
#: run (measured with PyAV 18.1's x264 by filling freed memory with MALLOC_PERTURB_); without it they do not.
X264_PARAMS = "mbtree=0"

# Colour: FFmpeg's numbers for the tags a stream carries (AVColorSpace, AVColorRange).
BT601 = (0.299, 0.114)
#: Luma weights (Kr, Kb) of the Y'CbCr matrix each colour-space tag names: BT.709, untagged and reserved (read as
#: BT.601, as FFmpeg does), FCC, BT.470BG and SMPTE 170M (BT.601), SMPTE 240M, BT.2020 non-constant luminance.
MATRICES: dict[int, tuple[float, float]] = {
    1: (0.2126, 0.0722), 2: BT601, 3: BT601, 4: (0.30, 0.11), 5: BT601, 6: BT601, 7: (0.212, 0.087),
    9: (0.2627, 0.0593),
}
#: The tags written: SMPTE 170M (BT.601) matrix, limited (MPEG) range.
SMPTE170M, LIMITED_RANGE, FULL_RANGE = 6, 1, 2
#: Y'CbCr pixel formats read: bits per sample and chroma subsampling (x, y). ``yuvj`` and grey are full range unless
#: tagged otherwise; nv12 interleaves its chroma in one plane.
YCBCR_FORMATS: dict[str, tuple[int, tuple[int, int]]] = {
    "yuv420p": (8, (2, 2)), "yuvj420p": (8, (2, 2)), "yuv422p": (8, (2, 1)), "yuvj422p": (8, (2, 1)),
    "yuv444p": (8, (1, 1)), "yuvj444p": (8, (1, 1)), "nv12": (8, (2, 2)), "gray": (8, (1, 1)),
    "yuv420p10le": (10, (2, 2)), "yuv422p10le": (10, (2, 1)), "yuv444p10le": (10, (1, 1)),
    "yuv420p12le": (12, (2, 2)), "yuv422p12le": (12, (2, 1)), "yuv444p12le": (12, (1, 1)),
}
#: 8-bit RGB pixel formats read as they are (alpha dropped): where R, G and B lie (PyAV hands gbrp over as RGB).
RGB_CHANNELS: dict[str, list[int]] = {
    "rgb24": [0, 1, 2], "bgr24": [2, 1, 0], "rgba": [0, 1, 2], "bgra": [2, 1, 0], "argb": [1, 2, 3],
    "abgr": [3, 2, 1], "gbrp": [0, 1, 2],
}
#: Rows converted at a time (even, as 4:2:0 chroma needs): bounds the float memory a large frame takes.
STRIP_ROWS = 256


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
    pixels = getattr(context, "format", None)
    problem = pixels_problem(pixels.name, _colorspace(context)) if pixels is not None else None
    if problem:
        raise UserError(f"{what} {path}: {problem}")
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
            try:
                rgb = frame_rgb(frame)
            except ValueError as err:
                raise UserError(f"{what} {path}: {err}") from None
            picture = upright(Image.fromarray(rgb), int(getattr(frame, "rotation", 0) or 0))
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


def pixels_problem(name: str, colorspace: int) -> str | None:
    """Why frames of this pixel format and colour-space tag cannot be read (``None``: they can)."""
    if name not in YCBCR_FORMATS and name not in RGB_CHANNELS:
        return (f"its frames are {name} pixels, which instantstyle does not convert (re-encode it, e.g. "
                f"ffmpeg -i IN -pix_fmt yuv420p OUT.mp4)")
    if name in YCBCR_FORMATS and name != "gray" and colorspace not in MATRICES:
        return f"its colour matrix (FFmpeg colorspace {colorspace}) is not one instantstyle converts"
    return None


def _colorspace(tagged: Any) -> int:
    """A frame's or codec context's colour-space tag (2, untagged, when it has none)."""
    value = getattr(tagged, "colorspace", None)
    return 2 if value is None else int(value)


def _plane(plane: Any, dtype: np.dtype, channels: int = 1) -> np.ndarray:
    """One plane's samples (height x width x channels), without the row padding (never written, so never read)."""
    rows = np.frombuffer(plane, np.uint8)[: plane.line_size * plane.height].reshape(plane.height, plane.line_size)
    used = np.ascontiguousarray(rows[:, : plane.width * channels * dtype.itemsize])
    return used.view(dtype).reshape(plane.height, plane.width, channels)


def _to_bytes(values: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray | None, cr: np.ndarray | None, weights: tuple[float, float],
                 bits: int = 8, full_range: bool = False, subsampling: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Y'CbCr samples to RGB (H x W x 3 uint8): ``weights`` = (Kr, Kb) of the matrix, limited range (Y' 16..235,
    chroma 16..240, scaled to ``bits``) or full range, each chroma sample repeated over the ``subsampling`` block of
    pixels it covers. ``cb``/``cr`` ``None``: grey. In float64 numpy, strip by strip: the same bytes everywhere."""
    height, width = y.shape
    sx, sy = subsampling
    top = (1 << bits) - 1
    y_offset, y_scale = (0, top) if full_range else (16 << (bits - 8), 219 << (bits - 8))
    c_offset, c_scale = 1 << (bits - 1), top if full_range else 224 << (bits - 8)
    kr, kb = weights
    kg = 1.0 - kr - kb
    out = np.empty((height, width, 3), np.uint8)
    for start in range(0, height, STRIP_ROWS):
        luma = (y[start:start + STRIP_ROWS].astype(np.float64) - y_offset) * (255.0 / y_scale)
        rows = luma.shape[0]
        if cb is None or cr is None:
            out[start:start + rows] = _to_bytes(luma)[..., None]
            continue
        chroma_rows = slice(start // sy, -(-(start + rows) // sy))
        pb = (cb[chroma_rows].astype(np.float64) - c_offset) * (255.0 / c_scale)
        pr = (cr[chroma_rows].astype(np.float64) - c_offset) * (255.0 / c_scale)
        terms = (2 * (1 - kr) * pr, -(2 * kb * (1 - kb) / kg) * pb - (2 * kr * (1 - kr) / kg) * pr, 2 * (1 - kb) * pb)
        for channel, term in enumerate(terms):
            spread = np.repeat(np.repeat(term, sy, axis=0), sx, axis=1)[:rows, :width]
            out[start:start + rows, :, channel] = _to_bytes(luma + spread)
    return out


def frame_rgb(frame: Any) -> np.ndarray:
    """A decoded frame as RGB (H x W x 3 uint8), converted here (not by libswscale): Y'CbCr frames with the matrix
    and range they are tagged with (untagged: BT.601, limited range; yuvj and grey full range), 10 and 12-bit
    samples rounded to 8 bits after the conversion, RGB frames as they are (alpha dropped). A ``ValueError`` for
    the pixel formats and colour matrices it does not convert (``pixels_problem``)."""
    name = frame.format.name
    colorspace = _colorspace(frame)
    problem = pixels_problem(name, colorspace)
    if problem:
        raise ValueError(problem)
    if name in RGB_CHANNELS:
        return np.ascontiguousarray(frame.to_ndarray(channel_last=True)[..., RGB_CHANNELS[name]])  # no conversion
    bits, subsampling = YCBCR_FORMATS[name]
    dtype = np.dtype(np.uint8 if bits == 8 else "<u2")
    y, cb, cr = _plane(frame.planes[0], dtype)[..., 0], None, None
    if name == "nv12":
        uv = _plane(frame.planes[1], dtype, 2)
        cb, cr = uv[..., 0], uv[..., 1]
    elif name != "gray":
        cb, cr = _plane(frame.planes[1], dtype)[..., 0], _plane(frame.planes[2], dtype)[..., 0]
    full = frame.color_range == FULL_RANGE or (
        frame.color_range != LIMITED_RANGE and (name.startswith("yuvj") or name == "gray"))
    return ycbcr_to_rgb(y, cb, cr, MATRICES.get(colorspace, BT601), bits, full, subsampling)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB (H x W x 3 uint8, even sizes) as yuv420p planes stacked the way PyAV takes them ((H * 3 / 2) x W): BT.601,
    limited range, each chroma sample the mean of its 2 x 2 block. The inverse of ``frame_rgb`` for such frames."""
    height, width = rgb.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sizes, not {width}x{height}")
    kr, kb = BT601
    x = rgb.astype(np.float64) / 255.0
    y = kr * x[..., 0] + (1.0 - kr - kb) * x[..., 1] + kb * x[..., 2]
    pb, pr = (x[..., 2] - y) / (2 * (1 - kb)), (x[..., 0] - y) / (2 * (1 - kr))

    def block_mean(c: np.ndarray) -> np.ndarray:
        return (c[0::2, 0::2] + c[0::2, 1::2] + c[1::2, 0::2] + c[1::2, 1::2]) / 4

    planes = (_to_bytes(16 + 219 * y), _to_bytes(128 + 224 * block_mean(pb)), _to_bytes(128 + 224 * block_mean(pr)))
    return np.concatenate([plane.ravel() for plane in planes]).reshape(-1, width)


def yuv420p_frame(image: Image.Image) -> Any:
    """An RGB image as the encoder's yuv420p frame (``rgb_to_yuv420p``), tagged BT.601 limited range."""
    av = _av()
    frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(np.asarray(image.convert("RGB"))), format="yuv420p")
    frame.colorspace, frame.color_range = SMPTE170M, LIMITED_RANGE
    return frame


def write_video(path: str | Path, frames: list[Image.Image], fps: int, record: dict[str, Any] | None = None,
                quality: int = 17) -> Path:
    """Write RGB frames as H.264 (yuv420p, CRF ``quality``; 0 is lossless) atomically, tagged BT.601 limited range;
    ``record`` (JSON data) goes in the container's ``comment`` metadata, where ``read_video_record`` finds it. The
    same frames give the same file (``yuv420p_frame``, one encoder thread, ``X264_PARAMS``)."""
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
            options = {"crf": str(quality), "x264-params": X264_PARAMS} if codec == "libx264" else {}
            stream = container.add_stream(codec, rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.colorspace, stream.codec_context.color_range = SMPTE170M, LIMITED_RANGE
            stream.codec_context.thread_count = 1
            for image in frames:
                for packet in stream.encode(yuv420p_frame(image)):
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
