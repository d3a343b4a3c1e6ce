"""``Request.hidiffusion`` from every surface: the API runs exactly the hooks of ``hidiffusion()`` for the request's
mode, steps and seed; the CLI flag, PNG metadata (``--from``), sweep, batch job field, UI checkbox and the batching
key carry it; what HiDiffusion cannot act on (a compiled UNet, a family without its settings) is one line.

Small sizes and steps at which it acts: 128 px make MSW-MSA's window shifts non-zero on the tiny SDXL, 3 steps run
RAU-Net's pooled phase at the first step, 7 steps make every switching-step variant differ.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.app.batch import read_jobs, run_batch
from instantstyle.app.cli import main
from instantstyle.core.plan import batch_key
from instantstyle.core.preflight import ModelInfo, check
from instantstyle.core.request import read_png_request
from instantstyle.families import family_named
from instantstyle.loading.runtime import Runtime
from instantstyle.modes.hidiffusion import denoising_calls, hidiffusion, hooks_on

from .conftest import pixels, with_resources

HIRES = {"steps": 3, "width": 128, "height": 128}
NO_HIDIFFUSION = replace(family_named("sdxl"), name="dit", features={})  # a family without HiDiffusion settings


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def model_flags(tiny) -> list[str]:
    return ["--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", tiny.style_image, "--prompt", "a cat",
            "--steps", "3", "--width", "128", "--height", "128", "--device", "cpu"]


def image(path: Path) -> np.ndarray:
    return pixels(Image.open(path))


# --- the API -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, variant", [
    ({}, {}),
    ({"init_image": "init", "strength": 0.8}, {}),  # 5 of 7 steps run: the switching steps of 5 UNet calls
    ({"init_image": "init", "mask": "left"}, {"inpaint": True}),
    ({"control": "canny", "control_image": "init"}, {"text_controlnet": True}),
], ids=["text", "img2img", "inpaint", "controlnet"])
def test_a_hidiffusion_request_runs_the_hooks_for_its_mode_steps_and_seed(sdxl, tiny, modes, changes, variant):
    files = {"init": modes.init_image, "left": modes.left_mask}
    fields = {k: str(files[v]) if isinstance(v, str) and v in files else v for k, v in changes.items()}
    if "control" in fields:
        fields["controlnet"] = str(modes.sdxl_controlnet)
    request = Request("a cat", style=str(tiny.style_image), steps=7, width=64, height=64, seed=9, **fields)
    made = sdxl(request, hidiffusion=True)
    calls = denoising_calls(sdxl.pipe.scheduler, 7, made.request.strength)
    with hidiffusion(sdxl.pipe.unet, "sdxl", steps=calls, seed=9, **variant) as run:
        by_hand = sdxl(request)
    assert made.request.hidiffusion and len(run.phases) == calls and set(run.phases) - {"plain"}
    assert (pixels(made.images[0]) == pixels(by_hand.images[0])).all()


def test_a_hidiffusion_request_changes_the_image_and_leaves_the_unet_as_it_was(sdxl, tiny):
    request = Request("a cat", style=str(tiny.style_image), seed=4, **HIRES)
    before = pixels(sdxl(request).images[0])
    during = pixels(sdxl(request, hidiffusion=True).images[0])
    assert np.abs(during - before).mean() > 1
    assert (pixels(sdxl(request).images[0]) == before).all()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sdxl.pipe.unet.modules())
    assert hooks_on(sdxl.pipe.unet) == 0


def test_batched_hidiffusion_requests_each_get_the_image_of_their_own_run(sdxl, tiny):
    first = Request("a cat", style=str(tiny.style_image), seed=1, hidiffusion=True, **HIRES)
    second = first.replace(prompt="a dog", seed=2, num_images=2)
    calls: list[int] = []
    hook = sdxl.pipe.unet.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        results = sdxl.generate_many([first, second])
    finally:
        hook.remove()
    assert calls == [6] * HIRES["steps"]  # one call per step: 3 images, CFG doubles the batch
    for request, result in zip([first, second], results, strict=True):
        alone = sdxl(request).images
        assert all(np.abs(pixels(a) - pixels(b)).max() <= 2 for a, b in zip(alone, result.images, strict=True))
    # The window shifts matter at this size: the second request with the first one's shifts is another image.
    with hidiffusion(sdxl.pipe.unet, "sdxl", steps=HIRES["steps"], seed=1):
        borrowed = sdxl(second.replace(hidiffusion=False)).images[0]
    assert np.abs(pixels(borrowed) - pixels(results[1].images[0])).mean() > 1


def test_requests_with_and_without_hidiffusion_never_share_a_call(tiny):
    request = Request("a cat", style=str(tiny.style_image), seed=1)
    assert batch_key(request) != batch_key(request.replace(hidiffusion=True))


def test_hidiffusion_must_be_true_or_false():
    with pytest.raises(UserError, match="^hidiffusion must be true or false, got 'yes'$"):
        Request.from_dict({"prompt": "a cat", "style": ["s.png"], "hidiffusion": "yes"})


def test_a_family_without_hidiffusion_settings_is_refused_in_one_line_before_anything_changes(sdxl, tiny):
    request = Request("a cat", style=str(tiny.style_image), hidiffusion=True)
    message = (r"^--hidiffusion works on the UNet models it has settings for \(sd15, sdxl\), not on dit: its RAU-Net "
               "and MSW-MSA change")
    with pytest.raises(UserError, match=message):
        check(request, Runtime(), ModelInfo(NO_HIDIFFUSION))
    check(request, Runtime(), ModelInfo(family_named("sd15")))
    check(request.replace(hidiffusion=False), Runtime(), ModelInfo(NO_HIDIFFUSION))
    scheduler = sdxl.pipe.scheduler
    with pytest.raises(UserError, match=message):
        with_resources(sdxl, family=NO_HIDIFFUSION)(request.replace(scheduler="ddim"))
    assert sdxl.pipe.scheduler is scheduler  # refused before the request's scheduler was set


def test_a_compiled_unet_is_refused_by_the_runtime_check(tiny):
    request = Request("a cat", style=(str(tiny.style_image),), hidiffusion=True)
    with pytest.raises(UserError, match=r"^--hidiffusion cannot act on a compiled UNet: drop --compile"):
        check(request, Runtime(compile_backend="inductor"))
    check(request, Runtime())
    check(request.replace(hidiffusion=False), Runtime(compile_backend="inductor"))


# --- the command line ----------------------------------------------------------------------------------------------


def test_generate_from_a_hidiffusion_png_reproduces_it_exactly(tiny, tmp_path):
    made = cli("generate", *model_flags(tiny), "--seed", "5", "--hidiffusion", "-o", tmp_path / "a.png")
    assert made.exit_code == 0, made.output
    assert read_png_request(tmp_path / "a.png").hidiffusion
    again = cli("generate", "--from", tmp_path / "a.png", "--device", "cpu", "-o", tmp_path / "b.png")
    assert again.exit_code == 0, again.output
    assert (image(tmp_path / "a.png") == image(tmp_path / "b.png")).all()
    plain = cli("generate", "--from", tmp_path / "a.png", "--no-hidiffusion", "--device", "cpu",
                "-o", tmp_path / "c.png")
    assert plain.exit_code == 0, plain.output
    assert not read_png_request(tmp_path / "c.png").hidiffusion
    assert np.abs(image(tmp_path / "a.png") - image(tmp_path / "c.png")).mean() > 1


def test_generate_with_hidiffusion_and_compile_is_one_line_before_the_model_loads(tiny, tmp_path):
    result = cli("generate", *model_flags(tiny), "--model", tmp_path / "no-such-model", "--hidiffusion", "--compile",
                 "-o", tmp_path / "a.png")
    assert result.exit_code == 2
    assert result.output.strip() == ("error: --hidiffusion cannot act on a compiled UNet: drop --compile "
                                     "(or --hidiffusion)")


def test_sweep_with_hidiffusion_makes_the_cells_of_generate_with_hidiffusion(sdxl, tiny, tmp_path):
    swept = cli("sweep", *model_flags(tiny), "--seed", "5", "--hidiffusion", "--blocks", "style", "--scale", "0.5",
                "-o", tmp_path / "sheet.png")
    assert swept.exit_code == 0, swept.output
    cell = tmp_path / "sheet-style-s0.5.png"
    request = read_png_request(cell)
    assert request.hidiffusion and request.scale == 0.5
    assert (image(cell) == pixels(sdxl(request).images[0])).all()


# --- batch jobs ----------------------------------------------------------------------------------------------------


def test_hidiffusion_jobs_equal_generate_and_never_share_a_call_with_plain_jobs(sdxl, tiny, tmp_path):
    style = str(tiny.style_image)
    rows = [{"id": "hd-1", "prompt": "a cat", "seed": 1, "hidiffusion": True},
            {"id": "hd-2", "prompt": "a dog", "seed": 2, "hidiffusion": True},
            {"id": "plain", "prompt": "a cow", "seed": 3}]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({**row, "style": style, **HIRES}) + "\n" for row in rows))
    result = cli("batch", jobs, "-o", tmp_path / "out", "--batch-size", "3", "--model", tiny.sdxl, "--adapter",
                 tiny.sdxl_adapter, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    entries = {e["id"]: e for e in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert [entries[r["id"]]["timings"]["batch_images"] for r in rows] == [2, 2, 1]
    for row in rows:
        made = tmp_path / "out" / f"{row['id']}.png"
        request = read_png_request(made)
        assert request.hidiffusion == row.get("hidiffusion", False)
        assert np.abs(image(made) - pixels(sdxl(request).images[0])).max() <= 2, row["id"]


def test_a_csv_hidiffusion_cell_is_true_or_false(tiny, tmp_path):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"prompt,style,hidiffusion\na,{tiny.style_image},true\nb,{tiny.style_image},No\n"
                    f"c,{tiny.style_image},\nd,{tiny.style_image},maybe\n")
    read = read_jobs(jobs)
    assert [job.request.hidiffusion for job in read.jobs] == [True, False, False]
    assert read.problems == ["jobs.csv line 5: hidiffusion must be true or false, got 'maybe'"]


def test_a_batch_with_compile_skips_hidiffusion_jobs_as_bad_lines(tiny, tmp_path):
    problems: list[str] = []
    jobs = [{"prompt": "a cat", "style": str(tiny.style_image), "hidiffusion": True}]
    with pytest.raises(UserError, match="no runnable jobs"):
        run_batch(jobs, tmp_path / "out", runtime=Runtime(device="cpu", compile_backend="inductor"),
                  on_problem=problems.append)
    assert problems == ["job 1: --hidiffusion cannot act on a compiled UNet: drop --compile (or --hidiffusion)"]


# --- the web UI ----------------------------------------------------------------------------------------------------


def test_the_ui_checkbox_becomes_the_request_field_and_comes_back(sdxl, tiny, tmp_path):
    ui = pytest.importorskip("instantstyle.app.ui", reason="the web UI needs gradio")
    work = ui.Workdir(tmp_path / "ui")
    values = {f.name: f.default for f in ui.FORM} | {"style": [str(tiny.style_image)], "prompt": "a cat",
                                                     "hidiffusion": True}
    request = ui.form_request(work, values)
    assert request.hidiffusion
    restored, _ = ui.form_values(sdxl, work, request)
    assert restored[ui.FIELDS.index("hidiffusion")] is True
    compiled = with_resources(sdxl, runtime=sdxl.resources.runtime.replace(compile_backend="inductor"))
    app = ui.App(ui.PipelineHolder(compiled), work)
    with pytest.raises(UserError, match="cannot act on a compiled UNet"):
        app.generate(values, lambda *args, **kwargs: None)
