"""Remake the README's demo sheet, UI screenshot, sweep sheet and sweep plot from the tiny random-weight fixtures.

Run from the repository root: ``HF_HUB_OFFLINE=1 python docs/images/make_images.py`` (needs gradio,
playwright and Debian's chromium). The images show noise by design: the fixture's weights are random.
"""

import socket
import tempfile
from pathlib import Path

from PIL import Image

from instantstyle import Request, StylePipeline
from instantstyle.app.sweep import Axes, render_sweep
from instantstyle.testing import tiny_models
from instantstyle.app.ui import launch

HERE = Path(__file__).resolve().parent
LABEL = "TINY RANDOM-WEIGHT TEST FIXTURE (not a real model: noise by design)"


def demo_sheet() -> None:
    """The README's picture: the contact sheet of ``instantstyle demo DIR --run`` (every mode, random weights)."""
    from instantstyle.app.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        try:
            cli(["demo", tmp, "--run"], standalone_mode=False)
        except SystemExit as exit_:
            assert not exit_.code, "the demo failed"
        sheet = Image.open(Path(tmp) / "out" / "sheet.png").convert("RGB")
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(HERE / "demo-sheet.png", optimize=True)


def main() -> None:
    demo_sheet()
    root = Path(tempfile.mkdtemp()) / "tiny-test-fixture"
    tiny = tiny_models(root)
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", keep_all_weights=True)
    with tempfile.TemporaryDirectory() as out:
        sweep = render_sweep(pipe, Request("a cat", style=str(tiny.style_image), steps=2, seed=7),
                             Axes(("style", "style+layout", "all"), (0.4, 0.7, 1.0)), Path(out) / "sheet.png",
                             title=f"{LABEL}, seed 7, 2 steps", scorer=pipe.scorer(), style_floor=0.9)
        Image.open(sweep.sheet).save(HERE / "sweep-tiny-fixture.png", optimize=True)
        assert sweep.plot is not None
        Image.open(sweep.plot).save(HERE / "sweep-plot-tiny-fixture.png", optimize=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(pipe, Path(tempfile.mkdtemp()), port=port, block=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#style input[type=file]").set_input_files(str(tiny.style_image))
        page.locator("#prompt textarea").fill(f"a cat ({LABEL})")
        for elem_id, value in (("steps", "2"),):
            page.locator(f"#{elem_id} input[type=number]").fill(value)
            page.locator(f"#{elem_id} input[type=number]").press("Enter")
        page.locator("#generate").click()
        page.locator("#gallery img").first.wait_for(timeout=120_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(HERE / "ui-tiny-fixture.png"), full_page=True)
        browser.close()
    demo.close()


if __name__ == "__main__":
    main()
