"""The web UI: form <-> Request, restore and style files, and the real page driven in headless Chromium."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.app.sweep import SHEET_KEY
from instantstyle.core.request import read_png_request, write_png
from instantstyle.scores.preset_file import write_presets
from instantstyle.scores.scorer import read_png_scores

from .conftest import pixels

gr = pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'instantstyle[ui]')")
from instantstyle.app import ui  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
TIMEOUT = 120_000  # ms; generous: the CI machine is shared


def form(style: list[str], **changes) -> dict:
    """Form values as the page sends them by default, with ``changes``."""
    values = {"style": style, "prompt": "a cat", "style_weights": "", "negative_prompt": "", "blocks": "style",
              "block_table": None, "scale": 1.0, "content_prompt": "", "content_scale": 0.5, "content_image": None,
              "seed": 7, "randomize_seed": False, "steps": 2, "guidance": 5.0, "width": 64, "height": 64,
              "num_images": 1, "init_image": None, "strength": 0, "mask": None, "control": "none",
              "control_image": None, "control_scale": 1.0, "controlnet": "", "scheduler": "model's own", "lora": ""}
    return {**values, **changes}


@pytest.fixture
def work(tmp_path) -> "ui.Workdir":
    return ui.Workdir(tmp_path / "ui")


@pytest.fixture
def served(tmp_path, modes) -> "ui.Workdir":
    """A workdir whose page may read the tiny ControlNets' folder and a folder of two (empty) LoRA files."""
    loras = tmp_path / "loras"
    loras.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (loras / name).write_bytes(b"")
    return ui.Workdir(tmp_path / "ui", models_dirs=[modes.sdxl_controlnet.parent, loras])


# --- the form and the request -----------------------------------------------------------------------


def test_form_becomes_the_request_with_uploads_kept_in_the_workdir(work, tiny):
    request = ui.form_request(work, form([str(tiny.style_image)], scale=0.7, negative_prompt="blurry"))
    assert (request.prompt, request.scale, request.negative_prompt, request.seed) == ("a cat", 0.7, "blurry", 7)
    assert Path(request.style[0].path).parent == work.inputs


def test_custom_blocks_come_from_the_per_block_table(work, tiny):
    table = [["up_blocks.0.attentions.1", 1.0], ["down_blocks.2.attentions.1", 0.5], ["mid_block.attentions.0", 0]]
    request = ui.form_request(work, form([str(tiny.style_image)], blocks="custom", block_table=table))
    assert request.blocks == "up_blocks.0.attentions.1=1,down_blocks.2.attentions.1=0.5"


def test_custom_blocks_all_zero_is_a_user_error(work, tiny):
    with pytest.raises(UserError, match="at least one block"):
        ui.form_request(work, form([str(tiny.style_image)], blocks="custom", block_table=[["up_blocks.0", 0]]))


def test_form_values_restore_the_same_request(sdxl, work, tiny):
    request = ui.form_request(work, form([str(tiny.style_image)], blocks="style+layout", scale=0.6,
                                         content_prompt="a dog", content_scale=0.3, guidance=4.5))
    values, lost = ui.form_values(sdxl, work, request)
    assert lost == [] and ui.form_request(work, dict(zip(ui.FIELDS, values, strict=True))) == request


def test_form_with_an_init_image_is_an_img2img_request_that_generates(sdxl, work, tiny, modes):
    request = ui.form_request(work, form([str(tiny.style_image)], init_image=str(modes.init_image), strength=0.5,
                                         steps=4))
    assert (request.mode, request.strength, Path(request.init_image).parent) == ("img2img", 0.5, work.inputs)
    assert sdxl(request).images[0].size == (64, 64)


def test_form_with_a_mask_is_an_inpainting_request_that_makes_diffusers_inpainting(sdxl, work, tiny, modes):
    """Inside the mask (the left half) the image is diffusers' own SDXL inpainting with the adapter on the style
    block, same inputs and seed; outside it, the init image put back."""
    import torch
    from diffusers import AutoPipelineForInpainting, StableDiffusionXLPipeline

    request = ui.form_request(work, form([str(tiny.style_image)], init_image=str(modes.init_image),
                                         mask=str(modes.left_mask)))
    assert request.mode == "inpaint" and Path(request.mask).parent == work.inputs
    ours = pixels(sdxl(request).images[0])
    inpaint = AutoPipelineForInpainting.from_pipe(StableDiffusionXLPipeline.from_pretrained(str(tiny.sdxl)))
    inpaint.load_ip_adapter(str(tiny.adapters), subfolder="sdxl_models", weight_name="ip-adapter_sdxl.safetensors")
    inpaint.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})
    inpaint.set_progress_bar_config(disable=True)
    init = Image.open(modes.init_image).convert("RGB")
    theirs = inpaint(prompt="a cat", image=init, mask_image=Image.open(modes.left_mask).convert("L"), strength=1.0,
                     ip_adapter_image=Image.open(tiny.style_image).convert("RGB"), num_inference_steps=2,
                     guidance_scale=5.0, width=64, height=64, generator=torch.Generator().manual_seed(7)).images[0]
    assert abs(ours - pixels(theirs))[:, :32].max() <= 1
    assert abs(ours - pixels(init))[:, 32:].max() <= 1


def test_strokes_painted_in_the_mask_editor_become_the_white_inpainting_mask(sdxl, work, tiny, modes):
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[8:24, 8:40] = (255, 255, 255, 255)  # one painted stroke
    request = ui.form_request(work, form([str(tiny.style_image)], init_image=str(modes.init_image),
                                         mask_paint={"background": None, "layers": [layer], "composite": None}))
    mask = np.asarray(Image.open(request.mask))
    assert request.mode == "inpaint" and mask[16, 16] == 255 and mask[50, 50] == 0
    assert sdxl(request).images[0].size == (64, 64)


def test_an_unpainted_mask_editor_is_no_mask(work, tiny, modes):
    empty = {"background": None, "layers": [np.zeros((64, 64, 4), np.uint8)], "composite": None}
    request = ui.form_request(work, form([str(tiny.style_image)], init_image=str(modes.init_image), mask_paint=empty))
    assert request.mode == "img2img" and request.mask is None


def test_form_with_canny_control_is_a_controlnet_request_that_generates(sdxl, served, tiny, modes):
    work = served
    request = ui.form_request(work, form([str(tiny.style_image)], control="canny",
                                         control_image=str(modes.init_image), control_scale=0.7,
                                         controlnet=str(modes.sdxl_controlnet)))
    assert (request.control, request.control_scale, request.controlnet) == ("canny", 0.7, str(modes.sdxl_controlnet))
    assert Path(request.control_image).parent == work.inputs
    assert sdxl(request).images[0].size == (64, 64)


def test_ready_control_image_upload_becomes_the_control(served, tiny, modes):
    work = served
    request = ui.form_request(work, form([str(tiny.style_image)], control=ui.READY_CONTROL,
                                         control_image=str(modes.depth_map), controlnet=str(modes.sdxl_controlnet)))
    assert Path(request.control).parent == work.inputs and request.control_image is None


def test_control_image_without_a_control_kind_is_a_user_error(work, tiny, modes):
    with pytest.raises(UserError, match="needs a control kind"):
        ui.form_request(work, form([str(tiny.style_image)], control_image=str(modes.init_image)))


def test_form_values_restore_the_image_mode_scheduler_and_lora_fields(sdxl, served, tiny, modes):
    work = served
    request = ui.form_request(work, form([str(tiny.style_image)], init_image=str(modes.init_image), strength=0.6,
                                         mask=str(modes.left_mask), control="depth",
                                         control_image=str(modes.depth_map), control_scale=0.4,
                                         controlnet=str(modes.sdxl_controlnet), scheduler="euler-a",
                                         lora="a.safetensors:0.5, b.safetensors"))
    assert request.scheduler == "euler-a" and [r.scale for r in request.lora] == [0.5, 1.0]
    values, lost = ui.form_values(sdxl, work, request)
    assert lost == [] and ui.form_request(work, dict(zip(ui.FIELDS, values, strict=True))) == request


def test_restore_never_takes_image_mode_files_from_outside_the_workdir(sdxl, work, tiny):
    request = Request("a cat", style=str(tiny.style_image), init_image="/etc/passwd", mask="/etc/hosts")
    values, lost = ui.form_values(sdxl, work, request)
    assert {"/etc/passwd", "/etc/hosts"} <= set(lost)
    assert values[ui.FIELDS.index("init_image")] is None and values[ui.FIELDS.index("mask")] is None


def test_restore_never_takes_files_from_outside_the_workdir(sdxl, work):
    values, lost = ui.form_values(sdxl, work, Request("a cat", style="/etc/passwd"))
    assert lost == ["/etc/passwd"] and values[ui.FIELDS.index("style")] is None


def test_text_file_as_style_is_a_user_error_naming_the_file(work, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(UserError, match=r"^style image notes.png: not a readable image"):
        ui.form_request(work, form([str(notes)]))


def test_out_of_range_size_is_a_user_error(work, tiny):
    with pytest.raises(UserError, match="width must be a multiple of 8"):
        ui.form_request(work, form([str(tiny.style_image)], width=100))


def test_uploads_over_the_apps_pixel_cap_are_refused_naming_the_file(tmp_path, tiny):
    work = ui.Workdir(tmp_path / "ui", max_pixels=64 * 64)
    with pytest.raises(UserError, match=r"^style image style.png: 96x64 is over the limit of 4,096 pixels"):
        ui.form_request(work, form([str(tiny.style_image)]))


def test_size_0_on_a_model_whose_default_is_below_64_says_so(small_default, tiny, work):
    from instantstyle import StylePipeline

    pipe = StylePipeline.from_pretrained(str(small_default), str(tiny.sdxl_adapter), device="cpu")
    app = ui.App(ui.PipelineHolder(pipe), work)
    with pytest.raises(UserError, match=r"^the model's default size 32 is below 64; pass --width/--height$"):
        app.generate(form([str(tiny.style_image)], width=0, height=0), progress=lambda *a, **k: None)


def test_a_cap_raised_above_the_default_holds_on_every_check_of_the_page(sdxl, tiny, tmp_path):
    """``ui --max-pixels 41000000``: a 6400 x 6400 reference (41 MP, over the default 40 MP) generates."""
    import dataclasses

    from .test_pixel_cap import huge_png

    cap = 41_000_000
    sdxl.scorer()  # a scorer made before, under the default cap, stays with its pipeline
    pipe = dataclasses.replace(sdxl, runtime=sdxl.runtime.replace(max_pixels=cap))  # the CLI gives both the same
    app = ui.App(ui.PipelineHolder(pipe), ui.Workdir(tmp_path / "ui", max_pixels=cap))
    big = huge_png(tmp_path / "big.png", side=6400, whole=True)
    gallery, _, _ = app.generate(form([str(big)]), progress=lambda *a, **k: None)
    assert Image.open(gallery[0][0]).size == (64, 64)
    assert " · style " in gallery[0][1]  # scored too: the scorer reads the reference under the same cap


def mask_painter(max_pixels: int = ui.MAX_PIXELS):
    editor = {f.name: f for f in ui.FORM}["mask_paint"].component(None)
    editor.max_pixels = max_pixels
    return editor


@pytest.mark.parametrize("where", ["background", "layers", "composite"])
def test_the_mask_painter_refuses_the_12000_pixel_png_before_decoding_it(tmp_path, where):
    """The issue's case: a 12000 x 12000 PNG of a few hundred KB as the painter's background, a layer or the
    composite (gradio decodes all three before the handler runs; five took a server from 1.3 to 5.2 GiB)."""
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from .test_pixel_cap import huge_png

    huge = FileData(path=str(huge_png(tmp_path / "huge.png", whole=True)), orig_name="huge.png")
    payload = EditorData(**{where: [huge] if where == "layers" else huge})
    with pytest.raises(gr.Error, match=r"mask painter image huge.png: 12000x12000 is over the limit of 40,000,000"):
        mask_painter().preprocess(payload)


def test_the_mask_painter_refuses_more_layers_than_a_mask_needs(tmp_path):
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    layer = tmp_path / "layer.png"
    Image.new("RGBA", (64, 64)).save(layer)
    payload = EditorData(layers=[FileData(path=str(layer))] * (ui.MAX_MASK_LAYERS + 1))
    with pytest.raises(gr.Error, match=f"{ui.MAX_MASK_LAYERS + 1} layers sent; the most is {ui.MAX_MASK_LAYERS}"):
        mask_painter().preprocess(payload)
    painted = mask_painter().preprocess(EditorData(layers=[FileData(path=str(layer))]))
    assert painted["layers"][0].shape == (64, 64, 4)  # within the limits: decoded as before


def test_an_init_image_over_the_cap_never_reaches_the_mask_painter(sdxl, tmp_path, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), ui.Workdir(tmp_path / "ui", max_pixels=64 * 64))
    with pytest.raises(UserError, match="init image style.png: 96x64 is over the limit of 4,096 pixels"):
        app.paint_over(str(tiny.style_image))
    assert app.paint_over(str(tiny.content_image))["background"] == str(tiny.content_image)  # 64 x 64: at the cap


@pytest.fixture
def models_dir(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ink.safetensors").write_bytes(b"")
    return folder


def test_server_paths_come_only_from_the_models_folders(tmp_path, models_dir):
    work = ui.Workdir(tmp_path / "ui", models_dirs=[models_dir])
    assert work.model_path("LoRA", "ink.safetensors") == str(models_dir / "ink.safetensors")
    assert work.model_path("LoRA", str(models_dir / "ink.safetensors")) == str(models_dir / "ink.safetensors")
    default = "diffusers/controlnet-canny-sdxl-1.0"
    assert work.model_path("controlnet", default, ui.DEFAULT_CONTROLNETS) == default


def test_a_missing_path_and_a_forbidden_one_get_the_same_message(tmp_path, models_dir):
    """A visitor learns nothing about the server's files: outside the folders, missing, a climb out, a hub id."""
    (tmp_path / "secret.safetensors").write_bytes(b"")
    work = ui.Workdir(tmp_path / "ui", models_dirs=[models_dir])
    messages = set()
    for ref in ["/etc/hosts", str(tmp_path / "secret.safetensors"), "../secret.safetensors", "missing.safetensors",
                "/no/such/file.safetensors", "someone/any-controlnet", "~/.bashrc"]:
        with pytest.raises(UserError) as caught:
            work.model_path("LoRA", ref)
        messages.add(str(caught.value).replace(ref, "REF"))
    assert messages == {"LoRA REF: not found in the models folders this page may read; the server's operator "
                        "allows folders with `instantstyle ui --models-dir DIR`"}


def test_without_models_folders_the_page_reads_no_server_paths(work, tiny):
    with pytest.raises(UserError, match="not found in any models folder"):
        ui.form_request(work, form([str(tiny.style_image)], lora=str(tiny.sdxl_adapter)))
    with pytest.raises(UserError, match="not found in any models folder"):
        ui.form_request(work, form([str(tiny.style_image)], control="canny", control_image=str(tiny.content_image),
                                   controlnet=str(tiny.sdxl)))


def test_restoring_a_png_holds_its_values_to_the_forms_limits(sdxl, work, tiny, tmp_path):
    """A PNG from the CLI may hold values the page's sliders refuse (steps 500, guidance 40, 20 images)."""
    made = Request("a cat", style=str(tiny.style_image), steps=500, guidance=40.0, num_images=20, scale=5.0,
                   seed=2**60, true_cfg=30.0)
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "cli.png", made)
    app = ui.App(ui.PipelineHolder(sdxl), work)
    with pytest.warns(UserWarning, match=r"held to the form's limits: scale 5 -> 2, seed 1152921504606846976 -> "
                                         r"9007199254740992, steps 500 -> 100, guidance 40 -> 20, true cfg 30 -> 10, "
                                         r"num images 20 -> 8"):
        values = dict(zip(ui.FIELDS, app.restore(str(png)), strict=True))
    assert (values["steps"], values["guidance"], values["num_images"], values["scale"]) == (100, 20.0, 8, 2.0)
    assert values["true_cfg"] == 1.0  # held to 10, then back at its default: SDXL does not take true CFG
    assert values["seed"] == 2**53 and isinstance(values["steps"], int)
    for field in ui.FORM:  # every restored value is one the page accepts
        if field.limits is not None:
            low, high = field.limits
            assert low <= values[field.name] and (high is None or values[field.name] <= high), field.name


@pytest.mark.parametrize(
    ("pairs", "text", "message"),
    [
        (["bob"], None, "--auth value: give USER:PASSWORD, neither empty"),
        ([":secret"], None, "--auth value: give USER:PASSWORD, neither empty"),
        (["bob:"], None, "--auth value: give USER:PASSWORD, neither empty"),
        (["bob:a", "bob:b"], None, "--auth value: user 'bob' is given twice"),
        ([], "# logins\n\nann:pw1\nbob-secret\n", "auth file LOGINS line 4: give USER:PASSWORD"),
        ([], "# nothing\n\n", "auth file LOGINS: holds no USER:PASSWORD line"),
        ([], b"ann:\xff\n", "auth file LOGINS: not UTF-8 text"),
        ([], "MISSING", "auth file LOGINS: no such file"),
        ([], "x:secret\n" * 200_000, "auth file LOGINS: over 1 MB"),
    ],
)
def test_careless_logins_are_one_line_that_never_shows_a_password(tmp_path, pairs, text, message):
    files = []
    if text is not None:
        path = tmp_path / "logins.txt"
        if text != "MISSING":
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
        files.append(str(path))
    with pytest.raises(UserError) as caught:
        ui.read_auth(pairs, files)
    shown = str(caught.value).replace(str(tmp_path / "logins.txt"), "LOGINS")
    assert shown.startswith(message) and "secret" not in shown and "\n" not in shown


def test_logins_come_from_values_and_files(tmp_path):
    (tmp_path / "logins.txt").write_text("# the team\nann: two words \r\n\ncat:pw:with:colons\n")
    assert ui.read_auth(["bob:pw"], [tmp_path / "logins.txt"]) == [
        ("bob", "pw"), ("ann", " two words"), ("cat", "pw:with:colons")]


def test_style_file_reproduces_the_style_image_and_keeps_the_settings(sdxl, work, tiny, tmp_path):
    request = ui.form_request(work, form([str(tiny.style_image)], scale=0.8))
    path = sdxl.save_style(request, tmp_path / "style.safetensors", extra=ui.style_settings(request))
    from instantstyle.core.embeddings import load_style

    assert Request.from_json(load_style(path).metadata["request"]).scale == 0.8
    assert (pixels(sdxl(request.replace(style=(str(path),))).images[0]) == pixels(sdxl(request).images[0])).all()


def test_the_layout_places_every_form_field_exactly_once():
    rows = [item if isinstance(item, tuple) else (item,) for _, items in ui.LAYOUT for item in items]
    placed = [name for row in rows for name in row]
    assert sorted(placed) == sorted(ui.FIELDS)


def test_handlers_take_every_form_field_by_name_with_the_forms_defaults():
    """The API of /generate and /save_style (and /sweep, plus its own fields) is the field table."""
    import inspect

    seen = {}
    handler = ui.takes_form(ui.FORM, lambda values, progress: seen.update(values))
    params = inspect.signature(handler).parameters
    assert list(params) == [*ui.FIELDS, "progress"]
    assert [p.default for p in params.values()][2:-1] == [f.default for f in ui.FORM][2:]  # style, prompt: required
    handler(["s.png"], "a cat", steps=4)
    assert seen == {**{f.name: f.default for f in ui.FORM}, "style": ["s.png"], "prompt": "a cat", "steps": 4}


def no_progress(*_, **__) -> None:
    """Stands in for gradio's progress tracker when a handler is called directly."""


def test_generate_shows_the_scores_of_each_image_under_it_and_stores_them(sdxl, work, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    gallery, files, request_json = app.generate(form([str(tiny.style_image)], num_images=2,
                                                     content_prompt="stripes"), no_progress)
    expected = sdxl.score(sdxl(Request.from_json(request_json)))
    for (path, caption), scores in zip(gallery, expected, strict=True):
        assert caption == f"seed 7 #{gallery.index((path, caption)) + 1} · {scores.caption(' · ')}"
        assert read_png_scores(path).to_dict() == pytest.approx(scores.to_dict(), abs=1e-6)
    assert "leak" in gallery[0][1] and files == [p for p, _ in gallery]


def test_the_sweep_tab_scores_its_cells_and_returns_the_plot_and_csv(sdxl, work, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    values = {**form([str(tiny.style_image)]), "sweep_blocks": "style, all", "sweep_scales": "1",
              "sweep_content_scales": ""}
    sheet, cells, files = app.sweep(values, no_progress)
    assert [Path(f).name.split("-", 2)[-1] for f in files[1:3]] == ["sweep-plot.png", "sweep.csv"]
    assert all("style 0." in caption for _, caption in cells) and len(cells) == 2
    assert "scores" in json.loads(Image.open(sheet).info[SHEET_KEY])


def test_the_blocks_field_takes_a_typed_spec_or_a_presets_reference(sdxl, tiny, tmp_path, models_dir):
    write_presets(models_dir / "p.json", {"mine": "up_blocks.0.attentions.1=0.5"})
    work = ui.Workdir(tmp_path / "ui", models_dirs=[models_dir])
    request = ui.form_request(work, form([str(tiny.style_image)], blocks="@p.json:mine"))
    assert sdxl(request).request.blocks == "up_blocks.0.attentions.1=0.5"
    app = ui.App(ui.PipelineHolder(sdxl), work)
    for spec in ("@p.json:mine", request.blocks):
        assert [r for r in app.load_blocks(spec) if r[1]] == [["up_blocks.0.attentions.1", 0.5]]
    with pytest.raises(UserError, match="no preset 'other'"):
        app.generate(form([str(tiny.style_image)], blocks="@p.json:other"), no_progress)


def test_the_page_reads_presets_files_only_from_the_models_folders(sdxl, tiny, tmp_path, models_dir):
    """A presets file outside the folders is never opened, whichever field names it: the message is the one for a
    missing file, never the names of the presets it holds."""
    write_presets(tmp_path / "secret.json", {"hidden": "up_blocks.0.attentions.1"})
    work = ui.Workdir(tmp_path / "ui", models_dirs=[models_dir])
    app = ui.App(ui.PipelineHolder(sdxl), work)
    ref = f"@{tmp_path / 'secret.json'}:nope"
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "crafted.png",
                    Request("a cat", style=str(tiny.style_image), blocks=ref))
    attempts = [lambda: ui.form_request(work, form([str(tiny.style_image)], blocks=ref)),
                lambda: app.load_blocks(ref),
                lambda: app.sweep({**form([str(tiny.style_image)]), "sweep_blocks": f"style; {ref}",
                                   "sweep_scales": "1", "sweep_content_scales": ""}, no_progress),
                lambda: app.restore(str(png))]
    for attempt in attempts:
        with pytest.raises(UserError, match=r"presets file .*secret.json: not found in the models folders") as err:
            attempt()
        assert "hidden" not in str(err.value)


def test_a_presets_file_in_a_models_folder_is_read_safely(tmp_path, models_dir):
    """Garbage, a folder or a huge file where a presets file should be: one line naming it as the visitor did."""
    (models_dir / "garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (models_dir / "folder.json").mkdir()
    with open(models_dir / "huge.json", "wb") as file:
        file.truncate(2**31)  # sparse: 2 GB that are never read whole
    work = ui.Workdir(tmp_path / "ui", models_dirs=[models_dir])
    for name, message in [("garbage.json", "not UTF-8 text"), ("folder.json", "is a folder"),
                          ("huge.json", "over 1 MB")]:
        with pytest.raises(UserError, match=f"^presets file {name}: {message}") as err:
            work.blocks_spec(f"@{name}:style")
        assert str(models_dir) not in str(err.value) and "\n" not in str(err.value)


def test_the_hidiffusion_checkbox_restores_and_takes_only_true_or_false(sdxl, work, tiny, tmp_path):
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "hi.png",
                    Request("a cat", style=str(tiny.style_image), hidiffusion=True))
    app = ui.App(ui.PipelineHolder(sdxl), work)
    with pytest.warns(UserWarning):  # the style image was not uploaded to this page
        assert dict(zip(ui.FIELDS, app.restore(str(png)), strict=True))["hidiffusion"] is True
    assert ui.form_request(work, form([str(tiny.style_image)], hidiffusion=True)).hidiffusion is True
    for value in ("false", 1, "yes"):  # what an API client might send
        with pytest.raises(UserError, match="hidiffusion must be true or false"):
            ui.form_request(work, form([str(tiny.style_image)], hidiffusion=value))


# --- the command -------------------------------------------------------------------------------------


def test_ui_command_with_a_missing_model_is_one_line_and_exit_2(tiny, tmp_path):
    from click.testing import CliRunner

    from instantstyle.app.cli import main

    result = CliRunner().invoke(main, ["ui", "--model", str(tmp_path / "nope"), "--adapter", str(tiny.sdxl_adapter)])
    assert result.exit_code == 2 and result.output.startswith("error: model") and result.output.count("\n") == 1


def test_ui_command_on_a_taken_port_is_one_line_and_exit_2(tiny):
    from click.testing import CliRunner

    from instantstyle.app.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--model", str(tiny.sdxl), "--port", str(port)])
    assert result.exit_code == 2 and f"127.0.0.1:{port}" in result.output and result.output.count("\n") == 1


def test_one_command_serves_a_working_page(tiny, tmp_path):
    """The page serves, holds uploads to ``--max-pixels``, and the command says how to share in its own words
    (not gradio's "set share=True in launch()")."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    port = free_port()
    command = [sys.executable, "-c", "from instantstyle.app.cli import entry; entry()", "ui", "--model", str(tiny.sdxl),
               "--adapter", str(tiny.sdxl_adapter), "--port", str(port), "--workdir", str(tmp_path / "work"),
               "--max-pixels", "4096"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    assert response.status == 200 and "InstantStyle" in response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"no page within 120 s: {server.stdout.read() if server.poll() is not None else 'running'}")
        with pytest.raises(AppError, match="style image style.png: 96x64 is over the limit of 4,096 pixels"):
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
                style=[handle_file(str(tiny.style_image))], prompt="a cat", api_name="/generate")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "--share makes a temporary gradio.live one" in output and "share=True" not in output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth", "bob"], "error: --auth value: give USER:PASSWORD, neither empty"),
        (["--auth-file", "NOPE"], "error: auth file NOPE: no such file"),
        (["--models-dir", "NOPE"], "error: --models-dir NOPE: no such folder"),
        (["--max-pixels", "0"], "error: the pixel cap must be between 4,096 and"),
    ],
)
def test_careless_ui_flags_are_one_line_before_the_model_loads(tmp_path, flags, message):
    from click.testing import CliRunner

    from instantstyle.app.cli import main

    flags = [str(tmp_path / "nope") if f == "NOPE" else f for f in flags]
    result = CliRunner().invoke(main, ["ui", "--model", str(tmp_path / "no-model"), *flags])
    output = result.output.replace(str(tmp_path / "nope"), "NOPE")
    assert result.exit_code == 2 and output.startswith(message) and output.count("\n") == 1


# --- the page in a real browser ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(sdxl, tmp_path_factory):
    """The app on the tiny SDXL pipeline, served from this process on a free localhost port."""
    workdir = tmp_path_factory.mktemp("ui-app")
    port = free_port()
    demo = ui.launch(sdxl, workdir, port=port, block=False)
    yield f"http://127.0.0.1:{port}/", ui.Workdir(workdir), demo
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(TIMEOUT)
    page.goto(app[0])
    page.wait_for_selector("#generate")
    yield page
    page.close()


def fill_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def fill_form(page, style: Path, prompt: str = "a cat") -> None:
    page.locator("#style input[type=file]").set_input_files(str(style))
    page.locator("#prompt textarea").fill(prompt)
    fill_number(page, "steps", 2)
    page.locator("#randomize input").uncheck()
    fill_number(page, "seed", 7)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def close_messages(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()


def test_page_generates_a_real_image_into_the_gallery(page, tiny, tmp_path):
    fill_form(page, tiny.style_image)
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    screenshot(page, "ui-generate.png")
    data = page.request.get(image.get_attribute("src")).body()
    (tmp_path / "got.png").write_bytes(data)
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    request = read_png_request(tmp_path / "got.png")
    assert (request.prompt, request.seed, request.steps) == ("a cat", 7, 2)
    page.locator("#gallery").get_by_text("style 0.").first.wait_for()  # the scores under the image
    scores = read_png_scores(tmp_path / "got.png")
    assert f"style {scores.clip_style:.3f} · text {scores.clip_text:.3f}" in page.locator("#gallery").inner_text()


def test_page_restyles_an_uploaded_init_image(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image)
    page.get_by_text("Image modes: img2img, inpainting, ControlNet").click()
    page.locator("#init-image input[type=file]").set_input_files(str(modes.init_image))
    page.locator("#init-image").get_by_text("init.png").first.wait_for()
    fill_number(page, "strength", 0.5)
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for()
    screenshot(page, "ui-img2img.png")
    (tmp_path / "got.png").write_bytes(page.request.get(image.get_attribute("src")).body())
    request = read_png_request(tmp_path / "got.png")
    assert (request.mode, request.strength, request.prompt) == ("img2img", 0.5, "a cat")


def test_strokes_painted_in_the_page_become_the_inpainting_mask(page, tiny, modes, tmp_path):
    """Drawn with the mouse in the browser: the painter (one layer, capped) still sends the strokes."""
    fill_form(page, tiny.style_image)
    page.get_by_text("Image modes: img2img, inpainting, ControlNet").click()
    page.locator("#init-image input[type=file]").set_input_files(str(modes.init_image))
    page.locator("#init-image").get_by_text("init.png").first.wait_for()
    editor = page.locator("#mask-paint")
    editor.scroll_into_view_if_needed()
    editor.get_by_role("button", name="Brush").first.click()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 - 60
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 13):
        page.mouse.move(x + i * 10, y + i * 10, steps=3)
    page.mouse.up()
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for()
    (tmp_path / "got.png").write_bytes(page.request.get(image.get_attribute("src")).body())
    request = read_png_request(tmp_path / "got.png")
    painted = np.asarray(Image.open(request.mask)) > 0
    assert request.mode == "inpaint" and 0 < painted.mean() < 1


def test_dropping_a_generated_png_restores_its_settings(page, app, tiny, tmp_path):
    style = app[1].keep_upload(tiny.style_image, "style image")
    request = Request("a lighthouse at dusk", style=style, negative_prompt="blurry", blocks="style+layout",
                      scale=0.7, guidance=4.5, steps=3, seed=42, width=64, height=64)
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "made.png", request)
    page.get_by_role("tab", name="Restore & style files").click()
    page.locator("#restore input[type=file]").set_input_files(str(png))
    from playwright.sync_api import expect

    expect(page.locator("#prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#negative textarea")).to_have_value("blurry")
    expect(page.locator("#seed input")).to_have_value("42")
    expect(page.locator("#steps input[type=number]")).to_have_value("3")
    expect(page.locator("#blocks input")).to_have_value("style+layout")
    expect(page.locator("#randomize input")).not_to_be_checked()
    expect(page.locator("#style")).to_contain_text(Path(style).stem)
    screenshot(page, "ui-restored.png")


def test_text_file_as_style_shows_a_message_and_the_app_keeps_serving(page, tiny, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not an image\n")
    fill_form(page, notes)
    page.locator("#generate").click()
    page.get_by_text("notes.png: not a readable image").first.wait_for()
    screenshot(page, "ui-error.png")
    close_messages(page)
    page.locator("#style button[aria-label='Clear']").first.click()
    page.locator("#style input[type=file]").set_input_files(str(tiny.style_image))
    page.locator("#generate").click()
    page.locator("#gallery img").first.wait_for()


def test_saved_style_file_loads_with_its_settings_and_generates(page, app, tiny, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image, prompt="a castle")
    page.get_by_role("tab", name="Restore & style files").click()
    page.locator("#save-style").click()
    link = page.locator("#style-file a").first
    link.wait_for()
    saved = tmp_path / "my-style.safetensors"
    saved.write_bytes(page.request.get(link.get_attribute("href")).body())
    page.goto(app[0])
    page.wait_for_selector("#generate")
    page.locator("#style input[type=file]").set_input_files(str(saved))
    expect(page.locator("#prompt textarea")).to_have_value("a castle")
    expect(page.locator("#seed input")).to_have_value("7")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate").click()
    page.locator("#gallery img").first.wait_for()


def test_out_of_range_value_shows_a_message_in_the_page(page, tiny):
    fill_form(page, tiny.style_image)
    page.locator("#width input").fill("100")
    page.locator("#generate").click()
    page.get_by_text("width must be a multiple of 8, got 100").first.wait_for()


def test_sweep_tab_renders_a_sheet(page, tiny):
    fill_form(page, tiny.style_image)
    page.get_by_role("tab", name="Sweep").click()
    for elem_id, value in (("sweep-blocks", "style, all"), ("sweep-scales", "1")):
        box = page.locator(f"#{elem_id} textarea")
        box.wait_for(state="visible")
        for _ in range(10):  # the tab may still be rendering and reset a value typed too early
            box.fill(value)
            page.wait_for_timeout(200)
            if box.input_value() == value:
                break
        assert box.input_value() == value
    page.locator("#run-sweep").click()
    sheet = page.locator("#sheet img").first
    sheet.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=sheet.element_handle())
    screenshot(page, "ui-sweep.png")
    made = json.loads(Image.open(io.BytesIO(page.request.get(sheet.get_attribute("src")).body())).info[SHEET_KEY])
    assert (made["blocks"], made["scales"], made["base"]["seed"]) == (["style", "all"], [1.0], 7)


def test_documented_api_client_example_works(app, tiny):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app[0], verbose=False)
    gallery, files, request_json = client.predict(
        style=[handle_file(str(tiny.style_image))], prompt="a cat", steps=2, seed=7, randomize_seed=False,
        api_name="/generate")
    assert read_png_request(files[0]) == Request.from_json(request_json)
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    with pytest.raises(AppError, match="width must be a multiple of 8"):
        client.predict(style=[handle_file(str(tiny.style_image))], prompt="a cat", width=100, api_name="/generate")


def test_uploads_over_the_size_limit_are_refused(app):
    import httpx

    too_big = b"0" * (25 * 1024 * 1024 + 1)
    response = httpx.post(f"{app[0]}gradio_api/upload", files={"files": ("big.png", too_big)}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text


def test_the_served_mask_painter_refuses_the_12000_pixel_png_with_the_apps_message(app, tiny, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from .test_pixel_cap import huge_png

    huge = handle_file(str(huge_png(tmp_path / "huge.png", whole=True)))
    client = Client(app[0], verbose=False)
    with pytest.raises(AppError, match="mask painter image huge.png: 12000x12000 is over the limit of 40,000,000"):
        client.predict(style=[handle_file(str(tiny.style_image))], prompt="a cat",
                       mask_paint={"background": huge, "layers": [huge], "composite": huge}, api_name="/generate")


def test_a_login_guards_every_route_and_uploads_are_deleted_when_the_server_stops(sdxl, tmp_path):
    import httpx

    port = free_port()
    demo = ui.launch(sdxl, tmp_path / "work", port=port, block=False, auth=[("ann", "pw")])
    base = f"http://127.0.0.1:{port}/"
    try:
        for route in ("config", "gradio_api/info"):
            assert httpx.get(base + route, timeout=30).status_code == 401
        assert httpx.post(base + "gradio_api/upload", files={"files": ("a.png", b"x")}, timeout=30).status_code == 401
        with httpx.Client(timeout=30) as client:
            assert client.post(base + "login", data={"username": "ann", "password": "pw"}).status_code == 200
            uploaded = Path(client.post(base + "gradio_api/upload", files={"files": ("a.png", b"x")}).json()[0])
        assert uploaded.is_file()
    finally:
        demo.close()
    assert not uploaded.exists()  # gradio's copy; what the app uses is kept under WORKDIR/inputs


def test_app_listens_on_localhost_only_without_a_share_link(app):
    """What the operating system says is listening on the app's port: the loopback address, nothing else."""
    import psutil

    port = int(app[0].rsplit(":", 1)[1].strip("/"))
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
    assert app[2].share_url is None

