"""The video command: the files it writes, the record that reproduces them, scores, and one line (exit 2) for bad
input before any model loads."""

import contextlib
import io
import json

import av
import numpy as np
import pytest
from PIL import Image

from instantstyle.app.cli import entry
from instantstyle.files.video import frame_rgb, read_video_record, yuv420p_frame
from instantstyle.modes.video import PNG_VIDEO_KEY, read_video_request
from instantstyle.testing.video import write_raw_clip


def call(*args) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            entry([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), err.getvalue()


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame_rgb(frame) for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def flags(tiny, modes, video_models):
    """A fast video on the tiny fixtures: canny first frame (AnyV2V's recipe) on the tiny SDXL, 4 frames at 64 px."""
    return ["video", video_models.clip, "--style", tiny.style_image, "--prompt", "a cat", "--model", tiny.sdxl,
            "--adapter", tiny.sdxl_adapter, "--controlnet", modes.sdxl_controlnet, "--video-model",
            video_models.i2vgen, "--size", "64", "--frames", "4", "--steps", "2", "--inversion-steps", "2",
            "--first-frame-steps", "2", "--seed", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def made(flags, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-cli")
    code, out, err = call(*flags, "--score", "-o", folder / "out.mp4")
    assert code == 0, err
    return folder, out


def test_a_run_writes_the_video_its_first_frame_source_and_record(made):
    folder, out = made
    for name in ("out.mp4", "out.first.png", "out.json", "out.source.png", "out.scores.json"):
        assert (folder / name).is_file(), name
    frames = decoded(folder / "out.mp4")
    assert frames.shape == (4, 64, 64, 3)


def test_the_video_first_frame_png_and_json_carry_the_same_record(made):
    folder, _ = made
    record = (folder / "out.json").read_text().strip()
    assert read_video_record(folder / "out.mp4") == json.dumps(json.loads(record), sort_keys=True)
    assert Image.open(folder / "out.first.png").info[PNG_VIDEO_KEY] == record
    video = read_video_request(folder / "out.mp4")
    assert (video.request.prompt, video.options.seed, video.request.control) == ("a cat", 3, "canny")


def test_the_first_frame_reproduces_with_generate_from(made):
    folder, _ = made
    code, _, err = call("generate", "--from", folder / "out.first.png", "--device", "cpu", "-o", folder / "again.png")
    assert code == 0, err
    again, first = (np.asarray(Image.open(folder / name)) for name in ("again.png", "out.first.png"))
    assert np.array_equal(again, first)


def test_from_the_record_makes_the_same_video(made):
    folder, _ = made
    code, _, err = call("video", "--from", folder / "out.json", "--device", "cpu", "-o", folder / "again.mp4")
    assert code == 0, err
    assert np.array_equal(decoded(folder / "again.mp4"), decoded(folder / "out.mp4"))


def test_scores_are_printed_and_stored(made):
    folder, out = made
    scores = json.loads((folder / "out.scores.json").read_text())
    assert "temporal_consistency" in out
    assert len(scores["frames"]) == 4 and all(-1 <= f["clip_style"] <= 1 for f in scores["frames"])
    assert -1 <= scores["temporal_consistency"] <= 1


# --- bad input: one line, exit 2, before any model loads ----------------------------------------------------------
@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test (as exit 1 with this message, never the exit 2 a refusal gives)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded")

    monkeypatch.setattr("instantstyle.modes.video.VideoModel.from_pretrained", refuse)
    monkeypatch.setattr("instantstyle.core.pipeline.StylePipeline.from_pretrained", refuse)


def refused(flags, *changes, output) -> str:
    code, out, err = call(*flags, *changes, "-o", output)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def with_clip(flags, clip):
    return [flags[0], clip, *flags[2:]]


def test_a_file_that_is_not_a_video(flags, tmp_path, no_model_loads):
    (tmp_path / "notes.mp4").write_text("not a video")
    assert "not a readable video" in refused(with_clip(flags, tmp_path / "notes.mp4"), output=tmp_path / "o.mp4")


def test_a_codec_ffmpeg_cannot_decode(flags, video_models, tmp_path, no_model_loads):
    (tmp_path / "odd.mp4").write_bytes(video_models.clip.read_bytes().replace(b"avc1", b"zzzz"))
    assert "codec" in refused(with_clip(flags, tmp_path / "odd.mp4"), output=tmp_path / "o.mp4")


def test_a_clip_with_zero_frames(flags, tmp_path, no_model_loads):
    """A video stream whose sample data is missing (moov first, mdat cut off)."""
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(3):
            for packet in stream.encode(yuv420p_frame(Image.new("RGB", (64, 64)))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = whole.read_bytes()
    (tmp_path / "empty.mp4").write_bytes(data[: data.find(b"mdat") + 4])
    assert "has no frames" in refused(with_clip(flags, tmp_path / "empty.mp4"), output=tmp_path / "o.mp4")


def test_a_clip_in_a_pixel_format_instantstyle_does_not_convert(flags, tmp_path, no_model_loads):
    clip = write_raw_clip(tmp_path / "webcam.nut")
    assert "yuyv422 pixels" in refused(with_clip(flags, clip), output=tmp_path / "o.mp4")


def test_more_frames_than_the_frame_cap(flags, tmp_path, no_model_loads):
    assert "over the limit of 10" in refused(flags, "--frames", "20", "--max-frames", "10", output=tmp_path / "o.mp4")


def test_frames_over_the_pixel_cap(flags, video_models, tmp_path, no_model_loads):
    err = refused(with_clip(flags, video_models.wide_clip), "--max-pixels", "4096", output=tmp_path / "o.mp4")
    assert "96x64 frames are over the limit of 4,096 pixels" in err


@pytest.mark.parametrize("existing", ["o.mp4", "o.json", "o.first.png"])
def test_an_output_that_exists(flags, tmp_path, existing, no_model_loads):
    (tmp_path / existing).write_text("kept")
    assert "exists; pass --overwrite" in refused(flags, output=tmp_path / "o.mp4")
    assert (tmp_path / existing).read_text() == "kept"


@pytest.mark.parametrize(("changes", "message"), [
    (["--start", "9"], "no frame at or after 9 s"),
    (["--steps", "3", "--inversion-steps", "2"], "never reaches"),
    (["--size", "64x"], "--size"),
    (["--size", "100"], "multiple of 8"),
    (["--first-frame", "missing.png"], "first frame missing.png: no such file"),
    (["--conv-injection", "2"], "conv injection must be between 0 and 1"),
])
def test_bad_video_options(flags, tmp_path, changes, message, no_model_loads):
    assert message in refused(flags, *changes, output=tmp_path / "o.mp4")


def test_a_video_model_that_is_not_i2vgen_xl(flags, tiny, tmp_path, no_model_loads):
    err = refused(flags, "--video-model", tiny.sdxl, output=tmp_path / "o.mp4")
    assert "I2VGenXLPipeline" in err


def test_a_blank_video_model_is_one_line_not_the_working_folder(flags, tmp_path, no_model_loads):
    err = refused(flags, "--video-model", "", output=tmp_path / "o.mp4")
    assert "video model" in err and " .:" not in err


def test_a_refused_run_leaves_no_file(flags, tmp_path, no_model_loads):
    refused(flags, "--style", tmp_path / "missing.png", output=tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == []
