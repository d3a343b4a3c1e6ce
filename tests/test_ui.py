"""The web UI without a browser: form <-> Request, restore and style files, the views, the guards, the command.

The page itself, driven in headless Chromium, is ``test_ui_page``; the served command under attack, ``test_ui_server``.
"""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.app.sweep import SHEET_KEY
from instantstyle.core.request import read_png_request, write_png
from instantstyle.scores.preset_file import write_presets
from instantstyle.scores.scorer import read_png_scores

from .conftest import complete_for, pixels, with_resources

gr = pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'instantstyle[ui]')")
from instantstyle.app import ui  # noqa: E402
from instantstyle.scores.scorers import Scorers  # noqa: E402


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

    from .test_pixel_cap import huge_png

    cap = 41_000_000
    Scorers(sdxl).scorer()  # a scorer made before, under the default cap, stays with its pipeline
    pipe = with_resources(sdxl, runtime=sdxl.resources.runtime.replace(max_pixels=cap))  # the CLI gives both the same
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
    for field in ui.FORM:  # every restored value is one the page accepts (blank: the mode's own)
        if field.limits is not None and values[field.name] != "":
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
    from instantstyle.app.ui.fields import ABOVE_TABS, tab_fields

    placed = [*tab_fields(ui.Tab("", "", ABOVE_TABS)), *(name for tab in ui.TABS for name in tab_fields(tab))]
    assert sorted(placed) == sorted(ui.FIELDS)


def test_handlers_take_every_form_field_by_name_with_the_forms_defaults():
    """The API of /generate and /save_style (and /sweep, plus its own fields) is the field table."""
    import inspect

    seen = {}
    handler = ui.takes_form(ui.FORM, lambda values, progress: seen.update(values))
    params = inspect.signature(handler).parameters
    assert list(params) == [*ui.FIELDS, "progress", "request"]  # gradio fills in the last two (not in the API)
    assert [p.default for p in params.values()][2:-2] == [f.default for f in ui.FORM][2:]  # style, prompt: required
    handler(["s.png"], "a cat", steps=4)
    assert seen == {**{f.name: f.default for f in ui.FORM}, "style": ["s.png"], "prompt": "a cat", "steps": 4}


def no_progress(*_, **__) -> None:
    """Stands in for gradio's progress tracker when a handler is called directly."""


def test_generate_shows_the_scores_of_each_image_under_it_and_stores_them(sdxl, work, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    gallery, files, request_json = app.generate(form([str(tiny.style_image)], num_images=2,
                                                     content_prompt="stripes"), no_progress)
    expected = Scorers(sdxl).score(sdxl(read_png_request(files[0])))
    assert json.loads(request_json)["style"][0]["path"].startswith("inputs/")  # the page's panel: no server folders
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

@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth", "bob"], "error: --auth value: give USER:PASSWORD, neither empty"),
        (["--auth-file", "NOPE"], "error: auth file NOPE: no such file"),
        (["--models-dir", "NOPE"], "error: --models-dir NOPE: no such folder"),
        (["--max-pixels", "0"], "error: the pixel cap must be between 4,096 and"),
        (["--video-model", "NOPE"], "error: video model NOPE: no such folder"),
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


# --- careless input of the API (issue 19, item 14) -----------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no"])
def test_randomize_seed_takes_only_true_or_false_never_the_truth_of_a_string(work, tiny, value):
    with pytest.raises(UserError, match="^randomize_seed must be true or false, got "):
        ui.form_request(work, form([str(tiny.style_image)], randomize_seed=value))


@pytest.mark.parametrize(("name", "value"), [("scale", "0.5"), ("guidance", "5"), ("composition_scale", "x"),
                                             ("style_start", float("nan")), ("control_scale", "0.6"),
                                             ("style_guidance", None), ("content_adapter_scale", True)])
def test_a_number_field_sent_as_anything_else_is_one_line_naming_it(work, tiny, name, value):
    with pytest.raises(UserError, match=f"^{name.replace('_', ' ')} must be a number, got "):
        ui.form_request(work, form([str(tiny.style_image)], **{name: value}))


# --- what the page shows of the server (issue 19, item 7) ---------------------------------------------------


def test_the_request_panel_names_server_paths_relative_to_the_workdir_or_by_their_last_name(sdxl, served, tiny, modes):
    app = ui.App(ui.PipelineHolder(sdxl), served)
    request = complete_for(sdxl, ui.form_request(served, form([str(tiny.style_image)], control="canny",
                                                         control_image=str(modes.init_image),
                                                         controlnet="sdxl-controlnet")))
    shown = app.request_json(request)
    restyled = app.request_json(request.replace(restyle=request.control_image, control_image=None,
                                                csd=str(tiny.root / "csd.safetensors"), style_guidance=1.0))
    assert json.loads(restyled)["restyle"].startswith("inputs/") and json.loads(restyled)["csd"] == "csd.safetensors"
    for folder in (served.root, tiny.root, modes.root):
        assert str(folder) not in shown
    data = json.loads(shown)
    assert data["style"][0]["path"].startswith("inputs/") and data["control_image"].startswith("inputs/")
    assert (data["model"], data["adapter"], data["controlnet"]) == ("sdxl", "ip-adapter_sdxl.safetensors",
                                                                     "sdxl-controlnet")


def test_a_hub_id_is_shown_as_given(work):
    assert work.shown("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert work.shown("/srv/models/secret-folder/sdxl") == "sdxl"


# --- every mode of the command line -------------------------------------------------------------------------


@pytest.fixture
def everything(tmp_path, tiny, modes) -> "ui.Workdir":
    """A workdir whose page may read the tiny plus adapter, ControlNets and depth model."""
    return ui.Workdir(tmp_path / "ui", models_dirs=[tiny.sdxl_plus_adapter.parent, modes.root])


def test_composition_regions_adapters_depth_and_the_schedule_come_from_the_form_and_back(sdxl, everything, tiny,
                                                                                         modes):
    values = form([str(tiny.style_image), str(modes.second_style)], composition=str(modes.init_image),
                  composition_scale=0.8, regions=[str(modes.left_mask), str(modes.right_mask)], style_start=0.2,
                  style_end=0.9, style_fit="pad", control="depth", control_image=str(modes.init_image),
                  depth_model="dpt", adapter_1="ip-adapter-plus_sdxl_vit-h.safetensors",
                  adapter_1_style=[str(modes.second_style)], adapter_1_blocks="layout", adapter_1_scale=0.5)
    request = ui.form_request(everything, values)
    assert (request.composition_scale, request.style_start, request.style_end, request.style_fit) == (0.8, 0.2, 0.9,
                                                                                                       "pad")
    assert len(request.regions) == 2 and request.depth_model == str(modes.depth_model)
    assert [(a.path, a.blocks, a.scale) for a in request.adapters] == [(str(tiny.sdxl_plus_adapter), "layout", 0.5)]
    restored, lost = ui.form_values(sdxl, everything, request)
    assert lost == [] and ui.form_request(everything, dict(zip(ui.FIELDS, restored, strict=True))) == request
    assert dict(zip(ui.FIELDS, restored, strict=True))["adapter_1"] == "ip-adapter-plus_sdxl_vit-h.safetensors"


@pytest.mark.parametrize(("changes", "message"), [
    ({"adapter_1_style": ["STYLE"]}, "adapter 1: pick its adapter file for its style image"),
    ({"adapter_2": "ip-adapter-plus_sdxl_vit-h.safetensors"}, "adapter 2 .*: give its style image"),
    ({"adapter_1": "/etc/passwd", "adapter_1_style": ["STYLE"]}, "adapter /etc/passwd: not found in the models"),
    ({"depth_model": "../dpt", "control": "depth"}, "depth model ../dpt: not found in the models folders"),
    ({"regions": ["LEFT"]}, r"1 region mask\(s\) for 2 style\(s\): give one per style"),
])
def test_careless_mode_fields_are_one_line(everything, tiny, modes, changes, message):
    files = {"STYLE": str(modes.second_style), "LEFT": str(modes.left_mask)}
    changes = {k: [files.get(v, v) for v in value] if isinstance(value, list) else value
               for k, value in changes.items()}
    if "regions" in changes:  # one region for two references
        changes["style"] = [str(tiny.style_image), str(modes.second_style)]
    values = {**form([str(tiny.style_image)]), **changes}
    with pytest.raises(UserError, match=message):
        ui.form_request(everything, values)


def test_a_photo_to_restyle_leaves_the_recipes_defaults_to_the_recipe(sdxl, served, tiny, modes):
    """The form's blank negative prompt and control scale 0 are the mode's own: in restyle mode, the recipe's."""
    request = ui.form_request(served, form([str(tiny.style_image)], restyle=str(modes.init_image),
                                           restyle_content_scale=0.2, inversion_steps=3, renoise_steps=2,
                                           controlnet="sdxl-controlnet", control_scale=0))
    assert (request.negative_prompt, request.control, request.control_scale) == (None, None, None)
    assert (Path(request.restyle).parent, request.restyle_content_scale, request.inversion_steps,
            request.renoise_steps) == (served.inputs, 0.2, 3, 2)
    restored, lost = ui.form_values(sdxl, served, request)
    assert lost == [] and ui.form_request(served, dict(zip(ui.FIELDS, restored, strict=True))) == request


def test_the_models_folders_offer_their_loras_adapters_controlnets_depth_models_and_presets(tiny, modes, tmp_path):
    from instantstyle.testing.lora import write_tiny_lora

    loras = tmp_path / "loras"
    loras.mkdir()
    write_tiny_lora(tiny.sdxl, loras / "ink.safetensors")
    write_presets(loras / "mine.json", {"one": "up_blocks.0.attentions.1"})
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    choices = ui.Workdir(tmp_path / "ui", models_dirs=[loras, tiny.sdxl_plus_adapter.parent, modes.root]).models()
    assert choices.loras == ("ink.safetensors",) and choices.presets == ("mine.json",)
    assert "ip-adapter-plus_sdxl_vit-h.safetensors" in choices.adapters and "ink.safetensors" not in choices.adapters
    assert "sdxl-controlnet" in choices.controlnets and choices.depth_models == ("dpt",)


@pytest.mark.parametrize(("family", "hidden"), [("sdxl", {"true_cfg", "content_adapter_scale"}),
                                               ("sd15", {"true_cfg", "content_adapter_scale"})])
def test_the_page_hides_the_fields_a_unet_family_cannot_use(family, hidden, request):
    shown = ui.shown_fields(request.getfixturevalue(family))
    assert {name for name, on in shown.items() if not on} == hidden


# --- reference cards and style files ------------------------------------------------------------------------


def test_dropped_references_become_cards_and_their_weights_follow(sdxl, work, tiny, modes):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    style, weights, cleared = app.add_references([str(tiny.style_image), str(modes.second_style)], None, "")
    assert len(style) == 2 and weights == "" and cleared is None and all(work.owns(p) for p in style)
    style, weights, _ = app.add_references([str(modes.init_image)], style, "1, 0.3")
    assert weights == "1, 0.3, 1"
    cards = app.cards(style, weights)
    assert [c["visible"] for c in cards[0::3]][:4] == [True, True, True, False]
    assert 'alt="style reference 2: 64×64"' in cards[4] and cards[5]["value"] == 0.3
    style, weights, *slots, regions = app.remove_reference(0)(style, weights, str(modes.left_mask),
                                                              str(modes.right_mask), *[None] * 4)
    assert (len(style), weights, slots[:2], regions) == (2, "0.3, 1", [str(modes.right_mask), None],
                                                         [str(modes.right_mask)])


def test_a_saved_style_file_carries_a_small_preview_shown_on_its_card(sdxl, work, tiny, modes, tmp_path):
    from instantstyle.app.ui.views import card_html
    from instantstyle.core.embeddings import load_style
    from instantstyle.core.styles import read_preview

    request = ui.form_request(work, form([str(tiny.style_image), str(modes.second_style)]))
    path = sdxl.save_style(request, tmp_path / "two.safetensors")
    assert read_preview(load_style(path).metadata).size == (128, 64)  # two 64 px squares
    assert '<img src="data:image/png;base64,' in card_html(str(path), 0)


@pytest.mark.parametrize(("name", "what"), [("init_image", "init image"), ("mask", "mask"),
                                            ("composition", "composition image"), ("control_image", "control image")])
def test_a_style_file_where_a_picture_goes_is_one_line_naming_the_field(sdxl, work, tiny, tmp_path, name, what):
    """A style file is a reference; as an init image (or mask, ...) it was kept and failed later, deep in the run."""
    path = sdxl.save_style(ui.form_request(work, form([str(tiny.style_image)])), tmp_path / "look.safetensors")
    app = ui.App(ui.PipelineHolder(sdxl), work)
    with pytest.raises(UserError, match=f"^{what} look.safetensors: ") as caught:
        app.generate(form([str(tiny.style_image)], **{name: str(path)}), no_progress)
    assert "\n" not in str(caught.value) and not list(work.inputs.glob("*.safetensors"))


def test_a_style_file_without_a_preview_still_loads_and_shows_as_a_named_card(sdxl, work, tiny, tmp_path):
    from instantstyle.app.ui.views import card_html
    from instantstyle.core.embeddings import load_style, save_style

    made = sdxl.save_style(ui.form_request(work, form([str(tiny.style_image)])), tmp_path / "new.safetensors")
    old = load_style(made)
    old.metadata.pop("preview")
    save_style(tmp_path / "old.safetensors", old)  # as files were saved before previews
    assert "preview" not in load_style(tmp_path / "old.safetensors").metadata
    card = card_html(str(tmp_path / "old.safetensors"), 0)
    assert 'role="img" aria-label="style reference 1: style file"' in card and "<img" not in card
    request = ui.form_request(work, form([str(tmp_path / "old.safetensors")]))
    assert sdxl(request.replace(steps=2, width=64, height=64, seed=7)).images[0].size == (64, 64)


def test_a_crafted_preview_is_never_decoded_past_the_size_of_a_preview(tmp_path):
    import base64
    import io as bytes_io

    from instantstyle.core.styles import read_preview

    buffer = bytes_io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(buffer, format="PNG")
    big = base64.b64encode(buffer.getvalue()).decode()
    assert read_preview({"preview": big}) is None
    assert read_preview({"preview": "not base64 at all!"}) is None
    assert read_preview({"preview": base64.b64encode(b"GIF89a....").decode()}) is None


# --- results, history, cancel -------------------------------------------------------------------------------


def test_each_result_gets_a_score_table_marking_the_best_and_worst_of_its_run(tmp_path):
    from instantstyle.app.ui.views import Shown, ranks, results_html
    from instantstyle.scores.scorer import Scores

    runs = [Scores(clip_style=0.9, clip_text=0.2, content_leak=0.1), Scores(clip_style=0.8, clip_text=0.3,
                                                                           content_leak=0.05)]
    assert ranks(runs, "clip_style") == ["better", "worse"] and ranks(runs, "content_leak") == ["worse", "better"]
    assert ranks([runs[0]], "clip_style") == [""]  # alone in its run: nothing to compare with
    png = tmp_path / "r.png"
    Image.new("RGB", (64, 64)).save(png)
    html = results_html([Shown(str(png), 7, 1, runs[0]), Shown(str(png), 7, 2, runs[1])])
    first, second = html.split('<table class="scores"')[1:]
    assert first.index("style") < first.index("text") < first.index("leak")  # style first, as in captions
    assert '<td class="better" title="higher is better; best of this run">0.900' in first
    assert '<td class="better" title="lower is better; best of this run">0.050' in second
    assert str(tmp_path) not in html  # pictures are data, never a server path


def test_history_pages_the_workdirs_images_newest_first(sdxl, work, tiny):
    import os

    app = ui.App(ui.PipelineHolder(sdxl), work)
    for i in range(26):
        path = write_png(Image.new("RGB", (8, 8)), work.outputs / f"{i:02d}.png", Request(f"cat {i}", style="s.png",
                                                                                          seed=i))
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    items, line, paths, page = app.history(1)
    assert (len(items), items[0][1], page) == (ui.handlers.HISTORY_PAGE, "seed 25 · cat 25", 1)
    assert line == "26 image(s) in this server's workdir; page 1 of 2, newest first"
    items, _, _, page = app.history(5)  # past the end: the last page
    assert (page, [caption for _, caption in items]) == (2, ["seed 1 · cat 1", "seed 0 · cat 0"])


def test_a_history_image_opens_its_request_with_workdir_relative_paths(sdxl, work, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    _, files, _ = app.generate(form([str(tiny.style_image)]), no_progress)
    _, _, paths, _ = app.history(1)
    event = gr.SelectData(None, {"index": 0, "value": None})
    table, shown, picked, use = app.open_history(paths, event)
    assert picked == files[0] and use["interactive"] is True and "<table" in table
    assert str(work.root) not in shown and json.loads(shown)["seed"] == 7


def test_a_cancelled_run_stops_after_its_step_and_leaves_the_pipeline_as_it_found_it(sdxl, tiny):
    import threading

    from instantstyle.app.ui.jobs import Cancelled, run_with_steps

    request = Request("a cat", style=str(tiny.style_image), steps=6, width=64, height=64, seed=7)
    before = pixels(sdxl(request).images[0])
    flag, seen = threading.Event(), []

    def on_step(done: int, total: int) -> None:
        seen.append((done, total))
        flag.set()  # the visitor presses Cancel during the first step

    with pytest.raises(Cancelled, match="cancelled; nothing was saved"):
        run_with_steps(sdxl, request, on_step, flag)
    assert seen == [(1, 6)]
    assert (pixels(sdxl(request).images[0]) == before).all()


def test_the_step_counter_keeps_the_pipelines_own_step_callback(sdxl, tiny):
    import threading

    from instantstyle.app.ui.jobs import run_with_steps

    scheduled = Request("a cat", style=str(tiny.style_image), steps=4, width=64, height=64, seed=7, style_end=0.5)
    seen: list[int] = []
    made = run_with_steps(sdxl, scheduled, lambda done, total: seen.append(done), threading.Event())
    assert seen == [1, 2, 3, 4] and (pixels(made.images[0]) == pixels(sdxl(scheduled).images[0])).all()


# --- the guards (issue 19, items 1 and 14) ------------------------------------------------------------------


class _Blob:
    """What gradio hands ``accept_blobs``: the form fields and the one file."""

    def __init__(self, kind: str, blob_id: str, index, size: int = 10) -> None:
        self.data = {"type": kind, "id": blob_id, "index": index}
        self.files = [("blob", b"x" * size)]


class _Visitor:
    def __init__(self, session: str, host: str = "10.0.0.1") -> None:
        self.session_hash = session
        self.client = type("Client", (), {"host": host})()


def _painter(guard):
    from instantstyle.app.ui.guard import guard_painter

    return guard_painter(mask_painter(), guard)


@pytest.mark.parametrize("index", [1, 30_000_000, "1e9", "null", None])
def test_a_painting_layer_past_the_one_the_page_paints_is_refused_before_any_list_grows(index):
    from fastapi import HTTPException

    editor = _painter(ui.PaintGuard())
    with pytest.raises(HTTPException) as refused:
        editor.accept_blobs(_Blob("layer", "a", index), _Visitor("s"))
    assert refused.value.status_code == 400 and editor.blob_storage == {}


def test_painting_blobs_are_held_to_a_size_a_count_per_visitor_and_an_age():
    from fastapi import HTTPException

    from instantstyle.app.ui import guard as limits

    now = [0.0]
    guard = limits.PaintGuard(clock=lambda: now[0])
    editor = _painter(guard)
    with pytest.raises(HTTPException, match="at most 25 MB"):
        editor.accept_blobs(_Blob("background", "big", None, limits.MAX_BLOB_BYTES + 1), _Visitor("s"))
    for i in range(limits.MAX_PENDING_PER_SESSION):
        editor.accept_blobs(_Blob("layer", f"id{i}", 0), _Visitor("s"))
    with pytest.raises(HTTPException, match="too many paintings waiting"):
        editor.accept_blobs(_Blob("layer", "one-more", 0), _Visitor("s"))
    with pytest.raises(HTTPException, match="belongs to another visitor"):
        editor.accept_blobs(_Blob("composite", "id0", None), _Visitor("intruder"))
    assert guard.held_bytes() == 10 * limits.MAX_PENDING_PER_SESSION
    now[0] += limits.PENDING_TTL_S + 1
    assert guard.held_bytes() == 0 and editor.blob_storage == {}  # forgotten unused
    editor.accept_blobs(_Blob("layer", "fresh", 0), _Visitor("s"))  # room again


def test_a_painting_an_event_used_no_longer_counts():
    guard = ui.PaintGuard()
    editor = _painter(guard)
    editor.accept_blobs(_Blob("layer", "used", 0), _Visitor("s"))
    editor.blob_storage.pop("used")  # gradio's preprocess takes it for the event
    assert guard.held_bytes() == 0


def test_failed_logins_back_off_per_client_and_a_success_forgets_them():
    from instantstyle.app.ui.guard import LOGIN_FREE_TRIES

    now = [0.0]
    throttle = ui.LoginThrottle(clock=lambda: now[0])
    for _ in range(LOGIN_FREE_TRIES):
        assert throttle.wait("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    waits = []
    for _ in range(4):
        throttle.failed("1.2.3.4")
        waits.append(throttle.wait("1.2.3.4"))
    assert waits == [1, 2, 4, 8] and throttle.wait("5.6.7.8") == 0  # another client is not slowed
    now[0] += 8
    throttle.succeeded("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 0


def test_a_component_request_over_its_size_is_refused_before_gradio_reads_it():
    import asyncio

    from instantstyle.app.ui.guard import MAX_COMPONENT_REQUEST, Guard

    called, sent = [], []

    async def gradio(scope, receive, send):
        called.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/component_server", "client": ("1.2.3.4", 9),
             "headers": [(b"content-length", str(MAX_COMPONENT_REQUEST + 1).encode())]}
    asyncio.run(Guard(gradio, ui.LoginThrottle())(scope, receive, send))
    assert called == [] and sent[0]["status"] == 413
    asyncio.run(Guard(gradio, ui.LoginThrottle())({**scope, "headers": [(b"content-length", b"100")]}, receive, send))
    assert called == ["/gradio_api/component_server"]


# --- restyle: the prompt from the photo, CSD guidance, content kept (issue 20) ---------------------------------


@pytest.fixture(scope="module")
def restyle_models(tiny, tmp_path_factory):
    """A photo, a CSD checkpoint with its content head, a tiny BLIP captioner and a ControlNet (a models folder)."""
    from instantstyle.testing.restyle import tiny_restyle_models

    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


@pytest.fixture
def restyling(restyle_models, tmp_path) -> "ui.Workdir":
    return ui.Workdir(tmp_path / "ui", models_dirs=[restyle_models.root])


def restyle_form(rs, **changes) -> dict:
    """A restyle of the fixture photo with the recipe's defaults, its canny ControlNet from the models folder."""
    return {**form([str(rs.style)], restyle=str(rs.photo), controlnet="sdxl-controlnet"), **changes}


def test_the_models_folders_offer_captioning_models_and_csd_checkpoints(restyle_models, restyling, csgo_models,
                                                                        tmp_path):
    choices = restyling.models()
    assert (choices.captioners, choices.csds) == (("blip",), ("csd.pth",))
    other = ui.Workdir(tmp_path / "other", models_dirs=[csgo_models.root]).models()
    assert other.adapters == () and other.controlnets == ("TTPlanet/TTPLanet_SDXL_Controlnet_Tile_Realistic",)


@pytest.fixture(scope="module")
def captioned(sdxl, restyle_models, tmp_path_factory):
    """A restyle made from the form with a blank prompt and the captioning model of the models folder."""
    work = ui.Workdir(tmp_path_factory.mktemp("captioned") / "ui", models_dirs=[restyle_models.root])
    app = ui.App(ui.PipelineHolder(sdxl), work)
    _, files, _ = app.generate(restyle_form(restyle_models, prompt="", caption_model="blip"), no_progress)
    return app, files[0]


def test_a_blank_prompt_with_a_caption_model_is_made_from_the_photo(captioned, restyle_models):
    from instantstyle.core.caption import caption
    from instantstyle.files.images import load_image

    _, png = captioned
    request = read_png_request(png)
    assert request.caption_model == str(restyle_models.captioner)
    assert request.prompt == caption(load_image(request.restyle, "photo"), str(restyle_models.captioner)) != ""


def test_a_restyled_photos_scores_say_how_much_of_it_is_kept(captioned):
    app, png = captioned
    scores = read_png_scores(png)
    assert scores.content_keep is not None and scores.clip_style is not None
    assert '<th scope="row" title="content kept (CLIP, image vs photo)">keep</th>' in app.show_results([png])


def test_a_restored_captioned_png_keeps_its_prompt_and_needs_no_caption_model(sdxl, captioned):
    app, png = captioned
    values = dict(zip(ui.FIELDS, app.restore(str(png)), strict=True))
    assert values["prompt"] == read_png_request(png).prompt and values["caption_model"] == ""
    assert ui.form_request(app.work, values).caption_model is None


def test_csd_guidance_from_the_form_makes_the_apis_pixels(sdxl, restyle_models, restyling):
    request = ui.form_request(restyling, restyle_form(restyle_models, csd="csd.pth", style_guidance=300.0,
                                                      content_guidance=20.0, prompt="a house"))
    assert (request.csd, request.style_guidance, request.content_guidance) == (
        str(restyle_models.csd), 300.0, 20.0)
    app = ui.App(ui.PipelineHolder(sdxl), restyling)
    _, files, _ = app.generate(restyle_form(restyle_models, csd="csd.pth", style_guidance=300.0,
                                            content_guidance=20.0, prompt="a house"), no_progress)
    assert (pixels(Image.open(files[0])) == pixels(sdxl(request).images[0])).all()


@pytest.mark.parametrize("negative", ["", "   "])
def test_a_blank_negative_prompt_in_a_restyle_is_the_recipes(restyle_models, restyling, negative):
    from instantstyle.modes.restyle import recipe_fields

    request = ui.form_request(restyling, restyle_form(restyle_models, negative_prompt=negative))
    assert request.negative_prompt is None
    assert recipe_fields(request)["negative_prompt"] == "lowres, low quality, worst quality, deformed, noisy, blurry"


@pytest.mark.parametrize(("changes", "message"), [
    ({"caption_model": "blip", "prompt": "a house"}, "a caption model makes the prompt from the photo: clear the "
                                                     "prompt, or pick none"),
    ({"caption_model": "/etc", "prompt": ""}, "caption model /etc: not found in the models folders"),
    ({"style_guidance": 300.0}, "CSD style and content guidance need a CSD checkpoint: pick one"),
    ({"content_guidance": 5.0, "csd": "../csd.pth"}, r"CSD checkpoint \.\./csd.pth: not found in the models"),
    ({"style_guidance": -1.0, "csd": "csd.pth"}, "style guidance must be"),
    ({"style_guidance": "lots", "csd": "csd.pth"}, "style guidance must be a number, got 'lots'"),
    ({"caption_model": "blip", "prompt": "", "restyle": None}, "--caption makes the prompt from a photo: the photo"),
])
def test_careless_restyle_fields_are_one_line(restyle_models, restyling, changes, message):
    with pytest.raises(UserError, match=message) as caught:
        ui.form_request(restyling, restyle_form(restyle_models, **changes))
    assert "\n" not in str(caught.value)


# --- CSGO: the composition controls when the loaded adapter is CSGO (issue 21) ----------------------------------


@pytest.fixture(scope="module")
def csgo_pipe(tiny, csgo_models):
    from instantstyle import StylePipeline

    return StylePipeline.from_pretrained(str(tiny.sdxl), str(csgo_models.checkpoint), device="cpu")


@pytest.fixture
def csgo_work(csgo_models, tmp_path) -> "ui.Workdir":
    return ui.Workdir(tmp_path / "ui", models_dirs=[csgo_models.root])


def csgo_form(models, **changes) -> dict:
    """CSGO's image-driven style transfer from the form: its guidance and control scale left blank (CSGO's own)."""
    return {**form([str(models.style_image)], prompt="a photo of a house", content_image=str(models.content_image),
                   controlnet="TTPlanet/TTPLanet_SDXL_Controlnet_Tile_Realistic", guidance=None, control_scale=None,
                   steps=1, width=96, height=64, seed=42, blocks=ui.MODEL_BLOCKS), **changes}


CSGO_REFUSES = {"blocks", "block_table", "content_prompt", "content_scale", "init_image", "strength", "mask",
                "mask_paint", "control", "control_image", "depth_model", "composition", "composition_scale", "regions",
                "style_start", "style_end", "hidiffusion", "restyle", "restyle_content_scale", "inversion_steps",
                "renoise_steps", "csd", "style_guidance", "content_guidance",
                *(f"adapter_{k}{part}" for k in (1, 2) for part in ("", "_style", "_blocks", "_scale"))}


def test_a_csgo_pipeline_shows_its_composition_controls_and_hides_what_csgo_refuses(csgo_pipe, csgo_work):
    from instantstyle.app.ui.page import _shown

    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    described = app.describe_pipeline()
    assert "with CSGO adapter `csgo_4_32.bin`" in described["line"]
    assert {name for name, shown in described["shown"].items() if not shown} == CSGO_REFUSES | {"true_cfg"}
    assert {"content_image", "content_adapter_scale", "guidance", "control_scale", "controlnet"} <= {
        name for name, shown in described["shown"].items() if shown}
    tabs = [tab.name for tab in ui.TABS]
    updates = _shown(app, [], tabs)[1:]
    hidden = {name for name, update in zip(tabs, updates, strict=True) if update["visible"] is not True}
    assert hidden == {"restyle", "image", "composition", "regions", "adapters"}


def test_a_csgo_prompt_can_be_made_from_its_content_image_and_its_images_say_how_much_they_keep(
        csgo_pipe, csgo_models, restyle_models, tmp_path):
    from instantstyle.core.caption import caption
    from instantstyle.files.images import load_image

    work = ui.Workdir(tmp_path / "ui", models_dirs=[csgo_models.root, restyle_models.root])
    app = ui.App(ui.PipelineHolder(csgo_pipe), work)
    _, files, _ = app.generate(csgo_form(csgo_models, prompt="", caption_model="blip"), no_progress)
    made = read_png_request(files[0])
    assert made.prompt == caption(load_image(made.content_image), str(restyle_models.captioner)) != ""
    assert read_png_scores(files[0]).content_keep is not None
    assert ">keep</th>" in app.show_results(files)


def test_a_csgo_sweep_varies_the_content_tokens_and_style_scales_with_generates_pixels(csgo_pipe, csgo_models,
                                                                                        csgo_work):
    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    values = {**csgo_form(csgo_models), "sweep_blocks": "", "sweep_scales": "1", "sweep_content_scales": "0, 0.5"}
    _, cells, _ = app.sweep(values, no_progress)
    made = [read_png_request(path) for path, _ in cells]
    assert [(r.scale, r.content_adapter_scale, r.blocks) for r in made] == [(1.0, 0.0, None), (1.0, 0.5, None)]
    assert [caption.split(" · ")[0] for _, caption in cells] == ["content tokens 0 | scale 1",
                                                                 "content tokens 0.5 | scale 1"]
    _, files, _ = app.generate(csgo_form(csgo_models, content_adapter_scale=0.5), no_progress)
    assert (pixels(Image.open(files[0])) == pixels(Image.open(cells[1][0]))).all()


def test_a_csgo_sweep_with_blocks_rows_is_one_line(csgo_pipe, csgo_models, csgo_work):
    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    values = {**csgo_form(csgo_models), "sweep_blocks": "style", "sweep_scales": "1", "sweep_content_scales": ""}
    with pytest.raises(UserError, match="its blocks are trained in: leave the blocks to compare blank"):
        app.sweep(values, no_progress)


def test_a_csgo_image_from_the_form_has_csgos_defaults_and_the_apis_pixels(csgo_pipe, csgo_models, csgo_work):
    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    _, files, _ = app.generate(csgo_form(csgo_models, content_adapter_scale=0.3, scale=0.8), no_progress)
    made = read_png_request(files[0])
    assert (made.guidance, made.control, made.control_scale, made.content_adapter_scale) == (10.0, "tile", 0.6, 0.3)
    api = csgo_pipe(Request("a photo of a house", style=str(csgo_models.style_image), scale=0.8,
                            content_image=str(csgo_models.content_image), content_adapter_scale=0.3, control="tile",
                            controlnet=str(csgo_models.tile_controlnet), steps=1, width=96, height=64, seed=42))
    assert (pixels(Image.open(files[0])) == pixels(api.images[0])).all()


def test_a_restored_csgo_png_gives_back_its_request_without_a_note(csgo_pipe, csgo_models, csgo_work):
    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    request = complete_for(csgo_pipe, ui.form_request(csgo_work, csgo_form(csgo_models, content_adapter_scale=0.5),
                                                      csgo_pipe))
    values, lost = ui.form_values(csgo_pipe, csgo_work, request)
    assert lost == [] and ui.fit_to_shown(values, app.shown())[1] == []  # nothing hidden is set
    restored = dict(zip(ui.FIELDS, values, strict=True))
    assert (restored["control"], restored["guidance"], restored["control_scale"]) == (ui.NO_CONTROL, 10.0, 0.6)
    assert complete_for(csgo_pipe, ui.form_request(csgo_work, restored, csgo_pipe)) == request


@pytest.mark.parametrize(("changes", "message"), [
    ({"content_adapter_scale": 11.0}, "content adapter scale must be"),
    ({"content_adapter_scale": "half"}, "content adapter scale must be a number, got 'half'"),
    ({"blocks": "style"}, "not with a CSGO checkpoint: --blocks"),  # hidden; an API client may still send it
    ({"content_prompt": "a house", "content_image": None}, "not with a CSGO checkpoint: --content-prompt"),
    ({"control": "canny", "control_image": "CONTENT"}, "not with a CSGO checkpoint: --control canny"),
    ({"guidance": -2.0}, "guidance must be"),
])
def test_careless_csgo_fields_are_one_line(csgo_pipe, csgo_models, csgo_work, changes, message):
    app = ui.App(ui.PipelineHolder(csgo_pipe), csgo_work)
    changes = {k: str(csgo_models.content_image) if v == "CONTENT" else v for k, v in changes.items()}
    with pytest.raises(UserError, match=message) as caught:
        app.generate(csgo_form(csgo_models, **changes), no_progress)
    assert "\n" not in str(caught.value)


def test_content_tokens_on_an_instantstyle_adapter_are_one_line(sdxl, work, tiny):
    app = ui.App(ui.PipelineHolder(sdxl), work)
    with pytest.raises(UserError, match="--content-adapter-scale is for CSGO checkpoints"):
        app.generate(form([str(tiny.style_image)], content_adapter_scale=0.5), no_progress)


# --- video: the Video tab when the server has a video model (issue 22) -------------------------------------------


def test_the_video_tab_and_its_api_exist_only_with_a_video_model(tiny, video_models, tmp_path):
    def endpoints(demo) -> set[str]:
        return {d.api_name for d in demo.fns.values() if d.api_name}

    def has_tab(demo) -> bool:
        return any(getattr(block, "elem_id", None) == "video-result" for block in demo.blocks.values())

    never = lambda: pytest.fail("the page loads no model to be built")  # noqa: E731
    plain = ui.build_app(never, tmp_path / "a")
    with_video = ui.build_app(never, tmp_path / "b", video_model=str(video_models.i2vgen))
    assert not has_tab(plain) and {"video", "video_first_frame"} & endpoints(plain) == set()
    assert has_tab(with_video) and {"video", "video_first_frame"} <= endpoints(with_video)


def test_a_blank_video_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="video model: none given"):
        ui.build_app(lambda: None, tmp_path, video_model="  ")


def test_a_video_model_that_is_no_i2vgen_pipeline_is_one_line(tiny, tmp_path):
    with pytest.raises(UserError, match=r"video model .*sdxl: an StableDiffusionXLPipeline folder; video needs an "
                                        r"I2VGenXLPipeline"):
        ui.build_app(lambda: None, tmp_path, video_model=str(tiny.sdxl))


@pytest.fixture
def video_app(sdxl, video_models, served) -> "ui.App":
    from instantstyle.app.ui.video_tab import VideoMaker

    return ui.App(ui.PipelineHolder(sdxl), served, video=VideoMaker(str(video_models.i2vgen)))


def video_form(video_models, **changes) -> dict:
    """A fast video on the tiny fixtures (as tests/test_video_cli.py): 4 frames at 64 px, 2 steps, the canny first
    frame's ControlNet from the models folder."""
    fields = {f.name: f.default for f in ui.VIDEO_FORM}
    fields.update(video_clip=str(video_models.clip), video_frames=4, video_width=64, video_height=64, video_steps=2,
                  video_inversion_steps=2)
    return {**form([str(video_models.edited_frame)], controlnet="sdxl-controlnet", seed=3, width=0, height=0,
                   control_scale=None, guidance=None),
            **fields, **changes}


def test_the_video_tab_makes_the_video_the_command_makes(video_app, video_models, tiny, modes, tmp_path):
    """The same clip, references, prompt and options through the page and through ``instantstyle video``: the same
    record, first frame and frames."""
    import av
    from click.testing import CliRunner

    from instantstyle.app.cli import main
    from instantstyle.modes.video import read_video_request

    video, first, files, shown, _ = video_app.make_video(video_form(video_models), no_progress)
    assert [Path(f).name.split("-", 2)[-1] for f in files] == ["video.mp4", "video.first.png", "video.json",
                                                                "video.scores.json"]
    assert str(video_app.work.root) not in shown and json.loads(shown)["video"]["clip"].startswith("inputs/")
    made = read_video_request(video)
    cli = CliRunner().invoke(main, [str(a) for a in [
        "video", video_models.clip, "--style", made.request.style[0].path, "--prompt", "a cat", "--model", tiny.sdxl,
        "--adapter", tiny.sdxl_adapter, "--controlnet", modes.sdxl_controlnet, "--video-model", video_models.i2vgen,
        "--size", "64", "--frames", "4", "--steps", "2", "--inversion-steps", "2", "--first-frame-steps", "2",
        "--seed", "3", "--device", "cpu", "-o", tmp_path / "cli.mp4"]])
    assert cli.exit_code == 0, cli.output
    theirs = read_video_request(tmp_path / "cli.mp4")
    assert made.options == theirs.options and made.request.replace(model=None, adapter=None) == theirs.request.replace(
        model=None, adapter=None)
    assert (pixels(Image.open(first)) == pixels(Image.open(tmp_path / "cli.first.png"))).all()

    def frames(path) -> np.ndarray:
        with av.open(str(path)) as container:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])

    assert frames(video).shape == (4, 64, 64, 3) and (frames(video) == frames(tmp_path / "cli.mp4")).all()


def test_the_first_frame_preview_is_the_videos_first_frame(video_app, video_models):
    preview = video_app.preview_first_frame(video_form(video_models), no_progress)
    _, first, _, _, _ = video_app.make_video(video_form(video_models), no_progress)
    assert read_png_request(preview).seed == 3
    assert (pixels(Image.open(preview)) == pixels(Image.open(first))).all()


def test_a_cancelled_video_stops_between_steps_and_saves_nothing(video_app, video_models, monkeypatch):
    from instantstyle.app.ui.jobs import Cancelled

    steps = []

    def progress(value, desc="", unit=""):
        steps.append(desc)
        if desc == "inversion":  # the visitor presses Cancel during the first inversion step
            video_app.jobs.cancel("visitor")

    before = sorted(video_app.work.outputs.iterdir())
    with pytest.raises(Cancelled, match="cancelled; nothing was saved"):
        video_app.make_video(video_form(video_models, video_steps=4, video_inversion_steps=4), progress,
                             session="visitor")
    assert steps.count("inversion") == 1 and "sampling" not in steps
    assert sorted(video_app.work.outputs.iterdir()) == before


def test_a_cancelled_first_frame_preview_stops_after_its_step_and_saves_nothing(video_app, video_models):
    from instantstyle.app.ui.jobs import Cancelled

    steps = []

    def progress(value, desc="", unit=""):
        steps.append(value)
        if value == (1, 4):  # the visitor presses Cancel during the first denoising step
            video_app.jobs.cancel("visitor")

    before = sorted(video_app.work.outputs.iterdir())
    with pytest.raises(Cancelled, match="cancelled; nothing was saved"):
        video_app.preview_first_frame(video_form(video_models, steps=4), progress, session="visitor")
    assert steps == [0, 0, (1, 4)] and sorted(video_app.work.outputs.iterdir()) == before
    assert video_app.preview_first_frame(video_form(video_models), no_progress)  # and the next one runs


def test_a_video_cancelled_while_its_first_frame_is_made_stops_there(video_app, video_models):
    from instantstyle.app.ui.jobs import Cancelled

    steps = []

    def progress(value, desc="", unit=""):
        steps.append((desc, value))
        if desc == "first-frame" and value == (1, 4):
            video_app.jobs.cancel("visitor")

    before = sorted(video_app.work.outputs.iterdir())
    with pytest.raises(Cancelled, match="cancelled; nothing was saved"):
        video_app.make_video(video_form(video_models, steps=4), progress, session="visitor")
    assert [s for s in steps if s[0] == "first-frame"] == [("first-frame", (0, 1)), ("first-frame", (1, 4))]
    assert not any(desc.startswith("inversion") for desc, _ in steps)
    assert sorted(video_app.work.outputs.iterdir()) == before


@pytest.mark.parametrize(("changes", "message"), [
    ({"video_clip": None}, "upload a clip to restyle first"),
    ({"video_clip": "NOTES"}, "clip notes.mp4: not a readable video"),
    ({"video_clip": "STYLE"}, r"clip style.png: give a video \(.mp4, .mov, .mkv\)"),
    ({"video_frames": 1}, "frames must be"),
    ({"video_width": 100}, "video width must be a multiple of 8, got 100"),
    ({"video_steps": 3, "video_inversion_steps": 2}, "inversion"),
    ({"video_temporal_injection": 2.0}, "temporal injection must be"),
    ({"video_fps": "fast"}, "fps must be a whole number, got 'fast'"),
    ({"video_duration": 0}, "duration must be above 0 seconds, got 0"),
    ({"video_duration": "long"}, "duration must be a number, got 'long'"),
    ({"video_first_frame": "NOTES"}, "first frame notes.mp4: not a readable image"),
])
def test_careless_video_fields_are_one_line(video_app, video_models, tiny, tmp_path, changes, message):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    changes = {k: {"NOTES": str(notes), "STYLE": str(tiny.style_image)}.get(v, v) if isinstance(v, str) else v
               for k, v in changes.items()}
    with pytest.raises(UserError, match=message) as caught:
        video_app.make_video(video_form(video_models, **changes), no_progress)
    assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert not list(video_app.work.outputs.glob("*.source.png"))  # a refused video leaves nothing behind


def test_a_videos_scores_are_the_commands_table_and_file(video_app, video_models):
    video, _, files, _, table = video_app.make_video(video_form(video_models), no_progress)
    scores = json.loads(Path(video).with_suffix(".scores.json").read_text())
    assert str(Path(video).with_suffix(".scores.json")) in files and len(scores["frames"]) == 4
    header, rule, row = table.splitlines()
    assert "clip_style (mean)" in header and "temporal_consistency" in header and rule.startswith("| ---")
    assert row.split("|")[1].strip() == "4"


def test_a_ready_first_frame_starts_the_video_and_is_its_preview(video_app, video_models):
    """The tab's ready first frame is the command's ``--first-frame``: the form's request is not run, the video
    starts with it (cropped to the video's size), and the preview shows it so."""
    values = video_form(video_models, video_first_frame=str(video_models.edited_frame), video_width=96,
                        video_height=64)
    preview = video_app.preview_first_frame(values, no_progress)
    video, first, _, shown, _ = video_app.make_video(values, no_progress)
    assert Image.open(preview).size == (96, 64)
    assert (pixels(Image.open(preview)) == pixels(Image.open(first))).all()
    record = json.loads(shown)["video"]
    assert record["first_frame"].startswith("inputs/") and not Path(video).with_suffix(".source.png").exists()


def test_the_duration_field_is_the_videos_duration_and_blank_runs_to_the_clips_end(video_app, video_models):
    from instantstyle.app.ui.video_tab import video_options

    assert video_options(video_form(video_models), "m").duration is None  # blank: to the clip's end
    assert video_options(video_form(video_models, video_start=0.5, video_duration=1.0), "m").duration == 1.0


def test_a_clips_line_says_what_its_header_says_or_why_it_is_refused(video_app, video_models, tmp_path):
    assert video_app.clip_info(str(video_models.clip)).startswith("clip.mp4: ")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert video_app.clip_info(str(tmp_path / "empty.mp4")) == "**clip empty.mp4: the file is empty**"


def test_the_history_lists_a_videos_first_frame_but_not_its_source_frame(video_app, video_models):
    video_app.make_video(video_form(video_models), no_progress)
    _, _, paths, _ = video_app.history(1)
    names = [Path(p).name for p in paths]
    assert any(n.endswith(".first.png") for n in names) and not any(n.endswith(".source.png") for n in names)
