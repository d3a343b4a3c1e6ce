"""Shared tiny fixtures: random-weight SDXL / SD1.5 models in the real topology, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning: with test workers side by side (and on a busy machine) spinning
# threads took the cores from the ones with work. It changes no result, only how idle threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from instantstyle import StylePipeline  # noqa: E402
from instantstyle.testing import TinyModels, tiny_models  # noqa: E402
from instantstyle.testing.csgo import CsgoModels, build_csgo_models  # noqa: E402
from instantstyle.testing.dit import TinyDiTModels, build_tiny_dit_models  # noqa: E402
from instantstyle.testing.kolors import TinyKolorsModels, build_tiny_kolors_models  # noqa: E402
from instantstyle.testing.modes import ModeModels, tiny_mode_models  # noqa: E402

#: At most this many test workers (``-n auto``): each holds its own tiny models (about 1.5 GB at its peak).
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core, at most ``MAX_WORKERS``."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


#: Where the browser tests leave their screenshots (a failed one's too).
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """The random order's seed at the end, where ``-q`` still shows it: a failure that depends on the order is then
    rerun in the same order with ``--randomly-seed=N``."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"random order: --randomly-seed={seed}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed browser test shows what its page said (the visible text) beside the error, and leaves a screenshot in
    ``test-artifacts/``: a wait that timed out says nothing else about why."""
    report = yield
    page = next((v for k, v in getattr(item, "funcargs", {}).items() if k.endswith("page")), None)
    if report.when == "call" and report.failed and page is not None and not page.is_closed():
        try:
            text = page.inner_text("body", timeout=5_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"failed-{item.name[:80]}.png"), full_page=True, timeout=10_000)
        except Exception as err:  # the page itself broke: say so, keep the test's own error
            text = f"(the page could not be read: {err})"
        report.sections.append(("the page's text when the test failed", text[-6000:]))
    return report


#: Small and fast: every generation in the tests uses these unless it needs otherwise.
FAST = {"steps": 2, "width": 64, "height": 64, "seed": 7}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    cache = os.environ.get("INSTANTSTYLE_FIXTURES")
    return tiny_models(Path(cache) if cache else tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def sdxl(tiny: TinyModels) -> StylePipeline:
    """One SDXL pipeline for tests that only run requests (all weights kept: any blocks, no reload)."""
    return StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", keep_all_weights=True)


@pytest.fixture(scope="session")
def sd15(tiny: TinyModels) -> StylePipeline:
    return StylePipeline.from_pretrained(str(tiny.sd15), str(tiny.sd15_adapter), device="cpu", keep_all_weights=True)


@pytest.fixture(scope="session")
def small_default(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL with a default size of 32 px (its UNet's ``sample_size`` 4), below the 64 px minimum: a model
    whose own size a request must not fall back to (its files are links to the tiny model's)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("small-default") / "sdxl"
    shutil.copytree(tiny.sdxl, folder, copy_function=os.symlink)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").unlink()
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 4}))
    return folder


@pytest.fixture(params=["sdxl", "sd15"])
def arch_pipe(request: pytest.FixtureRequest) -> StylePipeline:
    """The SDXL, then the SD1.5 session pipeline: for behaviour that must hold on both."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def modes(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> ModeModels:
    """Tiny ControlNets, inpainting models and mode input images (init, masks, depth map, wide style)."""
    return tiny_mode_models(tmp_path_factory.mktemp("modes"), tiny)


@pytest.fixture(scope="session")
def csgo_models(tiny: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> CsgoModels:
    """Tiny CSGO checkpoints in the authors' layout (4+32 float16 with its ControlNet, 4+16, safetensors), the tile
    ControlNet, h94's image encoder mirrored, a content and a style image."""
    return build_csgo_models(tmp_path_factory.mktemp("csgo") / "tree", tiny)


@pytest.fixture(scope="session")
def dit(tmp_path_factory: pytest.TempPathFactory) -> TinyDiTModels:
    """Tiny SD3.5 Large and FLUX.1-dev pipelines, their IP-Adapters in the published formats and image encoders."""
    cache = os.environ.get("INSTANTSTYLE_DIT_FIXTURES")
    return build_tiny_dit_models(Path(cache) if cache else tmp_path_factory.mktemp("dit") / "tree")


@pytest.fixture(scope="session")
def sd3(dit: TinyDiTModels) -> StylePipeline:
    """One SD3.5 pipeline with InstantX's adapter, all weights kept (any blocks, no reload)."""
    return StylePipeline.from_pretrained(str(dit.sd3), str(dit.sd3_adapter), device="cpu", keep_all_weights=True)


@pytest.fixture(scope="session")
def flux(dit: TinyDiTModels) -> StylePipeline:
    """One FLUX.1-dev pipeline with XLabs' v1 adapter, all weights kept."""
    return StylePipeline.from_pretrained(str(dit.flux), str(dit.flux_adapter), device="cpu", keep_all_weights=True)


def with_resources(pipe: StylePipeline, **changes) -> StylePipeline:
    """The pipeline with some of its resources replaced (the same loaded models): another runtime, say."""
    import dataclasses

    resources = dataclasses.replace(pipe.resources, **changes)
    if "runtime" in changes:  # the store reads images under the runtime's cap
        resources.embeddings = dataclasses.replace(resources.embeddings, max_pixels=changes["runtime"].max_pixels)
    return StylePipeline(resources)


def complete_for(pipe: StylePipeline, request):
    """The request as the pipeline completes it (size, seed, blocks... filled in)."""
    from instantstyle.core.plan import complete

    return complete(request, pipe.resources)


def encode(pipe: StylePipeline, path: str, fit: str = "crop"):
    """One reference image's embedding for the pipeline's main adapter (cached by content)."""
    return pipe.resources.embeddings.encode(path, pipe.resources.main_adapter, fit)


def style_embeds(pipe: StylePipeline, request):
    """(style, negative) of the main adapter for a request, as its call computes them (references blended, content
    subtracted)."""
    from instantstyle.core.plan import complete
    from instantstyle.core.styles import needs_text_tower
    from instantstyle.core.styles import style_embeds as embeds

    res = pipe.resources
    request = complete(request, res)
    main = res.main_adapter
    tower = res.content_text_tower(request.content_text_encoder) if needs_text_tower(request, main) else None
    return embeds(res.embeddings, request, main, tower)


def while_decoding(pipe: StylePipeline, request):
    """(the result, the VAE's tiling and slicing while the request's call decoded): they hold for that call only."""
    vae = pipe.pipe.vae
    seen: dict[str, object] = {}

    def note(*_) -> None:
        seen.update(tiling=vae.use_tiling, slicing=vae.use_slicing, tile=vae.tile_sample_min_size)

    handle = vae.decoder.register_forward_pre_hook(note)
    try:
        result = pipe(request)
    finally:
        handle.remove()
    return result, seen


@pytest.fixture(scope="session")
def kolors_models(tmp_path_factory: pytest.TempPathFactory) -> TinyKolorsModels:
    """A tiny Kolors pipeline (ChatGLM text encoder and tokenizer), Kolors-IP-Adapter-Plus and its CLIP-336 encoder."""
    cache = os.environ.get("INSTANTSTYLE_KOLORS_FIXTURES")
    return build_tiny_kolors_models(Path(cache) if cache else tmp_path_factory.mktemp("kolors") / "tree")


@pytest.fixture(scope="session")
def kolors(kolors_models: TinyKolorsModels) -> StylePipeline:
    """One Kolors pipeline with its plus adapter, all weights kept."""
    return StylePipeline.from_pretrained(str(kolors_models.kolors), str(kolors_models.adapter), device="cpu",
                                         keep_all_weights=True)


def pixels(image) -> np.ndarray:
    """An image as float pixels, for comparing outputs."""
    return np.asarray(image, dtype=np.float64)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``demo/`` holds ``instantstyle demo``'s models (every fixture tree, built once): where the
    docs' offline examples run, as a user runs them after ``instantstyle demo demo``."""
    from instantstyle.app import demo

    root = tmp_path_factory.mktemp("demo-root")
    demo.build(root / "demo")
    return root


@pytest.fixture(scope="session")
def video_models(tmp_path_factory: pytest.TempPathFactory):
    """A tiny I2VGen-XL pipeline folder and short H.264 clips (``testing.video``)."""
    from instantstyle.testing.video import build_tiny_video_models

    cache = os.environ.get("INSTANTSTYLE_VIDEO_FIXTURES")
    return build_tiny_video_models(Path(cache) if cache else tmp_path_factory.mktemp("video") / "tree")


@pytest.fixture(scope="session")
def i2vgen(video_models):
    """The tiny I2VGen-XL, loaded once on the CPU through ``VideoModel.from_pretrained``."""
    from instantstyle.loading.runtime import Runtime
    from instantstyle.modes.video import VideoModel

    return VideoModel.from_pretrained(str(video_models.i2vgen), Runtime(device="cpu"))
