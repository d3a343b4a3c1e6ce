"""``instantstyle demo DIR``: every mode on tiny random-weight models, offline, from a clean install.

It builds the project's test fixtures (``instantstyle.testing``) once into ``DIR`` (SDXL, SD1.5, ControlNets,
inpainting, HiDiffusion's narrow SDXL, SD3.5, FLUX, CSD), prints the exact ``instantstyle`` command of each mode
on them, and with ``--run`` runs those commands (the same command lines, through the same CLI) and puts their
images on one contact sheet. The weights are random: the images show that every path runs, not what a real
model paints.

A new mode is one ``DemoMode`` in ``MODES`` (its command line from the fixture paths); a mode needing a new fixture
adds one ``Fixture`` to ``FIXTURES``. The folder layout is documented in docs/fixtures.md.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, did_you_mean
from ..files.atomic import writable_folder

#: Size and steps of the demo images: large enough to see, small enough for a few minutes on 2 CPU cores.
SIZE, STEPS, SEED = 128, 8, 1
PROMPT = "a cat in a garden"
SHEET_TITLE = "instantstyle demo: tiny RANDOM-WEIGHT models (real layouts, no training): every mode runs"


@dataclass(frozen=True)
class Fixture:
    """A fixture tree built into ``DIR/<name>``: ``build(folder, built)`` returns its paths object (``built``: the
    trees built before it, by name)."""

    name: str
    what: str
    build: Callable[[Path, dict[str, Any]], Any]


def _tiny(root: Path, built: dict[str, Any]) -> Any:
    from ..testing.fixtures import build_tiny_models

    return build_tiny_models(root)


def _modes(root: Path, built: dict[str, Any]) -> Any:
    from ..testing.modes import tiny_mode_models

    return tiny_mode_models(root, built["tiny"])


def _tile(root: Path, built: dict[str, Any]) -> Any:
    from ..testing.modes import tiny_tile_controlnet

    return tiny_tile_controlnet(root, built["tiny"])


def _hires(root: Path, built: dict[str, Any]) -> Any:
    from ..testing.hires import build_hires_models

    return build_hires_models(root, built["tiny"])


def _dit(root: Path, built: dict[str, Any]) -> Any:
    from ..testing.dit import build_tiny_dit_models

    return build_tiny_dit_models(root)


def _csd(root: Path, built: dict[str, Any]) -> Path:
    from ..testing.csd import build_csd_checkpoint
    from ..testing.trees import build_once

    build_once(root, "1", lambda tmp: build_csd_checkpoint(tmp / "checkpoint.pth"))
    return root / "checkpoint.pth"


FIXTURES: tuple[Fixture, ...] = (
    Fixture("tiny", "SDXL and SD1.5 pipelines, h94's IP-Adapter repo layout (adapters and image encoders), a "
            "ViT-H text tower, style.png, content.png", _tiny),
    Fixture("modes", "ControlNets (canny/depth) and inpainting pipelines for SDXL and SD1.5, a DPT depth model, "
            "init.png, left.png/right.png masks, depth.png, wide.png, style2.png", _modes),
    Fixture("tile", "a tile ControlNet for the tiny SDXL and its control image tile.png", _tile),
    Fixture("hires", "a narrow SDXL and SD1.5 with the real models' module names (HiDiffusion), their adapters",
            _hires),
    Fixture("dit", "SD3.5 Large and FLUX.1-dev pipelines, InstantX's and XLabs' adapters and image encoders in "
            "hub-like ORG/NAME folders", _dit),
    Fixture("csd", "a CSD checkpoint in the authors' checkpoint.pth format", _csd),
)


@dataclass(frozen=True)
class DemoMode:
    """One mode of the demo: ``args(models, out)`` is its command line after ``instantstyle`` (paths as the user
    wrote DIR), writing ``out`` (an image, or ``None`` for a command that prints). ``after``: modes whose images
    it reads."""

    name: str
    title: str
    args: Callable[[Any, str], list[str]]
    after: tuple[str, ...] = ()
    writes_image: bool = True


def _generate(model: str, adapter: str, style: str, *extra: str, size: int = SIZE) -> list[str]:
    return ["generate", "--model", model, "--adapter", adapter, "--style", style, "--prompt", PROMPT,
            "--steps", str(STEPS), "--seed", str(SEED), "--width", str(size), "--height", str(size), *extra]


def _sdxl(m: Any, *extra: str, model: str | None = None) -> list[str]:
    return _generate(model or m.tiny.sdxl, m.tiny.sdxl_adapter, m.tiny.style_image, *extra)


MODES: tuple[DemoMode, ...] = (
    DemoMode("sdxl", "SDXL: style block, content subtracted",
             lambda m, out: [*_sdxl(m, "--content-prompt", "stripes"), "-o", out]),
    DemoMode("sd15", "SD1.5",
             lambda m, out: [*_generate(m.tiny.sd15, m.tiny.sd15_adapter, m.tiny.style_image), "-o", out]),
    DemoMode("img2img", "SDXL img2img",
             lambda m, out: [*_sdxl(m, "--init-image", m.modes.init_image, "--strength", "0.6"), "-o", out]),
    DemoMode("inpaint", "SDXL inpainting",
             lambda m, out: [*_sdxl(m, "--init-image", m.modes.init_image, "--mask", m.modes.left_mask,
                                    model=m.modes.sdxl_inpaint), "-o", out]),
    DemoMode("canny", "ControlNet canny",
             lambda m, out: [*_sdxl(m, "--control", "canny", "--control-image", m.modes.init_image,
                                    "--controlnet", m.modes.sdxl_controlnet), "-o", out]),
    DemoMode("depth", "ControlNet depth (DPT)",
             lambda m, out: [*_sdxl(m, "--control", "depth", "--control-image", m.modes.init_image,
                                    "--depth-model", m.modes.depth_model, "--controlnet", m.modes.sdxl_controlnet),
                             "-o", out]),
    DemoMode("tile", "ControlNet tile",
             lambda m, out: [*_sdxl(m, "--control", m.tile.control_image, "--controlnet", m.tile.sdxl_controlnet),
                             "-o", out]),
    DemoMode("hidiffusion", "HiDiffusion, 256 px",
             lambda m, out: [*_generate(m.hires.sdxl, m.hires.sdxl_adapter, m.tiny.style_image, "--hidiffusion",
                                        size=2 * SIZE), "-o", out]),
    DemoMode("sd3", "SD3.5 Large, InstantX adapter",
             lambda m, out: [*_generate(m.dit.sd3, m.dit.sd3_adapter, m.dit.style_image), "-o", out]),
    DemoMode("flux", "FLUX.1-dev, XLabs adapter",
             lambda m, out: [*_generate(m.dit.flux, m.dit.flux_adapter, m.dit.style_image, "--content-prompt",
                                        "stripes"), "-o", out]),
    DemoMode("score", "scores with CSD",
             lambda m, out: ["score", out.replace("score.png", "sdxl.png"), "--csd", m.csd],
             after=("sdxl",), writes_image=False),
)


class Models:
    """The built fixture trees by name (``models.tiny.sdxl``...), every path shown as under the DIR the user gave."""

    def __init__(self, folder: Path, built: dict[str, Any]) -> None:
        self._folder, self._built = folder, built

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._built:
            raise AttributeError(name)
        return _Shown(self._built[name], self._folder)


class _Shown:
    """A fixture's paths object whose paths read as ``DIR/...`` (relative when DIR was)."""

    def __init__(self, paths: Any, folder: Path) -> None:
        self._paths, self._folder = paths, folder

    def __getattr__(self, name: str) -> str:
        return _show(getattr(self._paths, name), self._folder)

    def __str__(self) -> str:
        return _show(self._paths, self._folder)


def _show(path: Path, folder: Path) -> str:
    root = folder.expanduser().absolute()
    try:
        return str(folder / Path(path).relative_to(root))
    except ValueError:
        return str(path)


def check_folder(folder: Path) -> None:
    """DIR can hold the demo: a folder (made if missing) we can write, its fixture subfolders ours or absent."""
    path = writable_folder(folder, f"demo folder {folder}")
    from ..testing.trees import MARKER

    for fixture in FIXTURES:
        sub = path / fixture.name
        if sub.exists() and (not sub.is_dir() or any(sub.iterdir()) and not (sub / MARKER).is_file()):
            raise UserError(f"demo folder {folder}: {sub} exists and is not a demo fixture tree; choose another DIR")
    ours = any((path / fixture.name / MARKER).is_file() for fixture in FIXTURES)
    if (path / "out").exists() and not ours:  # the demo's commands overwrite DIR/out/*.png: only a demo's own
        raise UserError(f"demo folder {folder}: {path / 'out'} exists and {folder} is not a demo folder; choose "
                        "another DIR")


def build(folder: Path) -> Models:
    """Build every fixture tree into ``folder`` (each once: a finished tree is reused)."""
    check_folder(folder)
    built: dict[str, Any] = {}
    for fixture in FIXTURES:
        built[fixture.name] = fixture.build(folder.expanduser().absolute() / fixture.name, built)
    return Models(folder, built)


def select(names: Sequence[str]) -> list[DemoMode]:
    """The modes named (all when none), with the modes they need first, in ``MODES`` order."""
    if not names:
        return list(MODES)
    known = {mode.name: mode for mode in MODES}
    wanted: set[str] = set()
    for name in names:
        if name not in known:
            raise UserError(f"unknown demo mode {name!r}{did_you_mean(name, known)} "
                            f"(modes: {', '.join(known)})")
        wanted |= {name, *known[name].after}
    return [mode for mode in MODES if mode.name in wanted]


def output(folder: Path, mode: DemoMode) -> str:
    return str(folder / "out" / f"{mode.name}.png")


def commands(models: Models, folder: Path, modes: Sequence[DemoMode]) -> list[tuple[DemoMode, list[str]]]:
    """Each mode's command line (after ``instantstyle``), writing under ``DIR/out``."""
    out = []
    for mode in modes:
        argv = [str(a) for a in mode.args(models, output(folder, mode))]
        out.append((mode, [*argv, "--overwrite"] if mode.writes_image else argv))
    return out


def shown(argv: Sequence[str]) -> str:
    """A command line as the user types it."""
    return shlex.join(["instantstyle", *argv])


def run(cli: Callable[[list[str]], int],
        plan: Sequence[tuple[DemoMode, list[str]]]) -> Iterator[tuple[DemoMode, list[str], int, float]]:
    """Run each command line through ``cli`` (the real command line, in this process): (mode, command line, exit
    code, seconds)."""
    for mode, argv in plan:
        start = time.perf_counter()
        code = cli(argv)
        yield mode, argv, code, time.perf_counter() - start


def sheet(folder: Path, modes: Sequence[DemoMode], models: Models, columns: int = 4) -> Path:
    """One contact sheet: the style reference, then the modes' images, labelled as a random-weight demo."""
    from PIL import Image

    from ..files.atomic import save_png_atomically
    from .sweep import contact_sheet

    made = [mode for mode in modes if mode.writes_image and Path(output(folder, mode)).expanduser().is_file()]
    if not made:
        raise UserError("no demo image to put on a sheet")
    shots = [("style reference", Image.open(Path(models.tiny.style_image).expanduser()).convert("RGB"))]
    shots += [(mode.title, Image.open(Path(output(folder, mode)).expanduser()).convert("RGB")) for mode in made]
    side = max(max(image.size) for _, image in shots)
    cells = [image.resize((side, side), Image.Resampling.NEAREST) for _, image in shots]
    blank = Image.new("RGB", (side, side), "white")
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    rows[-1] += [blank] * (len(rows[0]) - len(rows[-1]))
    titles = [[title] for title, _ in shots] + [[""]] * (len(rows) * len(rows[0]) - len(shots))
    captions = [titles[i : i + len(rows[0])] for i in range(0, len(titles), len(rows[0]))]
    image = contact_sheet(rows, [""] * len(rows), [""] * len(rows[0]), title=SHEET_TITLE, captions=captions)
    return save_png_atomically(image, Path(folder).expanduser() / "out" / "sheet.png", {})
