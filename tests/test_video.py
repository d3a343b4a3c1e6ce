"""Video (AnyV2V on I2VGen-XL): the same latents and frames as AnyV2V's own scripts on the fixtures, injection off
equals diffusers' plain I2VGen-XL, chained windows, frame sampling, and a pipeline left as it was."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from instantstyle import Request, UserError
from instantstyle.core.video_options import (
    ANYV2V_CONTROL_SCALE,
    SOURCE_FRAME,
    VideoOptions,
    VideoRequest,
)
from instantstyle.files.video import read_clip
from instantstyle.modes.video import (
    Window,
    decode_frames,
    plan_memory,
    read_source,
    sample_with_injection,
    stylize_video,
    windows,
)

REFERENCE = Path(__file__).parent / "data" / "anyv2v"
CASES = ("defaults", "full_injection")
#: The issue's tolerance: 0.5 / 255 mean, 2.5 / 255 max (pixels on 0..255; latents in their own units, scaled alike).
MEAN, MAX = 0.5, 2.5


def reference(case: str) -> tuple[dict, dict]:
    data = np.load(REFERENCE / f"{case}.npz")
    return {k: data[k] for k in data.files}, json.loads(str(data["config"]))


def options_of(config: dict, **changes) -> VideoOptions:
    """The video options of a reference case (the clip read at its frame rate, from its start)."""
    return VideoOptions(
        frames=config["n_frames"], width=config["width"], height=config["height"], fps=config["fps"],
        inversion_steps=config["inversion_steps"], steps=config["steps"], conv_injection=config["conv"],
        spatial_injection=config["spatial"], temporal_injection=config["temporal"], guidance=config["cfg"],
        init_step=config["init_step"], prompt=config["prompt"], negative_prompt=config["negative_prompt"],
        seed=config["seed"], **changes,
    )


def assert_close(ours: np.ndarray, theirs: np.ndarray, scale: float = 1.0) -> None:
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)) / scale
    assert diff.mean() <= MEAN and diff.max() <= MAX, (diff.mean(), diff.max())


def frames_of(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


@pytest.fixture(scope="module", params=CASES)
def anyv2v_case(request, i2vgen, video_models):
    """One reference case run through ``stylize_video`` with the same edited first frame: (result, reference)."""
    data, config = reference(request.param)
    options = options_of(config, first_frame=str(video_models.edited_frame))
    result = stylize_video(video_models.clip, Request("unused", style="style.png"), options, video_model=i2vgen,
                           keep_latents=True)
    return result, data


def test_the_clip_decodes_to_the_frames_anyv2v_was_given(anyv2v_case):
    result, data = anyv2v_case
    assert np.array_equal(frames_of(result.source_frames), data["source"])


def test_inverted_latents_equal_anyv2v_inversion_script(anyv2v_case):
    result, data = anyv2v_case
    inversion = result.inversions[0]
    assert inversion.timesteps == data["timesteps"].tolist()
    ours = np.stack([inversion.latents[t].numpy() for t in inversion.timesteps])
    assert_close(ours, data["latents"], scale=1 / 255)


def test_frames_equal_anyv2v_pnp_edit_script(anyv2v_case):
    result, data = anyv2v_case
    assert_close(frames_of(result.frames), data["frames"])


def test_injection_changes_the_frames(anyv2v_case, i2vgen, video_models):
    """The reference frames are not what sampling without injection gives: the comparison above sees injection."""
    result, data = anyv2v_case
    options = result.video.options.replace(conv_injection=0.0, spatial_injection=0.0, temporal_injection=0.0)
    with torch.no_grad():
        latents = sample_with_injection(i2vgen, result.inversions[0], result.first_frame, result.source_frames[0],
                                        len(result.frames), (options.width, options.height), options,
                                        options.prompt, options.seed)
        plain = frames_of(decode_frames(i2vgen, latents)).astype(np.float64)
    assert np.abs(plain - data["frames"]).mean() > 10 * MEAN


def plain_i2vgen(video_models):
    """diffusers' own I2VGenXLPipeline on the fixture (with the one line transformers 5 needs: CLIPTextModel lost
    its ``text_model`` wrapper, which the pipeline's ``clip_skip`` path reads)."""
    from diffusers import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(str(video_models.i2vgen))
    pipe.text_encoder.text_model = types.SimpleNamespace(final_layer_norm=pipe.text_encoder.final_layer_norm)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_no_injection_equals_plain_i2vgen_from_the_inverted_latents(i2vgen, video_models):
    options = VideoOptions(frames=4, width=64, height=64, inversion_steps=3, steps=3, conv_injection=0.0,
                           spatial_injection=0.0, temporal_injection=0.0, seed=5, prompt="a dog",
                           first_frame=str(video_models.edited_frame))
    ours = stylize_video(video_models.clip, Request("a dog", style="s.png"), options, video_model=i2vgen,
                         keep_latents=True)
    inversion = ours.inversions[0]
    torch.manual_seed(5)  # the plain pipeline samples the first frame's VAE latents from the global generator
    plain = plain_i2vgen(video_models)(
        prompt="a dog", image=ours.first_frame, height=64, width=64, target_fps=options.fps, num_frames=4,
        num_inference_steps=3, guidance_scale=options.guidance, negative_prompt=options.negative_prompt,
        latents=inversion.latents[max(inversion.timesteps)],
    ).frames[0]
    assert_close(frames_of(ours.frames), frames_of(plain))


@pytest.mark.parametrize("branches", [2, 1])
def test_branches_run_apart_give_the_frames_of_one_batch(anyv2v_case, i2vgen, branches):
    import dataclasses

    result, data = anyv2v_case
    options = result.video.options
    apart = dataclasses.replace(i2vgen, branches_per_call=branches)
    with torch.no_grad():
        latents = sample_with_injection(apart, result.inversions[0], result.first_frame, result.source_frames[0],
                                        len(result.frames), (options.width, options.height), options,
                                        options.prompt, options.seed)
        frames = frames_of(decode_frames(apart, latents))
    assert_close(frames, frames_of(result.frames))


def hooks_and_processors(pipe) -> tuple:
    modules = list(pipe.unet.modules())
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules),
            {name: type(p) for name, p in pipe.unet.attn_processors.items()}, dict(pipe.scheduler.config),
            id(pipe.scheduler))


def test_a_run_leaves_the_pipeline_as_it_was(i2vgen, video_models):
    before = hooks_and_processors(i2vgen.pipe)
    options = VideoOptions(frames=3, width=64, height=64, inversion_steps=2, steps=2, seed=1,
                           first_frame=str(video_models.edited_frame))
    stylize_video(video_models.clip, Request("a cat", style="s.png"), options, video_model=i2vgen)
    assert hooks_and_processors(i2vgen.pipe) == before


def test_a_run_stopped_while_sampling_leaves_no_hook(i2vgen, video_models):
    before = hooks_and_processors(i2vgen.pipe)

    def stop(phase, done, total):
        if phase == "sampling":
            raise KeyboardInterrupt

    options = VideoOptions(frames=3, width=64, height=64, inversion_steps=2, steps=2, seed=1,
                           first_frame=str(video_models.edited_frame))
    with pytest.raises(KeyboardInterrupt):
        stylize_video(video_models.clip, Request("a cat", style="s.png"), options, video_model=i2vgen,
                      on_progress=stop)
    assert hooks_and_processors(i2vgen.pipe) == before


def test_progress_reports_each_phase_of_each_window_in_order(i2vgen, video_models):
    seen = []
    options = VideoOptions(frames=5, window=3, width=64, height=64, inversion_steps=2, steps=2, seed=1,
                           first_frame=str(video_models.edited_frame))
    stylize_video(video_models.clip, Request("a cat", style="s.png"), options, video_model=i2vgen,
                  on_progress=lambda phase, done, total: seen.append((phase, done, total)))
    window = [("inversion", 1, 2), ("inversion", 2, 2), ("sampling", 1, 2), ("sampling", 2, 2)]
    assert seen == [*window, *[("decoding", k, 3) for k in (1, 2, 3)], *window,
                    *[("decoding", k, 3) for k in (1, 2, 3)]]


# --- chained windows ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("frames", "size", "expected"), [
    (16, 16, [(0, 16)]),
    (6, 4, [(0, 4), (3, 6)]),
    (31, 16, [(0, 16), (15, 31)]),
    (32, 16, [(0, 16), (15, 31), (30, 32)]),
    (5, 2, [(0, 2), (1, 3), (2, 4), (3, 5)]),
])
def test_windows_start_on_the_last_frame_of_the_previous_one(frames, size, expected):
    assert windows(frames, size) == [Window(*w) for w in expected]


def test_a_later_window_is_the_clip_from_there_with_the_last_frame_made_as_its_first(i2vgen, video_models, tmp_path):
    options = VideoOptions(frames=6, window=4, width=64, height=64, inversion_steps=2, steps=2, seed=2,
                           first_frame=str(video_models.edited_frame))
    request = Request("a cat", style="s.png")
    chained = stylize_video(video_models.clip, request, options, video_model=i2vgen)
    assert len(chained.frames) == 6 and chained.windows == 2
    chained.frames[3].save(tmp_path / "last.png")
    alone = stylize_video(video_models.clip, request, options.replace(
        frames=3, start=chained.times[3], first_frame=str(tmp_path / "last.png")), video_model=i2vgen)
    assert np.array_equal(frames_of(alone.frames[1:]), frames_of(chained.frames[4:]))


# --- frames taken from the clip ----------------------------------------------------------------------------------
def test_frames_are_taken_every_one_over_fps_seconds(video_models):
    clip = read_clip(video_models.clip, 4, 1 / 4)
    assert clip.times == [0.0, 0.25, 0.5, 0.75]


def test_a_window_starts_at_the_frame_on_screen_at_start(video_models):
    clip = read_clip(video_models.clip, 3, 1 / 8, start=0.3)
    assert clip.times == [0.25, 0.375, 0.5]


def test_duration_spreads_the_frames_evenly(video_models):
    source = read_source(video_models.clip, VideoOptions(frames=3, duration=1.5, width=64, height=64))
    assert source.times == [0.0, 0.5, 1.0]


def test_a_clip_ending_early_gives_the_frames_it_has(video_models):
    source = read_source(video_models.clip, VideoOptions(frames=40, width=64, height=64))
    assert len(source.frames) == 12


def test_frames_are_centre_cropped_to_the_video_size(video_models):
    source = read_source(video_models.wide_clip, VideoOptions(frames=2, width=64, height=64))
    whole = read_clip(video_models.wide_clip, 1, 1.0).frames[0]  # 96 x 64
    assert source.frames[0].size == (64, 64)
    assert np.abs(np.asarray(source.frames[0], float) - np.asarray(whole.crop((16, 0, 80, 64)), float)).mean() < 1


# --- the options and the record ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"frames": 1}, {"width": 500}, {"height": 32}, {"steps": 0}, {"init_step": 50}, {"conv_injection": 1.5},
    {"temporal_injection": -0.1}, {"guidance": float("nan")}, {"fps": 0}, {"duration": 0.0}, {"start": -1.0},
    {"first_frame": ""}, {"seed": -1}, {"frames": True},
])
def test_options_refuse_values_that_cannot_make_a_video(bad):
    with pytest.raises(UserError):
        VideoOptions(**bad)


def test_a_job_line_with_a_clip_gets_anyv2v_first_frame_recipe():
    video = VideoRequest.from_dict({"video": "clip.mp4", "prompt": "a cat", "style": "ref.png"})
    assert video.clip == "clip.mp4" and video.options == VideoOptions()
    assert (video.request.control, video.request.control_image) == ("canny", SOURCE_FRAME)
    assert video.request.control_scale == ANYV2V_CONTROL_SCALE


def test_strength_without_an_init_image_restyles_the_clip_first_frame():
    video = VideoRequest.from_dict({"video": "clip.mp4", "prompt": "a cat", "style": "ref.png", "strength": 0.6})
    assert (video.request.init_image, video.request.control) == (SOURCE_FRAME, None)


def test_the_record_round_trips_through_json():
    video = VideoRequest.from_dict({"video": {"clip": "c.mp4", "frames": 32, "steps": 25, "inversion_steps": 50},
                                    "prompt": "a cat", "style": "ref.png:0.5", "seed": 4})
    assert VideoRequest.from_json(video.to_json()) == video


@pytest.mark.parametrize("line", [
    {"prompt": "a", "style": "s.png", "video": 3},
    {"prompt": "a", "style": "s.png", "video": {"frames": 4}},
    {"prompt": "a", "style": "s.png", "video": {"clip": "c.mp4", "colour": 1}},
])
def test_a_bad_video_field_is_one_line(line):
    with pytest.raises(UserError):
        VideoRequest.from_dict(line)


#: Parameters of the published ali-vilab/i2vgen-xl UNet and VAE (counted on the meta device by benchmarks/video.py).
I2VGEN_UNET_PARAMS, I2VGEN_VAE_PARAMS = 1_420_469_224, 83_653_863


def test_sixteen_frames_at_512_fit_a_24_gb_budget_in_one_batch():
    from instantstyle.testing.video import I2VGEN_UNET

    weights = 2 * (I2VGEN_UNET_PARAMS + I2VGEN_VAE_PARAMS)  # float16
    plan = plan_memory(weights, I2VGEN_UNET["block_out_channels"], 16, 512, 512, 2, 24 * 2**30)
    assert plan.branches_per_call == 3 and plan.estimate <= 24 * 2**30


def test_a_tighter_budget_runs_the_branches_one_at_a_time():
    from instantstyle.testing.video import I2VGEN_UNET

    weights = 2 * (I2VGEN_UNET_PARAMS + I2VGEN_VAE_PARAMS)
    plan = plan_memory(weights, I2VGEN_UNET["block_out_channels"], 16, 512, 512, 2, 7 * 2**30)
    assert plan.branches_per_call == 1 and plan.estimate <= 7 * 2**30


def test_a_budget_too_small_for_any_plan_is_one_line():
    from instantstyle.testing.video import I2VGEN_UNET

    with pytest.raises(UserError, match="memory-budget 5"):
        plan_memory(2 * (I2VGEN_UNET_PARAMS + I2VGEN_VAE_PARAMS), I2VGEN_UNET["block_out_channels"], 16, 512, 512,
                    2, 5 * 2**30)
