"""Every surface takes the SD3.5 and FLUX families as it takes SDXL: the web UI's form with its defaults,
batch jobs, sweeps and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.scores.scorers import Scorers

from .conftest import pixels

SIZE = {"steps": 2, "width": 64, "height": 64, "seed": 7}


def test_the_web_ui_form_with_its_defaults_makes_a_flux_image_with_the_default_blocks(flux, dit, tmp_path):
    from instantstyle.app import ui

    values = {f.name: f.default for f in ui.FORM}
    values.update(style=[str(dit.style_image)], prompt="a cat", randomize_seed=False, steps=2, width=64, height=64)
    app = ui.App(ui.PipelineHolder(flux), ui.Workdir(tmp_path / "ui"))
    gallery, files, made = app.generate(values, lambda *a, **k: None)
    request = json.loads(made)
    assert len(files) == 1 and request["blocks"] == "all" and request["true_cfg"] == 1.0
    from instantstyle.core.request import read_png_request

    restored, lost = ui.form_values(flux, app.work, read_png_request(files[0]))  # the PNG keeps the full request
    assert restored[ui.FIELDS.index("blocks")] == "all" and not lost


RESTYLE = ("restyle", "restyle_content_scale", "inversion_steps", "renoise_steps", "caption_model", "csd",
           "style_guidance", "content_guidance")
CSGO = ("content_adapter_scale",)  # CSGO's content tokens: only with a CSGO checkpoint (tests/test_ui.py)


@pytest.mark.parametrize(("family", "hidden"), [
    ("sdxl", {"true_cfg", *CSGO}),
    ("sd15", {"true_cfg", *CSGO}),
    ("sd3", {"hidiffusion", "scheduler", "composition", "composition_scale", "regions", "true_cfg", *RESTYLE, *CSGO,
             "content_prompt", "content_scale", "content_image",
             *(f"adapter_{k}{part}" for k in (1, 2) for part in ("", "_style", "_blocks", "_scale"))}),
    ("flux", {"hidiffusion", "scheduler", "composition", "composition_scale", "regions", *RESTYLE, *CSGO}),
])
def test_the_page_shows_only_the_fields_and_tabs_the_models_family_takes(family, hidden, request, tmp_path):
    """What each family's own check refuses is hidden: true CFG but on FLUX, HiDiffusion and restyling on the DiTs,
    and there samplers, regions and composition (no layout block measured); further adapters and content
    subtraction on SD3 (one adapter per model; SigLIP features share no space with a text tower)."""
    from instantstyle.app import ui
    from instantstyle.app.ui.page import _shown

    app = ui.App(ui.PipelineHolder(request.getfixturevalue(family)), ui.Workdir(tmp_path / "ui"))
    described = app.describe_pipeline()
    assert f"({family})" in described["line"]
    assert {name for name, shown in described["shown"].items() if not shown} == hidden
    tabs = [tab.name for tab in ui.TABS]
    updates = _shown(app, [], tabs)[1:]
    hidden_tabs = {name for name, update in zip(tabs, updates, strict=True) if update["visible"] is not True}
    assert hidden_tabs == ({"composition", "regions", "restyle"} | ({"adapters", "content"} if family == "sd3"
                                                                    else set())
                           if family in ("sd3", "flux") else set())


def test_a_restored_png_resets_the_fields_the_pages_model_does_not_take_and_says_so(flux, sdxl, dit, tmp_path):
    from instantstyle.app import ui
    from instantstyle.core.request import write_png

    made = Request("a cat", style=str(dit.style_image), hidiffusion=True, true_cfg=4.0)
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "made.png", made)
    for pipe, taken, dropped in ((flux, "true_cfg", "hidiffusion"), (sdxl, "hidiffusion", "true_cfg")):
        app = ui.App(ui.PipelineHolder(pipe), ui.Workdir(tmp_path / "ui"))
        name = pipe.resources.family.name
        with pytest.warns(UserWarning, match=f"{name} models do not take: " + dropped.replace("_", " ")):
            restored = dict(zip(ui.FIELDS, app.restore(str(png)), strict=True))
        assert restored[taken] == getattr(made, taken)  # kept where the model takes it
        assert restored[dropped] == {f.name: f.default for f in ui.FORM}[dropped]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_batch_jobs_sharing_a_call_write_the_images_of_single_runs(family, dit, request, tmp_path):
    from instantstyle.app.batch import run_batch

    pipe = request.getfixturevalue(family)
    jobs = [{"id": f"job{i}", "prompt": f"a house {i}", "style": str(dit.style_image), **SIZE, "seed": 30 + i}
            for i in range(2)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    report = run_batch(path, tmp_path / "out", pipeline=pipe, batch_size=2)
    assert report.done == 2
    for job in jobs:
        alone = pipe(Request.from_dict({k: v for k, v in job.items() if k != "id"})).images[0]
        written = Image.open(tmp_path / "out" / f"{job['id']}.png")
        assert np.abs(pixels(written) - pixels(alone)).max() <= 2


def test_a_sweep_over_transformer_blocks_draws_one_cell_per_spec_and_scale(sd3, dit, tmp_path):
    from instantstyle.app.sweep import Axes, render_sweep

    axes = Axes(("all", "transformer_blocks.0-2"), (0.5, 1.0))
    out = render_sweep(sd3, Request("a cat", style=str(dit.style_image), **SIZE), axes, tmp_path / "s.png")
    assert Path(out.sheet).is_file() and [len(row) for row in out.paths] == [2, 2]
    assert not np.array_equal(pixels(Image.open(out.paths[0][1])), pixels(Image.open(out.paths[1][1])))


def test_scores_use_each_familys_own_encoders(sd3, flux, dit):
    """FLUX: CLIP ViT-L's image and text towers (the encoder's own folder); SD3: SigLIP's pooled image
    embedding for the style score, and no text tower in its space."""
    image = Image.open(dit.content_image)
    flux_scores = Scorers(flux).scorer().score([image], "a cat", str(dit.style_image), "a dog")[0]
    sd3_scorer = Scorers(sd3).scorer()
    sd3_scores = sd3_scorer.score([image], "a cat", str(dit.style_image))[0]
    assert None not in (flux_scores.clip_text, flux_scores.clip_style, flux_scores.content_leak)
    assert sd3_scores.clip_style is not None and sd3_scores.clip_text is None
    assert "clip_text" in sd3_scorer.unavailable()


def test_cli_sweep_without_blocks_compares_the_familys_presets(capsys, dit, tmp_path):
    """SDXL's default rows are style, style+layout and all; an SD3 model has only all."""
    from instantstyle.app.sweep import SHEET_KEY

    from .test_cli import run

    code, _, err = run(capsys, "sweep", "--model", dit.sd3, "--adapter", dit.sd3_adapter, "--style",
                       dit.style_image, "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64",
                       "--device", "cpu", "--scale", "0.5,1", "-o", tmp_path / "sheet.png")
    assert code == 0, err
    meta = json.loads(Image.open(tmp_path / "sheet.png").info[SHEET_KEY])
    assert meta["blocks"] == ["all"] and meta["scales"] == [0.5, 1.0]


def test_the_web_ui_sweep_with_blank_blocks_compares_the_familys_presets(sd3, dit, tmp_path):
    from instantstyle.app import ui
    from instantstyle.app.sweep import SHEET_KEY

    values = {f.name: f.default for f in (*ui.FORM, *ui.SWEEP_FORM)}
    values.update(style=[str(dit.style_image)], prompt="a cat", randomize_seed=False, steps=2, width=64, height=64,
                  sweep_scales="1")
    sheet, cells, _ = ui.App(ui.PipelineHolder(sd3), ui.Workdir(tmp_path / "ui")).sweep(values, lambda *a, **k: None)
    assert json.loads(Image.open(sheet).info[SHEET_KEY])["blocks"] == ["all"] and len(cells) == 1


def family_flags(dit, family: str) -> list:
    model, adapter = (dit.sd3, dit.sd3_adapter) if family == "sd3" else (dit.flux, dit.flux_adapter)
    return ["--model", model, "--adapter", adapter, "--device", "cpu"]


GENERATE = ["--style", "{style}", "--prompt", "a cat", "--steps", 2, "--width", 64, "--height", 64, "--seed", 7]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_hidiffusion_on_a_transformer_model_is_one_line_before_loading_and_in_the_api(family, dit, request, capsys,
                                                                                     tmp_path):
    from .test_cli import run

    args = [str(a).format(style=dit.style_image) for a in GENERATE]
    flags = [*family_flags(dit, family), *args, "--hidiffusion"]
    code, out, err = run(capsys, "generate", *flags, "-o", tmp_path / "a.png")
    assert code == 2 and err.count("\n") == 1 and not out
    assert err.startswith("error: --hidiffusion works on the UNet models it has settings for (sd15, sdxl), "
                          f"not on {family}:")
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(UserError, match=f"not on {family}:"):
        request.getfixturevalue(family)(Request("a cat", style=str(dit.style_image), hidiffusion=True, **SIZE))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_score_command_gives_the_scores_generate_stored(family, dit, capsys, tmp_path):
    """FLUX: every CLIP score (ViT-L's text tower from the encoder's own folder); SD3: the style score only (and
    no content prompt: its patch-feature adapter refuses subtraction)."""
    from instantstyle.scores.scorer import read_png_scores

    from .test_cli import run

    args = [str(a).format(style=dit.style_image) for a in GENERATE]
    content = ["--content-prompt", "a dog"] if family == "flux" else []
    flags = [*family_flags(dit, family), *args, *content, "--score"]
    code, _, err = run(capsys, "generate", *flags, "-o", tmp_path / "a.png")
    assert code == 0, err
    stored = read_png_scores(tmp_path / "a.png")
    code, out, err = run(capsys, "score", tmp_path / "a.png", "--json", "--device", "cpu")
    assert code == 0, err
    line = json.loads(out)
    for key in ("clip_text", "clip_style", "content_leak"):
        assert line[key] == pytest.approx(stored.get(key), abs=1e-5)
    assert line["clip_style"] is not None
    assert (line["clip_text"] is None) == (line["content_leak"] is None) == (family == "sd3")


def test_probe_blocks_on_flux_ranks_its_transformer_blocks_and_its_presets_work_as_blocks(flux, dit, capsys, tmp_path):
    from instantstyle.core.blocks import list_blocks, read_presets
    from instantstyle.core.request import read_png_request

    from .test_cli import run

    args = [str(a).format(style=dit.style_image) for a in GENERATE]
    code, out, err = run(capsys, "probe-blocks", *family_flags(dit, "flux"), *args, "-o", tmp_path / "probe",
                         "--save-presets", tmp_path / "presets.json")
    assert code == 0, err
    ranked = [line.split()[1] for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert sorted(ranked) == sorted(block.name for block in list_blocks(flux.resources.layers, flux.resources.family))
    style = read_presets(tmp_path / "presets.json")["style"]
    assert style == ranked[0]
    code, _, err = run(capsys, "generate", *family_flags(dit, "flux"), *args, "--blocks",
                       f"@{tmp_path / 'presets.json'}:style", "-o", tmp_path / "a.png")
    assert code == 0, err
    assert read_png_request(tmp_path / "a.png").blocks == style
    direct = flux(Request("a cat", style=str(dit.style_image), blocks=style, **SIZE)).images[0]
    assert (pixels(Image.open(tmp_path / "a.png")) == pixels(direct)).all()
