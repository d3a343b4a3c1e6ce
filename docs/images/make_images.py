"""Remake the README's demo sheet, the web UI screenshots, sweep sheet and sweep plot from the tiny random-weight
fixtures.

Run from the repository root: ``HF_HUB_OFFLINE=1 python docs/images/make_images.py`` (needs gradio,
playwright and Debian's chromium); ``... make_images.py ui`` remakes the web UI's screenshots only. The images show
noise by design: the fixture's weights are random.
"""

import os
import socket
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from instantstyle import Request, StylePipeline
from instantstyle.app.sweep import Axes, render_sweep
from instantstyle.app.ui import TABS, launch
from instantstyle.testing import tiny_models
from instantstyle.testing.modes import tiny_mode_models
from instantstyle.testing.video import build_tiny_video_models

HERE = Path(__file__).resolve().parent
LABEL = "TINY RANDOM-WEIGHT TEST FIXTURE (not a real model: noise by design)"
BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT_TABS = ("Generate", "Sweep", "Video", "History", "Restore & style files")


def montage(shots: list[tuple[str, Image.Image]], columns: int, width: int) -> Image.Image:
    """Labelled screenshots in a grid, each scaled to ``width``."""
    scaled = [(name, shot.resize((width, round(shot.height * width / shot.width)))) for name, shot in shots]
    cell_h = max(s.height for _, s in scaled) + 22
    rows = -(-len(scaled) // columns)
    sheet = Image.new("RGB", (columns * (width + 10) + 10, rows * (cell_h + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, shot) in enumerate(scaled):
        x, y = 10 + (i % columns) * (width + 10), 10 + (i // columns) * (cell_h + 10)
        draw.text((x, y), name, fill="black")
        sheet.paste(shot, (x, y + 18))
    return sheet


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


def main(only_ui: bool = False) -> None:
    if not only_ui:
        demo_sheet()
    cached = os.environ.get("INSTANTSTYLE_FIXTURES")  # a built fixture tree, as the tests take it
    root = Path(cached) if cached else Path(tempfile.mkdtemp()) / "tiny-test-fixture"
    tiny = tiny_models(root)
    modes = tiny_mode_models(Path(tempfile.mkdtemp()) / "modes", tiny)
    video = build_tiny_video_models(Path(tempfile.mkdtemp()) / "video")
    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", keep_all_weights=True)
    with tempfile.TemporaryDirectory() as out:  # (only the UI's: the sweep pictures stay as they are)
        sweep = None if only_ui else render_sweep(pipe, Request("a cat", style=str(tiny.style_image), steps=2, seed=7),
                             Axes(("style", "style+layout", "all"), (0.4, 0.7, 1.0)), Path(out) / "sheet.png",
                             title=f"{LABEL}, seed 7, 2 steps", scorer=pipe.scorer(), style_floor=0.9)
        if sweep is not None:
            Image.open(sweep.sheet).save(HERE / "sweep-tiny-fixture.png", optimize=True)
            assert sweep.plot is not None
            Image.open(sweep.plot).save(HERE / "sweep-plot-tiny-fixture.png", optimize=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    demo = launch(pipe, Path(tempfile.mkdtemp()), port=port, block=False, models_dirs=[modes.root],
                  video_model=str(video.i2vgen))
    from playwright.sync_api import sync_playwright

    def number(page, elem_id: str, value: str) -> None:
        page.locator(f"#{elem_id} input[type=number]").fill(value)
        page.locator(f"#{elem_id} input[type=number]").press("Enter")

    def fill(page) -> None:
        page.goto(url)
        page.wait_for_selector("#generate")
        page.locator("#style-add input[type=file]").set_input_files([str(tiny.style_image), str(modes.second_style)])
        page.locator("#card-pic-1 img").wait_for(timeout=120_000)
        number(page, "weight-1", "0.3")
        page.locator("#prompt textarea").fill("a cat (tiny test fixture: noise by design)")
        number(page, "steps", "2")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        fill(page)
        page.locator("#generate").click()
        page.locator("#results table").wait_for(timeout=120_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(HERE / "ui-tiny-fixture.png"))
        shots = []
        for tab in TABS:
            page.get_by_role("tab", name=tab.label, exact=True).click()
            page.wait_for_timeout(400)
            shots.append((f"{tab.label} tab", Image.open(_shot(page, "#form"))))
        for name in OUTPUT_TABS:
            page.get_by_role("tab", name=name, exact=True).click()
            page.wait_for_timeout(600)
            shots.append((f"{name} tab", Image.open(_shot(page, "#output"))))
        montage(shots, 4, 360).convert("RGB").quantize(256).save(HERE / "ui-tabs-tiny-fixture.png", optimize=True)
        page.get_by_role("tab", name="History", exact=True).click()
        page.locator("#history button.thumbnail-item").first.click()
        page.get_by_text("Details: its request").click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(HERE / "ui-history-tiny-fixture.png"))
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        fill(phone)
        phone.locator("#generate").click()
        phone.locator("#results table").wait_for(timeout=120_000)
        phone.locator("#results").scroll_into_view_if_needed()
        phone.wait_for_timeout(500)
        phone.screenshot(path=str(HERE / "ui-phone-tiny-fixture.png"))
        fill(page)  # the Video tab: a 4-frame clip at 64 px, its first frame previewed, the video made
        page.get_by_role("tab", name="Control", exact=True).click()
        page.locator("#controlnet input").click()
        page.get_by_role("option", name="sdxl-controlnet", exact=True).click()
        page.get_by_role("tab", name="Video", exact=True).click()
        page.locator("#video-clip input[type=file]").set_input_files(str(video.clip))
        page.locator("#video-info").get_by_text("clip.mp4: ").wait_for(timeout=120_000)
        for elem_id, value in (("video-frames", "4"), ("video-width", "64"), ("video-height", "64"),
                               ("video-steps", "2")):
            number(page, elem_id, value)
        page.get_by_text("Inversion and injection (AnyV2V)").click()
        number(page, "video-inversion-steps", "2")
        page.get_by_text("Inversion and injection (AnyV2V)").click()
        page.locator("#run-video").click()
        page.wait_for_function("() => { const v = document.querySelector('#video-result video');"
                               " return v && v.readyState >= 2; }", timeout=120_000)
        page.locator("#first-frame img").first.wait_for(timeout=120_000)
        page.wait_for_timeout(500)
        Image.open(_shot(page, "#output")).save(HERE / "ui-video-tiny-fixture.png")
        browser.close()
    demo.close()
    for name in ("ui-tiny-fixture", "ui-history-tiny-fixture", "ui-phone-tiny-fixture",
                 "ui-video-tiny-fixture"):  # smaller files
        Image.open(HERE / f"{name}.png").convert("RGB").quantize(256).save(HERE / f"{name}.png", optimize=True)


def _shot(page, selector: str) -> str:
    path = tempfile.mktemp(suffix=".png")
    page.locator(selector).screenshot(path=path)
    return path


if __name__ == "__main__":
    main(only_ui=sys.argv[1:] == ["ui"])
