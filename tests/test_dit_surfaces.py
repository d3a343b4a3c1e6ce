"""Every surface takes the SD3.5 and FLUX families as it takes SDXL: the web UI's form with its defaults,
batch jobs, sweeps and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request

from .conftest import pixels

SIZE = {"steps": 2, "width": 64, "height": 64, "seed": 7}


def test_the_web_ui_form_with_its_defaults_makes_a_flux_image_with_the_default_blocks(flux, dit, tmp_path):
    from instantstyle import ui

    values = {f.name: f.default for f in ui.FORM}
    values.update(style=[str(dit.style_image)], prompt="a cat", randomize_seed=False, steps=2, width=64, height=64)
    app = ui.App(ui.PipelineHolder(flux), ui.Workdir(tmp_path / "ui"))
    gallery, files, made = app.generate(values, lambda *a, **k: None)
    request = json.loads(made)
    assert len(files) == 1 and request["blocks"] == "all" and request["true_cfg"] == 1.0
    restored, lost = ui.form_values(flux, app.work, Request.from_dict(request))
    assert restored[ui.FIELDS.index("blocks")] == "all" and not lost


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_batch_jobs_sharing_a_call_write_the_images_of_single_runs(family, dit, request, tmp_path):
    from instantstyle.batch import run_batch

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
    from instantstyle.sweep import Axes, render_sweep

    axes = Axes(("all", "transformer_blocks.0-2"), (0.5, 1.0))
    out = render_sweep(sd3, Request("a cat", style=str(dit.style_image), **SIZE), axes, tmp_path / "s.png")
    assert Path(out.sheet).is_file() and [len(row) for row in out.paths] == [2, 2]
    assert not np.array_equal(pixels(Image.open(out.paths[0][1])), pixels(Image.open(out.paths[1][1])))


def test_scores_use_each_familys_own_encoders(sd3, flux, dit):
    """FLUX: CLIP ViT-L's image and text towers (the encoder's own folder); SD3: SigLIP's pooled image
    embedding for the style score, and no text tower in its space."""
    image = Image.open(dit.content_image)
    flux_scores = flux.scorer().score([image], "a cat", str(dit.style_image), "a dog")[0]
    sd3_scorer = sd3.scorer()
    sd3_scores = sd3_scorer.score([image], "a cat", str(dit.style_image))[0]
    assert None not in (flux_scores.clip_text, flux_scores.clip_style, flux_scores.content_leak)
    assert sd3_scores.clip_style is not None and sd3_scores.clip_text is None
    assert "clip_text" in sd3_scorer.unavailable()


def test_cli_sweep_without_blocks_compares_the_familys_presets(capsys, dit, tmp_path):
    """SDXL's default rows are style, style+layout and all; an SD3 model has only all."""
    from instantstyle.sweep import SHEET_KEY

    from .test_cli import run

    code, _, err = run(capsys, "sweep", "--model", dit.sd3, "--adapter", dit.sd3_adapter, "--style",
                       dit.style_image, "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64",
                       "--device", "cpu", "--scale", "0.5,1", "-o", tmp_path / "sheet.png")
    assert code == 0, err
    meta = json.loads(Image.open(tmp_path / "sheet.png").info[SHEET_KEY])
    assert meta["blocks"] == ["all"] and meta["scales"] == [0.5, 1.0]


def test_the_web_ui_sweep_with_blank_blocks_compares_the_familys_presets(sd3, dit, tmp_path):
    from instantstyle import ui
    from instantstyle.sweep import SHEET_KEY

    values = {f.name: f.default for f in (*ui.FORM, *ui.SWEEP_FORM)}
    values.update(style=[str(dit.style_image)], prompt="a cat", randomize_seed=False, steps=2, width=64, height=64,
                  sweep_scales="1")
    sheet, cells, _ = ui.App(ui.PipelineHolder(sd3), ui.Workdir(tmp_path / "ui")).sweep(values, lambda *a, **k: None)
    assert json.loads(Image.open(sheet).info[SHEET_KEY])["blocks"] == ["all"] and len(cells) == 1
