"""Careless and hostile input (issue 19): every case ends as one line (exit 2), a skipped job line or a warning,
never a traceback, a hang or lost work."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from instantstyle import Request, UserError
from instantstyle.app.batch import read_jobs, run_batch
from instantstyle.core.request import PNG_KEY
from instantstyle.files.atomic import save_png_atomically

from .conftest import FAST
from .test_cli import run

#: A request field given a value of the wrong kind, as a crafted job line, PNG or style file holds it, and the
#: message; "steps" holds a JSON integer of 5,000 digits (past Python's limit on converting digits to an int).
CRAFTED = [
    ("model", 5, "model must be a path, got 5"),
    ("adapter", [1], "adapter must be a path, got [1]"),
    ("image_encoder", {"a": 1}, "image encoder must be a path, got {'a': 1}"),
    ("content_text_encoder", 3.5, "content text encoder must be a path, got 3.5"),
    ("content_image", 7, "content image must be a path, got 7"),
    ("adapters", [{"path": "a.safetensors", "style": ["s.png"], "regions": [5]}],
     "adapter a.safetensors: a region must be a mask image path, got 5"),
    ("steps", "1" * 5000, "invalid JSON (a number of more than 4300 digits)"),
]


def crafted_json(name: str, value: object, style: str = "s.png", **fields: object) -> str:
    """A request as JSON text with ``name`` set to ``value`` (a string of digits goes in as a bare number)."""
    text = json.dumps({"prompt": "a boat", "style": style, **fields, name: "NUMBER" if name == "steps" else value})
    return text.replace('"NUMBER"', str(value)) if name == "steps" else text


@pytest.mark.parametrize(("name", "value", "message"), CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_request_field_of_the_wrong_kind_is_one_line(name, value, message):
    with pytest.raises(UserError) as caught:
        Request.from_json(crafted_json(name, value))
    assert str(caught.value) == message


def test_a_job_line_of_the_wrong_kind_is_skipped_with_its_line_and_the_next_line_runs(sdxl, tiny, tmp_path):
    style = str(tiny.style_image)
    lines = [crafted_json(name, value, style, **FAST) for name, value, _ in CRAFTED]
    lines.append(json.dumps({"id": "good", "prompt": "a boat", "style": style, **FAST}))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    reported: list[str] = []
    report = run_batch(jobs, tmp_path / "out", pipeline=sdxl, on_problem=reported.append)
    assert reported == [f"jobs.jsonl line {i + 1}: {message}" for i, (_, _, message) in enumerate(CRAFTED)]
    assert (report.done, report.failed) == (1, 0) and (tmp_path / "out" / "good.png").is_file()


def crafted_png(path: Path, name: str, value: object, style: str) -> Path:
    return save_png_atomically(Image.new("RGB", (64, 64)), path, {PNG_KEY: crafted_json(name, value, style)})


@pytest.mark.parametrize(("name", "value", "message"), CRAFTED[:1] + CRAFTED[-2:], ids=["model", "regions", "digits"])
def test_generate_from_and_score_refuse_a_crafted_png_in_one_line(capsys, tiny, tmp_path, name, value, message):
    png = crafted_png(tmp_path / "crafted.png", name, value, str(tiny.style_image))
    for args in (["generate", "--from", png, "-o", tmp_path / "out.png"], ["score", png, "--model", tiny.sdxl]):
        code, _, err = run(capsys, *args)
        assert (code, err) == (2, f"error: {png}: {message}\n")


ui = pytest.importorskip("gradio") and pytest.importorskip("instantstyle.app.ui")


@pytest.mark.parametrize(("name", "value", "message"), CRAFTED[:1] + CRAFTED[-2:], ids=["model", "regions", "digits"])
def test_the_page_refuses_a_crafted_png_or_style_file_in_one_line(sdxl, tiny, tmp_path, name, value, message):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    app = ui.App(ui.PipelineHolder(sdxl), ui.Workdir(tmp_path / "ui"))
    png = crafted_png(tmp_path / "crafted.png", name, value, str(tiny.style_image))
    with pytest.raises(UserError) as caught:
        app.restore(str(png))
    assert str(caught.value) == f"crafted.png: {message}"
    made = sdxl.save_style(Request("a boat", style=str(tiny.style_image)), tmp_path / "made.safetensors")
    with safe_open(str(made), framework="pt") as f:
        metadata = f.metadata()
    style = tmp_path / "crafted.safetensors"
    save_file(load_file(str(made)), str(style), metadata={**metadata, "request": crafted_json(name, value, "s.png")})
    with pytest.raises(UserError) as caught:
        app.style_uploaded([str(style)])
    assert str(caught.value) == f"style file crafted.safetensors: {message}"


def test_read_jobs_keeps_every_good_line_around_a_crafted_one(tiny, tmp_path):
    style = str(tiny.style_image)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "prompt": "p", "style": style}) + "\n"
                    + crafted_json("model", 5, style) + "\n" + json.dumps({"id": "b", "prompt": "p", "style": style}))
    read = read_jobs(jobs)
    assert [j.id for j in read.jobs] == ["a", "b"]
    assert read.problems == ["jobs.jsonl line 2: model must be a path, got 5"]


HOSTILE_VALUES = [None, True, -1, 1.5, 1e308, float("nan"), 10**400, 10**4000, "", "\0", "\ud800", "x" * 5000, [],
                  {}, [5], [None], {"path": 5}, {"path": "a.png", "weight": "x"}, [{"path": "a.png", "style": [5]}]]


@pytest.mark.parametrize("name", [f.name for f in __import__("dataclasses").fields(Request)])
def test_every_request_field_given_any_json_value_is_accepted_or_one_line(name):
    """One validation of every field's type and range: a value either makes a request that serialises, or a short
    one-line ``UserError``, never another exception."""
    for value in HOSTILE_VALUES:
        data = {"prompt": "a boat", "style": "s.png", name: value}
        try:
            request = Request.from_dict(data)
        except UserError as err:
            assert "\n" not in str(err) and len(str(err)) < 400, (name, value, str(err))
            continue
        assert Request.from_json(request.to_json()) == request, (name, value)


def test_a_prompt_holding_a_lone_surrogate_is_one_line_before_the_tokenizer(sdxl, tiny, capsys, tmp_path):
    for fields in ({"prompt": "a \ud800 cat"}, {"prompt": "a cat", "negative_prompt": "\udcff"}):
        with pytest.raises(UserError, match="half of a UTF-16 pair and no character"):
            sdxl(style=str(tiny.style_image), **{**FAST, **fields})
    code, _, err = run(capsys, "score", tiny.style_image, "--prompt", "a \ud800 cat", "--model", tiny.sdxl)
    assert (code, err) == (2, "error: --prompt holds '\\ud800' at character 3, half of a UTF-16 pair and no character "
                              "(not Unicode text)\n")


# --- item 3: a FIFO, a device or a socket where a small file should be ------------------------------------------


def finishes(fifo: Path, call, seconds: float = 20.0) -> dict:
    """Run ``call`` in a thread; if it is still waiting after ``seconds`` (on the FIFO), release it and fail."""

    box: dict = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as err:  # noqa: BLE001  (the test inspects it)
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer comes and goes: the reader sees the end
        thread.join()
        pytest.fail(f"waited on the FIFO {fifo} for {seconds} s")
    return box


@pytest.fixture
def fifo(tmp_path) -> Path:

    path = tmp_path / "fifo.json"
    os.mkfifo(path)
    return path


def test_a_fifo_as_a_presets_file_is_one_line_at_once_on_every_surface(capsys, tiny, tmp_path, fifo):
    from instantstyle.core.blocks import read_presets

    message = f"presets file {fifo}: not a regular file (a FIFO, device or socket)"
    box = finishes(fifo, lambda: read_presets(fifo))
    assert str(box.get("error")) == message
    box = finishes(fifo, lambda: run(capsys, "generate", "--model", tmp_path / "unused", "--style", tiny.style_image,
                                     "--prompt", "a cat", "--blocks", f"@{fifo}:x", "-o", tmp_path / "o.png"))
    assert box["result"][::2] == (2, f"error: {message}\n")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "prompt": "p", "style": str(tiny.style_image), "blocks": "@fifo.json:x"})
                    + "\n" + json.dumps({"id": "b", "prompt": "p", "style": str(tiny.style_image)}) + "\n")
    box = finishes(fifo, lambda: read_jobs(jobs))
    assert [j.id for j in box["result"].jobs] == ["b"]
    assert box["result"].problems == [f"jobs.jsonl line 1: {message}"]
    flags = ["probe-blocks", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", tiny.style_image,
             "--prompt", "a cat", "-o", tmp_path / "probe", "--save-presets", fifo]
    box = finishes(fifo, lambda: run(capsys, *flags))
    assert box["result"][::2] == (2, f"error: {message}\n")


def test_a_fifo_or_a_device_as_a_login_file_is_one_line_at_once(fifo):
    for path in (fifo, Path("/dev/zero")):
        box = finishes(fifo, lambda path=path: ui.read_auth((), [str(path)]))
        assert str(box.get("error")) == f"auth file {path}: not a regular file (a FIFO, device or socket)"


def test_presets_are_never_written_over_a_fifo(fifo):
    from instantstyle.scores.preset_file import write_presets

    box = finishes(fifo, lambda: write_presets(fifo, {"mine": "style"}, merge=False))
    assert str(box.get("error")) == f"presets file {fifo}: not a regular file (a FIFO, device or socket)"
    assert fifo.is_fifo()


# --- item 6: a full disk (a real one: RLIMIT_FSIZE makes the kernel refuse writes past a size, short writes too) --


def with_file_limit(limit: int):
    """For ``subprocess``: files may grow to ``limit`` bytes, as on a full disk (writes past it fail with EFBIG,
    one that straddles it is short); SIGXFSZ is ignored, as ENOSPC raises no signal either."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return limit_files


def python(code: str, *args: object, limit: int) -> subprocess.CompletedProcess[str]:

    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          preexec_fn=with_file_limit(limit))


def test_a_short_write_on_a_full_disk_never_leaves_a_torn_manifest_line(tmp_path):
    code = """if True:
        import sys
        from pathlib import Path
        from instantstyle.app.batch import Manifest
        from instantstyle.errors import UserError
        manifest = Manifest(Path(sys.argv[1]))
        for i in range(10):
            try:
                manifest.append({"id": f"job-{i}", "status": "done", "pad": "x" * 60})
            except UserError as err:
                sys.exit(f"error: {err}")
    """
    done = python(code, tmp_path, limit=250)  # two lines of 100 bytes fit; the third is cut short at 250
    manifest = tmp_path / "manifest.jsonl"
    assert done.returncode == 1 and done.stderr == f"error: manifest {manifest}: cannot write (File too large)\n"
    assert [json.loads(line)["id"] for line in manifest.read_text().split("\n")[:-1]] == ["job-0", "job-1"]
    assert manifest.read_text().endswith("\n")


def test_a_full_disk_while_writing_an_image_leaves_no_temporary_file_and_names_the_file(tmp_path):
    code = """if True:
        import sys
        import numpy as np
        from PIL import Image
        from instantstyle.files.atomic import save_png_atomically
        from instantstyle.errors import UserError
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        try:
            save_png_atomically(noise, sys.argv[1], {})
        except UserError as err:
            sys.exit(f"error: {err}")
    """
    done = python(code, tmp_path / "a.png", limit=4096)
    assert done.stderr == f"error: {tmp_path / 'a.png'}: cannot write (File too large)\n"
    assert list(tmp_path.iterdir()) == []


def test_a_rerun_that_only_compacts_on_a_full_disk_warns_and_exits_0(tiny, tmp_path):

    jobs = tmp_path / "jobs.jsonl"
    models = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    jobs.write_text("".join(json.dumps({"id": f"job-{i}", "prompt": "p", "style": str(tiny.style_image), **FAST,
                                        **models}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    out.mkdir()
    lines = []
    for job in read_jobs(jobs).jobs:  # each job done, recorded twice: the rerun compacts the manifest
        (out / job.outputs[0]).write_bytes(b"made")
        lines += [json.dumps({"id": job.id, "key": job.key, "status": "done", "outputs": job.outputs})] * 2
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    before = (out / "manifest.jsonl").read_text()
    done = subprocess.run([sys.executable, "-m", "instantstyle", "batch", str(jobs), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=300, preexec_fn=with_file_limit(100))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"warning: manifest not compacted: {out / 'manifest.jsonl'}: cannot write (File too "
                           "large); its superseded lines stay (the last line of a job counts)\n")
    assert done.stdout.startswith("3 jobs: 0 done, 3 already done, 0 failed")
    assert (out / "manifest.jsonl").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == [".instantstyle-batch.lock", "job-0.png", "job-1.png",
                                                     "job-2.png", "manifest.jsonl"]


# --- item 9: --save-style over an existing file; item 13: a job id ending in a newline --------------------------


def test_save_style_refuses_an_existing_file_before_the_model_loads(capsys, tiny, tmp_path):
    existing = tmp_path / "style.safetensors"
    existing.write_bytes(b"kept")
    flags = ["generate", "--model", tmp_path / "never-loaded", "--style", tiny.style_image, "--prompt", "a cat",
             "-o", tmp_path / "o.png", "--save-style", existing]
    code, _, err = run(capsys, *flags)
    assert (code, err) == (2, f"error: --save-style {existing} exists; pass --overwrite to replace it\n")
    assert existing.read_bytes() == b"kept" and not (tmp_path / "o.png").exists()


def test_save_style_into_a_missing_folder_is_one_line_before_the_model_loads(capsys, tiny, tmp_path):
    flags = ["generate", "--model", tmp_path / "never-loaded", "--style", tiny.style_image, "--prompt", "a cat",
             "-o", tmp_path / "o.png", "--save-style", tmp_path / "file" / "style.safetensors"]
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = run(capsys, *flags)
    assert code == 2 and err == (f"error: --save-style {tmp_path / 'file' / 'style.safetensors'}: its folder "
                                 f"{tmp_path / 'file'}: is a file\n")


@pytest.mark.parametrize("job_id", ["cat\n", "cat\r", "cat\n\n", "\ncat"])
def test_a_job_id_with_a_line_break_is_refused(tiny, tmp_path, job_id):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": job_id, "prompt": "p", "style": str(tiny.style_image)}) + "\n")
    read = read_jobs(jobs)
    assert read.jobs == [] and read.problems == [
        f"jobs.jsonl line 1: id {job_id!r} must be 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
        "or '-' (it names the output file)"]


# --- item 11: a long per-block spec in a sweep --------------------------------------------------------------------


def test_a_sweep_row_with_a_long_spec_gets_a_short_cell_name_and_keeps_the_spec_in_the_png(sdxl, tiny,
                                                                                                   tmp_path):
    from instantstyle.app.sweep import Axes, render_sweep
    from instantstyle.core.request import read_png_request

    long_spec = ",".join(["up_blocks.0.attentions.1=0.5"] * 11 + ["down_blocks.2.attentions.1=0.25"])
    assert len(long_spec) == 350
    out = render_sweep(sdxl, Request("a cat", style=str(tiny.style_image), **FAST), Axes(("style", long_spec), (1.0,)),
                       tmp_path / "sheet.png")
    names = [p.name for row in out.paths for p in row]
    assert names[0] == "sheet-style-s1.png"
    assert names[1].startswith("sheet-r2-") and len(names[1]) <= len("sheet-r2-12345678-s1.png")
    assert read_png_request(out.paths[1][0]).blocks == long_spec


# --- item 10: a style file with tensors of the wrong shape ---------------------------------------------------------


def reshaped_style_file(sdxl, tiny, path: Path, embeds_shape=None, negative_shape=None) -> Path:
    """A style file made by ``sdxl`` with its tensors swapped for random ones of other shapes (metadata kept)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    made = sdxl.save_style(Request("a boat", style=str(tiny.style_image)), path.with_name("made.safetensors"))
    with safe_open(str(made), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(made))
    for name, shape in (("embeds", embeds_shape), ("negative", negative_shape)):
        if shape is not None:
            tensors[name] = torch.randn(shape)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(("embeds", "negative", "message"), [
    ((1, 3, 32), None, "embeddings of shape (1, 3, 32); a global style is (1, width)"),
    ((2, 32), None, "embeddings of shape (2, 32); a global style is (1, width)"),
    (None, (1, 3, 32), "a negative of shape (1, 3, 32) for embeddings of shape (1, 32)"),
    ((1, 0), (1, 0), "embeddings of shape (1, 0); a global style is (1, width)"),
])
def test_a_style_file_of_the_wrong_shape_is_one_line_before_the_model_loads(sdxl, tiny, capsys, tmp_path, embeds,
                                                                             negative, message):
    width = sdxl.save_style(Request("a boat", style=str(tiny.style_image)), tmp_path / "w.safetensors")
    from instantstyle.core.embeddings import load_style

    assert load_style(width).embeds.shape == (1, 32)  # the tiny encoder's width, as the cases assume
    path = reshaped_style_file(sdxl, tiny, tmp_path / "bad.safetensors", embeds, negative)
    code, _, err = run(capsys, "generate", "--model", tmp_path / "never-loaded", "--style", path, "--prompt", "a cat",
                       "-o", tmp_path / "o.png")
    assert (code, err) == (2, f"error: style file {path}: holds {message}\n")
    with pytest.raises(UserError, match=f"^style file {path}: holds"):
        sdxl(prompt="a cat", style=str(path), **FAST)
    work = ui.Workdir(tmp_path / "ui")
    with pytest.raises(UserError, match="^style file bad.safetensors: holds"):
        work.keep_upload(path, "style file", style_file=True)


# --- item 4 and item 14: CSD checkpoints of another shape, or holding NaN ---------------------------------------


def csd_file(path: Path, change=None, **dims) -> Path:
    """A tiny CSD checkpoint (``.safetensors``) in the authors' layout, ``change`` applied to its state."""
    from safetensors.torch import save_file

    from instantstyle.testing.csd import csd_state_dict

    state = csd_state_dict(**dims)
    if change is not None:
        change(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize(("dims", "message"), [
    ({"width": 16, "image_size": 4200}, "a ViT of patch 14 at 4200 px (90,001 positions)"),
    ({"width": 16, "patch": 7, "image_size": 224}, "a ViT of patch 7 at 224 px (1,025 positions)"),
    ({"width": 2048, "layers": 1}, "a ViT 2048 wide"),
    ({"width": 16, "layers": 40}, "a ViT of 40 layers"),
])
def test_a_csd_checkpoint_of_another_shape_than_csds_is_refused_before_it_runs(tmp_path, dims, message):
    from instantstyle.scores.csd import load_csd

    path = csd_file(tmp_path / "csd.safetensors", **dims)
    with pytest.raises(UserError) as caught:
        load_csd(path)
    assert str(caught.value) == (f"CSD checkpoint {path}: {message}; CSD is a CLIP ViT-B/16 or ViT-L/14 at 224 px "
                                 "(at most 1024 wide, 24 layers)")


def test_the_tiny_csd_of_the_tests_is_the_shape_of_a_real_one(tmp_path):
    from instantstyle.scores.csd import load_csd

    assert load_csd(csd_file(tmp_path / "csd.safetensors")).image_size == 224


def test_a_csd_checkpoint_holding_nan_is_one_line_not_a_silent_dash(capsys, tiny, tmp_path):
    def poison(state):
        state["backbone.transformer.resblocks.1.mlp.c_fc.weight"][0, 0] = float("nan")

    path = csd_file(tmp_path / "csd.safetensors", poison)
    code, _, err = run(capsys, "score", tiny.style_image, "--style", tiny.style_image, "--csd", path,
                       "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter)
    assert (code, err) == (2, f"error: CSD checkpoint {path}: holds values that are not finite numbers (NaN or "
                              "inf) in backbone.transformer.resblocks.1.mlp.c_fc.weight\n")


# --- items 5 and 12: model folders whose configs lie ------------------------------------------------------------


def lying_model(tiny, folder: Path, file: str, content: object) -> Path:
    """The tiny SDXL (its files linked) with one config replaced: ``content`` as JSON, or as bytes/text as it is;
    a dict is merged into the file's own."""
    import shutil

    shutil.copytree(tiny.sdxl, folder, copy_function=os.symlink)
    target = folder / file
    if isinstance(content, dict):
        content = json.dumps({**json.loads(target.read_text()), **content})
    target.unlink()
    target.write_bytes(content if isinstance(content, bytes) else str(content).encode())
    return folder


LIES = [
    ("model_index.json", "[" * 100_000 + "]" * 100_000, "model_index.json: JSON nested more than 32 levels deep"),
    ("unet/config.json", '{"sample_size": 1' + "0" * 5000 + "}",
     "unet/config.json: invalid JSON (a number of more than 4300 digits)"),
    ("model_index.json", "[1, 2]", "model_index.json: not a JSON object"),
    ("model_index.json", b"\xff\xfe{}", "model_index.json: not UTF-8 text"),
    ("model_index.json", {"vae": ["os", "system"]},
     "model_index.json: vae comes from 'os'; a model's parts come from diffusers or transformers"),
    ("model_index.json", {"vae": "AutoencoderKL"},
     "model_index.json: vae must be [library, class] (e.g. [\"diffusers\", \"AutoencoderKL\"]), got 'AutoencoderKL'"),
    ("unet/config.json", {"attention_head_dim": 0},
     "unet/config.json: attention_head_dim 0 is not a count from 1 to 256"),
    ("unet/config.json", {"layers_per_block": 200_000},
     "unet/config.json: layers_per_block 200000 is not a count from 1 to 256"),
    ("unet/config.json", {"transformer_layers_per_block": [1, 2, 10**9]},
     "unet/config.json: transformer_layers_per_block 1000000000 is not a count from 1 to 256"),
    ("unet/config.json", {"in_channels": "four"},
     "unet/config.json does not describe a UNet2DConditionModel (TypeError"),
]


#: The lies that made diffusers build modules without end (run in a child under a memory cap, in case that returns).
COUNTS = [lie for lie in LIES if "is not a count" in lie[2] and lie[2].split()[1] != "attention_head_dim"]


@pytest.mark.parametrize(("file", "content", "message"), [lie for lie in LIES if lie not in COUNTS],
                         ids=[f"{i}" for i, lie in enumerate(LIES) if lie not in COUNTS])
def test_a_model_folder_whose_config_lies_is_one_line_before_anything_is_built(capsys, tiny, tmp_path, file, content,
                                                                               message):
    model = lying_model(tiny, tmp_path / "model", file, content)
    code, _, err = run(capsys, "generate", "--model", model, "--adapter", tiny.sdxl_adapter, "--style",
                       tiny.style_image, "--prompt", "a cat", "-o", tmp_path / "o.png")
    assert code == 2 and err.startswith(f"error: model {model}: {message}") and err.count("\n") == 1, err


def test_a_config_counting_200000_layers_is_one_line_before_a_module_is_built(tiny, tmp_path):
    """In a child process under a 6 GB cap: before the fix, 200,000 layers grew 25 MB/s while the blocks check built
    the model's skeleton."""
    models = [lying_model(tiny, tmp_path / f"model-{i}", file, content) for i, (file, content, _) in enumerate(COUNTS)]
    code = """if True:
        import sys
        from instantstyle.app.cli import entry
        for model in sys.argv[2:]:
            try:
                entry(["generate", "--model", model, "--style", sys.argv[1], "--prompt", "a cat", "-o", "o.png"])
            except SystemExit as exit_:
                print(exit_.code, file=sys.stderr)
    """
    done = subprocess.run([sys.executable, "-c", code, str(tiny.style_image), *map(str, models)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)))
    assert done.stderr.splitlines() == [line for model, (_, _, message) in zip(models, COUNTS, strict=True)
                                        for line in (f"error: model {model}: {message}", "2")]


def test_an_sd3_config_of_200000_layers_is_refused_before_it_is_built():
    from instantstyle.loading.configs import check_config_counts

    with pytest.raises(UserError, match="^model m: transformer/config.json: num_layers 200000 is not a count from 1"):
        check_config_counts({"num_layers": 200_000, "num_attention_heads": 24}, "model m: transformer/config.json")


# --- item 7: symlinks out of --models-dir; a file's values never quoted -------------------------------------------


@pytest.fixture
def linked_models(tmp_path) -> Path:
    """A models folder holding a presets file, a link to a folder outside it and a link to a file outside it; the
    outside files hold secrets."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "creds.json").write_text(json.dumps({"db": {"password": "hunter2"}, "api_key": "sk-live-123"}))
    models = tmp_path / "models"
    models.mkdir()
    (models / "p.json").write_text(json.dumps({"mine": "up_blocks.0.attentions.1=0.5"}))
    (models / "linkdir").symlink_to(outside)
    (models / "link.json").symlink_to(outside / "creds.json")
    (models / "inner.json").symlink_to(models / "p.json")  # a link that stays inside is fine
    return models


def test_a_symlink_out_of_a_models_folder_is_refused_like_a_missing_file(tmp_path, linked_models):
    work = ui.Workdir(tmp_path / "ui", models_dirs=[linked_models])
    for ref in ("linkdir/creds.json", "link.json", "linkdir"):
        with pytest.raises(UserError) as caught:
            work.model_path("presets file", ref)
        assert str(caught.value) == (f"presets file {ref}: not found in the models folders this page may read; the "
                                     "server's operator allows folders with `instantstyle ui --models-dir DIR`")
        with pytest.raises(UserError, match="not found in the models folders"):
            work.blocks_spec(f"@{ref}:api_key")
    assert work.blocks_spec("@inner.json:mine") == "up_blocks.0.attentions.1=0.5"


def test_a_models_folder_given_through_a_symlink_still_serves_its_files(tmp_path, linked_models):
    (tmp_path / "models-link").symlink_to(linked_models)
    work = ui.Workdir(tmp_path / "ui", models_dirs=[tmp_path / "models-link"])
    assert work.blocks_spec("@p.json:mine") == "up_blocks.0.attentions.1=0.5"


def test_the_page_never_quotes_the_values_of_a_file_it_reads(sdxl, tiny, tmp_path, linked_models):
    """A JSON file of secrets inside the models folder, named as a presets file: the messages name the preset,
    never its value."""
    (linked_models / "secrets.json").write_text(json.dumps({"db": {"password": "hunter2"}}))
    (linked_models / "keys.json").write_text(json.dumps({"api_key": "sk-live-123"}))
    work = ui.Workdir(tmp_path / "ui", models_dirs=[linked_models])
    app = ui.App(ui.PipelineHolder(sdxl), work)
    attempts = [
        ("db", lambda: work.blocks_spec("@secrets.json:db")),
        ("api_key", lambda: app.generate(form_values(tiny, blocks="@keys.json:api_key"), lambda *a, **k: None)),
        ("api_key", lambda: app.load_blocks("@keys.json:api_key")),
        ("api_key", lambda: app.sweep({**form_values(tiny), "sweep_blocks": "@keys.json:api_key", "sweep_scales": "1",
                                       "sweep_content_scales": ""}, lambda *a, **k: None)),
    ]
    for name, call in attempts:
        with pytest.raises(UserError) as caught:
            call()
        message = str(caught.value)
        assert "hunter2" not in message and "sk-live" not in message and "password" not in message, message
        assert f"preset '{name}'" in message, message


def form_values(tiny, **changes) -> dict:
    from .test_ui import form

    return form([str(tiny.style_image)], **changes)


def test_a_batch_that_fills_the_disk_stops_with_one_line_naming_the_file_and_keeps_what_it_made(tiny, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    models = {"model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)}
    jobs.write_text("".join(json.dumps({"id": f"job-{i}", "prompt": "p", "style": str(tiny.style_image), **FAST,
                                        **models}) + "\n" for i in range(2)))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "instantstyle", "batch", str(jobs), "-o", str(out), "-q",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600,
                          preexec_fn=with_file_limit(2048))  # no 64 x 64 PNG of noise fits
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {out / 'job-0.png'}: cannot write (File too large)\n"
    assert sorted(p.name for p in out.iterdir()) == [".instantstyle-batch.lock"]  # no temporary file, no line
