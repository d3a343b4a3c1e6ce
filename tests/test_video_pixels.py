"""Video pixels: colour converted in numpy (never by libswscale), the same bytes whatever memory holds, in this process
and in fresh ones, the fixture clip lossless, and one line for pixels instantstyle does not convert."""

import hashlib
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from instantstyle import UserError
from instantstyle.files.video import (
    frame_rgb,
    probe_clip,
    read_clip,
    rgb_to_yuv420p,
    write_video,
    ycbcr_to_rgb,
    yuv420p_frame,
)
from instantstyle.testing.video import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, clip_frames, write_raw_clip

#: glibc fills memory it hands out with the complement of this byte and memory freed with the byte itself.
PERTURB = ("0", "85", "170", "255")


def in_fresh_process(code: str, perturb: str) -> str:
    """Run ``code`` (which prints its result) in a new Python with freed memory filled by ``perturb``."""
    env = {**os.environ, "MALLOC_PERTURB_": perturb}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def decoded(path) -> np.ndarray:
    clip = read_clip(path, CLIP_FRAMES, 1 / CLIP_FPS)
    return np.stack([np.asarray(frame) for frame in clip.frames])


def fill_freed_memory(byte: int) -> None:
    """Allocate and free buffers of many sizes filled with ``byte``, so the allocator's free lists hold garbage."""
    buffers = [np.full(size, byte, np.uint8) for size in (64, 256, 1024, 4096, 8192, 20_000, 70_000) * 40]
    del buffers


# --- the same bytes whatever memory holds ---------------------------------------------------------------------------
def test_reading_a_clip_gives_the_same_bytes_whatever_freed_memory_holds(video_models):
    first = decoded(video_models.clip)
    for byte in (0x00, 0xFF, 0xA5):
        fill_freed_memory(byte)
        assert np.array_equal(decoded(video_models.clip), first)


def test_reading_a_clip_gives_the_same_bytes_in_fresh_processes(video_models):
    code = (f"import hashlib, numpy as np; from instantstyle.files.video import read_clip\n"
            f"clip = read_clip({str(video_models.clip)!r}, {CLIP_FRAMES}, {1 / CLIP_FPS})\n"
            f"print(hashlib.sha256(np.stack([np.asarray(f) for f in clip.frames]).tobytes()).hexdigest())")
    here = hashlib.sha256(decoded(video_models.clip).tobytes()).hexdigest()
    assert {in_fresh_process(code, perturb) for perturb in PERTURB} == {here}


def test_writing_a_video_gives_the_same_file_in_fresh_processes(tmp_path):
    """64 px wide: x264's macroblock tree (off in ``write_video``) made such files differ with freed memory."""
    frames = np.stack(clip_frames(CLIP_SIZE, 6, seed=3))
    np.save(tmp_path / "frames.npy", frames)
    code = (f"import hashlib, numpy as np; from PIL import Image; from instantstyle.files.video import write_video\n"
            f"frames = [Image.fromarray(a) for a in np.load({str(tmp_path / 'frames.npy')!r})]\n"
            f"path = write_video({str(tmp_path / 'out.mp4')!r}, frames, 8)\n"
            f"print(hashlib.sha256(open(path, 'rb').read()).hexdigest())")
    assert len({in_fresh_process(code, perturb) for perturb in PERTURB}) == 1


# --- the fixture clip -------------------------------------------------------------------------------------------------
def test_the_fixture_clip_decodes_to_exactly_the_frames_written(video_models):
    """Lossless H.264: what comes back is the written frames' own yuv420p conversion, on any machine."""
    written = [frame_rgb(yuv420p_frame(Image.fromarray(a))) for a in clip_frames(CLIP_SIZE, CLIP_FRAMES)]
    assert np.array_equal(decoded(video_models.clip), np.stack(written))


def test_a_written_video_is_tagged_bt601_limited_range(tmp_path):
    path = write_video(tmp_path / "out.mp4", [Image.new("RGB", (64, 64), (200, 30, 90))] * 2, 8)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (6, 1)
    assert np.abs(frame_rgb(frame).astype(int) - (200, 30, 90)).max() <= 2


# --- the conversion ------------------------------------------------------------------------------------------------
#: BT.601 limited-range Y'CbCr of black, white and the primaries (Rec. 601's tables, 8 bits).
BT601_COLOURS = [((16, 128, 128), (0, 0, 0)), ((235, 128, 128), (255, 255, 255)), ((81, 90, 240), (255, 0, 0)),
                 ((145, 54, 34), (0, 255, 0)), ((41, 240, 110), (0, 0, 255))]


def flat_frame(format: str, y, cb, cr, size=(4, 4), colorspace=None, color_range=None):
    """An 8-bit frame of one flat Y'CbCr colour (nv12: Cb and Cr interleaved in the second plane)."""
    frame = av.VideoFrame(*size, format)
    values = (y, (cb, cr)) if format == "nv12" else (y, cb, cr)
    for plane, value in zip(frame.planes, values, strict=True):
        np.ndarray((plane.buffer_size // np.size(value), np.size(value)), np.uint8, buffer=memoryview(plane))[:] = value
    if colorspace is not None:
        frame.colorspace = colorspace
    if color_range is not None:
        frame.color_range = color_range
    return frame


@pytest.mark.parametrize("format", ["yuv420p", "yuv422p", "yuv444p", "nv12"])
@pytest.mark.parametrize(("ycbcr", "rgb"), BT601_COLOURS)
def test_untagged_frames_are_bt601_limited_range(format, ycbcr, rgb):
    assert np.abs(frame_rgb(flat_frame(format, *ycbcr)).astype(int) - rgb).max() <= 1


@pytest.mark.parametrize(("ycbcr", "rgb"), BT601_COLOURS)
def test_written_frames_are_bt601_limited_range(ycbcr, rgb):
    planes = rgb_to_yuv420p(np.zeros((4, 4, 3), np.uint8) + np.array(rgb, np.uint8))
    assert (planes[:4].max(), planes[4:5, :4].max(), planes[5:6, :4].max()) == ycbcr
    assert (planes[:4].min(), planes[4:5, :4].min(), planes[5:6, :4].min()) == ycbcr


def test_written_luma_is_pils_bt601_luma_in_limited_range():
    """PIL's RGB -> YCbCr is BT.601 at full range (JPEG's): the same luma, scaled to 16..235."""
    rgb = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    pil_luma = np.asarray(Image.fromarray(rgb).convert("YCbCr"))[..., 0].astype(float)
    assert np.abs(rgb_to_yuv420p(rgb)[:16] - (16 + pil_luma * 219 / 255)).max() <= 1.5


def test_full_range_bt601_frames_read_as_pil_reads_ycbcr():
    """A yuvj444p frame holding PIL's (JPEG's) YCbCr of a picture reads as PIL converts it back, within rounding."""
    rgb = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(ycbcr.transpose(2, 0, 1)), format="yuvj444p")
    pil = np.asarray(Image.fromarray(ycbcr, "YCbCr").convert("RGB")).astype(int)
    assert np.abs(frame_rgb(frame).astype(int) - pil).max() <= 1


def test_a_picture_written_losslessly_reads_back_within_two_levels(tmp_path):
    """Colours in 2 x 2 blocks (what 4:2:0 keeps): only the 8-bit Y'CbCr rounding is lost, both ways."""
    blocks = np.random.default_rng(6).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    picture = np.repeat(np.repeat(blocks, 2, 0), 2, 1)
    path = write_video(tmp_path / "out.mp4", [Image.fromarray(picture)] * 2, 8, quality=0)
    back = np.asarray(read_clip(path, 1, 0.125).frames[0])
    assert np.abs(back.astype(int) - picture).max() <= 2


def test_a_bt709_tag_uses_the_bt709_matrix():
    red709 = (63, 102, 240)
    assert np.abs(frame_rgb(flat_frame("yuv444p", *red709, colorspace=1)).astype(int) - (255, 0, 0)).max() <= 1
    assert np.abs(frame_rgb(flat_frame("yuv444p", *red709)).astype(int) - (255, 0, 0)).max() > 10


@pytest.mark.parametrize(("format", "color_range"), [("yuv420p", 2), ("yuvj420p", None)])
def test_full_range_frames_use_the_whole_byte(format, color_range):
    assert frame_rgb(flat_frame(format, 0, 128, 128, color_range=color_range)).max() == 0
    assert frame_rgb(flat_frame(format, 255, 128, 128, color_range=color_range)).min() == 255


def test_grey_frames_are_full_range_grey():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(frame_rgb(av.VideoFrame.from_ndarray(grey, format="gray")), np.stack([grey] * 3, -1))


@pytest.mark.parametrize("colorspace", [None, 1, 9])
def test_the_matrices_agree_with_ffmpeg_on_unsubsampled_frames(colorspace):
    """The same numbers as libswscale where no chroma is interpolated (1 level of rounding apart)."""
    rng = np.random.default_rng(0)
    frame = av.VideoFrame.from_ndarray(rng.integers(16, 236, (3, 32, 48), dtype=np.uint8), format="yuv444p")
    if colorspace is not None:
        frame.colorspace = colorspace
    ours, ffmpeg = frame_rgb(frame).astype(int), frame.to_ndarray(format="rgb24").astype(int)
    assert np.abs(ours - ffmpeg).max() <= 1


def test_each_chroma_sample_covers_its_block_odd_sizes_too():
    rng = np.random.default_rng(1)
    y, cb, cr = (rng.integers(16, 236, shape, dtype=np.uint8) for shape in ((3, 5), (2, 3), (2, 3)))
    frame = av.VideoFrame(5, 3, "yuv420p")
    for plane, samples in zip(frame.planes, (y, cb, cr), strict=True):
        np.ndarray((plane.height, plane.line_size), np.uint8, buffer=memoryview(plane))[:, : plane.width] = samples
    spread = [np.repeat(np.repeat(c, 2, 0), 2, 1)[:3, :5] for c in (cb, cr)]
    assert np.array_equal(frame_rgb(frame), ycbcr_to_rgb(y, *spread, (0.299, 0.114)))


def test_ten_bit_frames_are_rounded_to_eight_bits():
    frame = av.VideoFrame(4, 4, "yuv420p10le")
    for plane, value in zip(frame.planes, (81 * 4, 90 * 4, 240 * 4), strict=True):
        np.ndarray((plane.buffer_size // 2,), "<u2", buffer=memoryview(plane))[:] = value
    assert np.array_equal(frame_rgb(frame), frame_rgb(flat_frame("yuv420p", 81, 90, 240)))


def test_rgb_frames_are_read_as_they_are():
    """rgb24 (APNG), bgra (GIF), bgr24 and planar gbrp (lossless RGB H.264): their samples, alpha dropped."""
    rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    bgra = np.concatenate([rgb[..., ::-1], np.full((6, 8, 1), 255, np.uint8)], -1)
    for array, format in ((rgb, "rgb24"), (rgb[..., ::-1], "bgr24"), (bgra, "bgra"), (rgb, "gbrp")):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=format)
        assert np.array_equal(frame_rgb(frame), rgb), format


# --- what it does not convert: one line ------------------------------------------------------------------------------
@pytest.mark.parametrize("format", ["yuyv422", "pal8", "yuv440p", "yuva420p", "p010le", "rgb48le"])
def test_a_pixel_format_it_does_not_convert_is_a_value_error_naming_it(format):
    with pytest.raises(ValueError, match=f"its frames are {format} pixels"):
        frame_rgb(av.VideoFrame(4, 4, format))


def test_an_unknown_colour_matrix_is_refused():
    with pytest.raises(ValueError, match="colour matrix"):
        frame_rgb(flat_frame("yuv420p", 81, 90, 240, colorspace=8))  # YCgCo


@pytest.mark.parametrize("read", [probe_clip, lambda path: read_clip(path, 2, 0.125)])
def test_a_clip_in_a_pixel_format_it_does_not_convert_is_one_line(tmp_path, read):
    with pytest.raises(UserError, match="yuyv422 pixels") as err:
        read(write_raw_clip(tmp_path / "webcam.nut"))
    assert "\n" not in str(err.value) and "ffmpeg -i" in str(err.value)

