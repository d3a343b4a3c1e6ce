"""The web UI as people use it: one served page on the tiny SDXL fixture, driven in Debian's Chromium.

One server for the whole module (its own pipeline, so nothing another module loads into the shared one moves its
pixels); each test opens a fresh page. Screenshots go to ``test-artifacts/`` (the README shows chosen ones from
``docs/images/``). The accessibility check injects axe-core from ``.node/`` (``npm install --prefix .node
axe-core``).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instantstyle import Request
from instantstyle.app.sweep import SHEET_KEY
from instantstyle.core.request import read_png_request, write_png
from instantstyle.scores.scorer import read_png_scores

from .conftest import ARTIFACTS, pixels

gr = pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'instantstyle[ui]')")
from instantstyle.app import ui  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / ".node" / "node_modules" / "axe-core" / "axe.min.js"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT = 120_000  # ms; generous: the CI machine is shared
LAPTOP, PHONE = (1366, 768), (390, 844)
SETTINGS_TABS = [tab.label for tab in ui.TABS]
OUTPUT_TABS = ["Generate", "Sweep", "Video", "History", "Restore & style files"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def restyle_models(tiny, tmp_path_factory):
    """A photo, a CSD checkpoint with its content head, a tiny BLIP captioner (``testing.restyle``)."""
    from instantstyle.testing.restyle import tiny_restyle_models

    return tiny_restyle_models(tmp_path_factory.mktemp("restyle"), tiny)


@pytest.fixture(scope="module")
def models(tiny, modes, restyle_models, tmp_path_factory) -> list[Path]:
    """The page's models folders: the tiny plus adapter's, the mode fixtures (ControlNets, DPT), a LoRA, the
    restyle fixtures (a captioning model, a CSD checkpoint)."""
    from instantstyle.testing.lora import write_tiny_lora

    loras = tmp_path_factory.mktemp("loras")
    write_tiny_lora(tiny.sdxl, loras / "ink.safetensors")
    return [tiny.sdxl_plus_adapter.parent, modes.root, loras, restyle_models.root]


@pytest.fixture(scope="module")
def app(tiny, models, video_models, tmp_path_factory):
    """The app on its own tiny SDXL pipeline with the tiny I2VGen-XL as its video model, served from this process on
    a free localhost port."""
    from instantstyle import StylePipeline

    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu", keep_all_weights=True)
    workdir = tmp_path_factory.mktemp("ui-app")
    port = free_port()
    demo = ui.launch(pipe, workdir, port=port, block=False, models_dirs=models, video_model=str(video_models.i2vgen))
    yield f"http://127.0.0.1:{port}/", ui.Workdir(workdir), demo
    demo.close()


@pytest.fixture(scope="module")
def csgo_app(tiny, csgo_models, tmp_path_factory):
    """A second server: the tiny SDXL with a CSGO checkpoint, its tile ControlNet in the models folder."""
    from instantstyle import StylePipeline

    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(csgo_models.checkpoint), device="cpu")
    workdir = tmp_path_factory.mktemp("ui-csgo")
    port = free_port()
    demo = ui.launch(pipe, workdir, port=port, block=False, models_dirs=[csgo_models.root])
    yield f"http://127.0.0.1:{port}/", ui.Workdir(workdir), demo
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip)")
    playwright.expect.set_options(timeout=TIMEOUT)  # as the pages' own waits: expect's 5 s is short on a busy machine
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, size: tuple[int, int] = LAPTOP):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.set_default_timeout(TIMEOUT)
    page.goto(url)
    page.wait_for_selector("#generate")
    page.locator("#loaded").get_by_text("Model").wait_for()  # the page's load events have run
    return page


def wait_until_idle(demo, timeout: float = 300.0) -> None:
    """Until the server's queue holds no job (a job a test left running, e.g. one whose result it did not wait for,
    would make the next test's events wait behind it). Reads gradio's queue: a test's check, not the product's."""
    queue = getattr(demo, "_queue", None)
    deadline = time.monotonic() + timeout
    while queue is not None and time.monotonic() < deadline:
        if len(queue) == 0 and not any(getattr(queue, "active_jobs", ())):
            return
        time.sleep(0.2)


@pytest.fixture
def page(app, browser):
    wait_until_idle(app[2])
    page = open_page(browser, app[0])
    yield page
    page.close()


def settled(page) -> None:
    """Until no event is pending: a click, a key or a file given during a re-render can be lost to it."""
    page.wait_for_function("!document.querySelector('.pending')")


def again_until(act, done) -> None:
    """``act``, then ``done(timeout_ms)``, a wait that raises when it times out. A re-render can lose an act (lost tab
    clicks and files made tests flaky in CI), so three tries, the last with the page's whole timeout."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for timeout in (20_000, 20_000, TIMEOUT):
        try:
            act()
            done(timeout)
            return
        except (PlaywrightTimeoutError, AssertionError):
            if timeout == TIMEOUT:
                raise


def set_number(page, elem_id: str, value) -> None:
    """Type a number and wait until the box holds it (typed again if a re-render replaced the box meanwhile)."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input[type=number]").first

    def act() -> None:
        box.fill(str(value))
        box.press("Enter")

    again_until(act, lambda timeout: expect(box).to_have_value(str(value), timeout=timeout))


def add_references(page, *paths: Path) -> None:
    """Drop files on the references' drop zone (several at once) and wait for their cards (a file that is no image
    gets none)."""
    shown = page.locator("[id^=card-pic-] figure").count()
    page.locator("#style-add input[type=file]").set_input_files([str(p) for p in paths])
    images = sum(Path(p).suffix == ".safetensors" or Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths)
    page.locator(f"#card-pic-{shown + images - 1} figure").wait_for()


def upload(page, elem_id: str, path: Path, shown=None) -> None:
    """Put a file in an upload field and wait until the page shows it (``shown``; by default the field's cell named
    for the file). A field a tab's first render replaces drops the file it was just given (a flaky test in CI once):
    set it again. The name is found by the cell's accessible name: its text is two spans (stem, extension) whose
    space between them a render may or may not keep, so matching the text failed now and then with the file shown."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    shown = shown or page.locator(f"#{elem_id}").get_by_role("cell", name=Path(path).name, exact=True)

    def act() -> None:
        settled(page)
        try:  # a field that already shows a file has no input: the wait decides
            page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path), timeout=20_000)
        except PlaywrightTimeoutError:
            pass

    try:
        again_until(act, lambda timeout: shown.wait_for(timeout=timeout))
    except PlaywrightTimeoutError:  # what the field holds, beside the page's text and screenshot (conftest)
        field = page.locator(f"#{elem_id}")
        seen = field.inner_html() if field.count() else "(no such field on the page)"
        raise AssertionError(f"{Path(path).name} never showed in #{elem_id}; the field holds: {seen[:2000]}") from None


def fill_text(page, elem_id: str, value: str) -> None:
    """Type into a text field and wait until the page holds it: a field of a tab just opened may still be rendering,
    and its first render resets a value typed too early (a Generate then sent the old value: a flaky test once)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.wait_for(state="visible")
    settled(page)
    for _ in range(20):
        if box.input_value() != value:
            box.fill(value)
        page.wait_for_timeout(250)  # a render that resets the field comes within a frame or two
        if box.input_value() == value:
            page.wait_for_timeout(250)
            if box.input_value() == value:
                return
    assert box.input_value() == value, f"#{elem_id} does not keep {value!r}"


def fill_form(page, *styles: Path, prompt: str = "a cat", steps: int = 2, seed: int = 7) -> None:
    add_references(page, *styles)
    page.locator("#prompt textarea").fill(prompt)
    set_number(page, "steps", steps)
    page.locator("#randomize input").uncheck()
    set_number(page, "seed", seed)


def pick(page, elem_id: str, value: str, kept: bool = True) -> None:
    """Choose ``value`` in a dropdown and wait until it shows it (open it again if a re-render closed its list);
    ``kept=False`` for a dropdown that clears itself once picked (the caller checks what the pick did)."""
    from playwright.sync_api import expect

    box = page.locator(f"#{elem_id} input").first

    def act() -> None:
        settled(page)
        box.click()
        page.get_by_role("option", name=value, exact=True).click(timeout=20_000)

    again_until(act, lambda timeout: expect(box).to_have_value(value, timeout=timeout) if kept else None)


def tab(page, name: str) -> None:
    """Open a tab and wait until it is the selected one. A tab's panel is built when first opened, so a click lost
    to a re-render left a test waiting for a field that never came (a flaky test in CI once): click it again."""
    from playwright.sync_api import expect

    button = page.get_by_role("tab", name=name, exact=True)

    def act() -> None:
        settled(page)
        button.click()

    again_until(act, lambda timeout: expect(button).to_have_attribute("aria-selected", "true", timeout=timeout))


def downloads(page) -> list[str]:
    return [a.get_attribute("href") for a in page.locator("#downloads a").all()]


def open_details(page) -> None:
    """Open the results' "Downloads and request" panel (closed, its parts are not on the page)."""
    if page.locator("#downloads").count() == 0:
        page.get_by_text("Downloads and request").click()
        page.locator("#downloads").wait_for(state="attached")


def generate(page, into: Path, count: int = 1) -> list[Path]:
    """Press Generate and fetch the run's PNGs (their settings and scores inside)."""
    tab(page, "Generate")
    open_details(page)
    before = downloads(page)
    page.locator("#generate").click()
    page.wait_for_function("before => { const now = [...document.querySelectorAll('#downloads a')].map(a => a.href);"
                           " return now.length > 0 && JSON.stringify(now) !== JSON.stringify(before); }",
                           arg=[page.evaluate("h => h.map(x => new URL(x, location.href).href)", before)])
    page.locator("#results figure").nth(count - 1).wait_for()
    paths = []
    for i, href in enumerate(downloads(page)):
        path = into / f"made-{len(list(into.glob('made-*')))}-{i}.png"
        path.write_bytes(page.request.get(href).body())
        paths.append(path)
    return paths


def paint(page, elem_id: str, start: tuple[float, float], moves: int = 6, step: float = 12) -> None:
    """Draw one stroke in an image editor with the mouse (the editor sends its layer with the next event)."""
    editor = page.locator(f"#{elem_id}")
    editor.get_by_role("button", name="Brush").first.click()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, moves + 1):
        page.mouse.move(x + i * step, y + i * step)
    page.mouse.up()
    page.wait_for_timeout(300)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def close_messages(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()


def run_cli(*args) -> None:
    from click.testing import CliRunner

    from instantstyle.app.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


# --- the common case ------------------------------------------------------------------------------------------


def test_cards_with_their_weights_make_the_pixels_of_the_command_line(page, tiny, modes, tmp_path):
    """``--style a.png --style b.png:0.3``: two cards, the second's slider at 0.3."""
    fill_form(page, tiny.style_image, modes.second_style, prompt="a fox")
    set_number(page, "weight-1", 0.3)
    [png] = generate(page, tmp_path)
    screenshot(page, "ui-cards.png")
    assert [ref.weight for ref in read_png_request(png).style] == [1.0, 0.3]
    run_cli("generate", "--model", tiny.sdxl, "--adapter", tiny.sdxl_adapter, "--style", tiny.style_image,
            "--style", f"{modes.second_style}:0.3", "--prompt", "a fox", "--steps", 2, "--seed", 7, "--device", "cpu",
            "-o", tmp_path / "cli.png")
    assert (pixels(Image.open(png)) == pixels(Image.open(tmp_path / "cli.png"))).all()


def test_one_reference_a_prompt_and_the_result_fit_a_1366x768_screen(page, tiny, tmp_path):
    fill_form(page, tiny.style_image)
    page.locator("#generate").click()  # as people do: the downloads and request panel stays closed
    page.locator("#results table").wait_for()
    screenshot(page, "ui-laptop.png")
    height, width = page.evaluate("[document.scrollingElement.scrollHeight, document.scrollingElement.scrollWidth]")
    assert (width, height) <= LAPTOP and height <= LAPTOP[1]
    for what in ("#card-pic-0 img", "#prompt textarea", "#generate", "#results img", "#results table"):
        box = page.locator(what).first.bounding_box()
        assert box["y"] + box["height"] <= LAPTOP[1], what


def test_the_page_still_works_at_a_phone_width(app, browser, tiny, tmp_path):
    page = open_page(browser, app[0], PHONE)
    fill_form(page, tiny.style_image)
    [png] = generate(page, tmp_path)
    screenshot(page, "ui-phone.png")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE[0]  # nothing runs off sideways
    assert read_png_request(png).prompt == "a cat" and page.locator("#results img").first.is_visible()
    page.close()


def test_each_result_shows_a_score_table_marked_against_the_other_results(page, tiny, tmp_path):
    fill_form(page, tiny.style_image)
    set_number(page, "num-images", 2)
    tab(page, "Content")
    fill_text(page, "content-prompt", "stripes")
    pngs = generate(page, tmp_path, count=2)
    assert [read_png_request(png).content_prompt for png in pngs] == ["stripes"] * 2  # the leak is scored
    tables = page.locator("#results table.scores").all()
    scores = [read_png_scores(png) for png in pngs]
    assert len(tables) == 2
    for table, mine, other in zip(tables, scores, scores[::-1], strict=True):
        rows = [row.inner_text().split("\t") for row in table.locator("tr").all()]
        assert [(name, value.rstrip(" ▲▼")) for name, value in rows] == [
            ("style", f"{mine.clip_style:.3f}"), ("text", f"{mine.clip_text:.3f}"),
            ("leak", f"{mine.content_leak:.3f}")]
        for (name, value), key in zip(rows, ("clip_style", "clip_text", "content_leak"), strict=True):
            better = (mine.get(key) < other.get(key)) if key == "content_leak" else (mine.get(key) > other.get(key))
            if mine.get(key) != other.get(key):  # the better of the two is marked ▲, the worse ▼
                assert value.endswith("▲" if better else "▼"), (name, value)


def test_a_history_image_restores_settings_that_make_the_same_image(page, app, tiny, modes, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image, modes.second_style, prompt="a lighthouse", seed=11)
    set_number(page, "weight-1", 0.5)
    [first] = generate(page, tmp_path)
    page.goto(app[0])  # a new visit: an empty form
    page.wait_for_selector("#generate")
    tab(page, "History")
    page.locator("#history button.thumbnail-item").first.click()
    page.get_by_text("Details: its request").click()
    shown = page.locator("#history-json").inner_text()
    assert str(app[1].root) not in shown and '"inputs/' in shown
    page.locator("#use-settings").click()
    expect(page.locator("#prompt textarea")).to_have_value("a lighthouse")
    page.locator("#card-pic-1 figure").wait_for()
    tab(page, "Generate")
    [again] = generate(page, tmp_path)
    screenshot(page, "ui-history-restored.png")
    assert (pixels(Image.open(first)) == pixels(Image.open(again))).all()


def test_queue_position_step_progress_and_cancel_leave_the_server_answering(app, browser, tiny, tmp_path):
    """A long job runs in one page; another page's job waits with its place in the queue; Cancel stops the long
    one between steps, saves nothing, and the waiting job runs."""
    long, waiting = open_page(browser, app[0]), open_page(browser, app[0])
    fill_form(long, tiny.style_image, steps=100)
    fill_form(waiting, tiny.style_image)
    made = len(list(app[1].outputs.glob("*.png")))
    long.locator("#generate").click()
    long.locator("#results").get_by_text(re.compile(r"\d+/100 steps")).wait_for()  # a step bar
    waiting.locator("#generate").click()
    waiting.locator("#results").get_by_text(re.compile(r"queue: \d+/\d+")).wait_for()
    screenshot(waiting, "ui-queue.png")
    long.locator("#cancel").click()
    long.get_by_text("cancelling: the job stops after its current step").wait_for()
    [png] = generate_done(waiting, tmp_path)
    assert read_png_request(png).steps == 2
    assert len(list(app[1].outputs.glob("*.png"))) == made + 1  # the cancelled job saved nothing
    assert long.locator("#results img").count() == 0
    long.close()
    waiting.close()


def generate_done(page, into: Path) -> list[Path]:
    """The PNGs of a run already started (as ``generate`` fetches them)."""
    page.locator("#results figure").first.wait_for()
    open_details(page)
    page.locator("#downloads a").first.wait_for(state="attached")
    path = into / "waited.png"
    path.write_bytes(page.request.get(downloads(page)[0]).body())
    return [path]


# --- every mode -----------------------------------------------------------------------------------------------


def test_regions_come_from_an_upload_and_from_a_painting(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image, modes.second_style)
    tab(page, "Regions")
    upload(page, "region-0", modes.left_mask)
    paint(page, "region-paint", (0.6, 0.3), step=8)
    pick(page, "region-target", "reference 2")
    page.locator("#region-use").click()
    page.locator("#region-pic-1 figure").wait_for()
    screenshot(page, "ui-regions.png")
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    painted = np.asarray(Image.open(request.regions[1]).convert("L")) > 0
    assert len(request.regions) == 2 and 0 < painted.mean() < 0.5
    assert (np.asarray(Image.open(request.regions[0])) == np.asarray(Image.open(modes.left_mask))).all()


def test_a_composition_image_and_a_further_adapter_with_its_blocks_and_scale(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image)
    tab(page, "Composition")
    upload(page, "composition", modes.init_image, page.locator("#thumb-composition img"))
    assert page.locator("#thumb-composition img").get_attribute("alt") == "composition image (64×64)"
    set_number(page, "composition-scale", 0.8)
    tab(page, "Adapters")
    pick(page, "adapter-1", "ip-adapter-plus_sdxl_vit-h.safetensors")
    upload(page, "adapter-1-style", modes.second_style)
    pick(page, "adapter-1-blocks", "layout")
    set_number(page, "adapter-1-scale", 0.5)
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    assert request.composition is not None and request.composition_scale == 0.8
    assert [(Path(a.path).name, a.blocks, a.scale) for a in request.adapters] == [
        ("ip-adapter-plus_sdxl_vit-h.safetensors", "layout", 0.5)]


def test_depth_control_with_a_depth_model_from_the_models_folders(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image)
    tab(page, "Control")
    pick(page, "control", "depth")
    upload(page, "control-image", modes.init_image)
    pick(page, "controlnet", "sdxl-controlnet")
    pick(page, "depth-model", "dpt")
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    assert (request.control, Path(request.depth_model).name, Path(request.controlnet).name) == (
        "depth", "dpt", "sdxl-controlnet")


def test_a_photo_restyled_with_the_recipes_defaults(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image, prompt="a lighthouse")
    tab(page, "Restyle")
    upload(page, "restyle", modes.init_image, page.locator("#thumb-restyle img"))
    tab(page, "Control")
    pick(page, "controlnet", "sdxl-controlnet")  # the recipe's canny, with the ControlNet of the models folder
    [png] = generate(page, tmp_path)
    request = read_png_request(png)  # the completed request: the recipe filled in what the form left unset
    assert (Path(request.restyle).parent.name, request.control, request.control_scale, request.scheduler) == (
        "inputs", "canny", 0.6, "ddim")
    assert request.negative_prompt == "lowres, low quality, worst quality, deformed, noisy, blurry"


def test_page_restyles_an_uploaded_init_image(page, tiny, modes, tmp_path):
    fill_form(page, tiny.style_image)
    tab(page, "Image")
    upload(page, "init-image", modes.init_image)
    set_number(page, "strength", 0.5)
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    assert (request.mode, request.strength, request.prompt) == ("img2img", 0.5, "a cat")


def test_strokes_painted_in_the_page_become_the_inpainting_mask(page, tiny, modes, tmp_path):
    """Drawn with the mouse: the painter (one layer, its blobs guarded) still sends the strokes."""
    fill_form(page, tiny.style_image)
    tab(page, "Image")
    upload(page, "init-image", modes.init_image)
    page.locator("#mask-paint").get_by_text("Upload an image").wait_for(state="hidden")  # the init image is in it
    paint(page, "mask-paint", (0.4, 0.4))
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    painted = np.asarray(Image.open(request.mask)) > 0
    assert request.mode == "inpaint" and 0 < painted.mean() < 1


# --- restoring, style files, messages --------------------------------------------------------------------------


def test_dropping_a_generated_png_restores_its_settings_and_cards(page, app, tiny, tmp_path):
    from playwright.sync_api import expect

    style = app[1].keep_upload(tiny.style_image, "style image")
    request = Request("a lighthouse at dusk", style=f"{style}:0.7", negative_prompt="blurry", blocks="style+layout",
                      scale=0.7, guidance=4.5, steps=3, seed=42, width=64, height=64)
    png = write_png(Image.new("RGB", (64, 64)), tmp_path / "made.png", request)
    tab(page, "Restore & style files")
    page.locator("#restore input[type=file]").set_input_files(str(png))
    expect(page.locator("#prompt textarea")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#negative textarea")).to_have_value("blurry")
    expect(page.locator("#seed input")).to_have_value("42")
    expect(page.locator("#steps input[type=number]")).to_have_value("3")
    expect(page.locator("#blocks input")).to_have_value("style+layout")
    expect(page.locator("#randomize input")).not_to_be_checked()
    expect(page.locator("#weight-0 input[type=number]")).to_have_value("0.7")
    page.locator("#card-pic-0 img").wait_for()


def test_a_saved_style_file_comes_back_as_a_card_with_its_preview_and_settings(page, app, tiny, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image, prompt="a castle")
    tab(page, "Restore & style files")
    page.locator("#save-style").click()
    link = page.locator("#style-file a").first
    link.wait_for()
    saved = tmp_path / "my-style.safetensors"
    saved.write_bytes(page.request.get(link.get_attribute("href")).body())
    page.goto(app[0])
    page.wait_for_selector("#generate")
    add_references(page, saved)
    assert page.locator("#card-pic-0 img").get_attribute("alt") == "style reference 1: style file"
    expect(page.locator("#prompt textarea")).to_have_value("a castle")
    expect(page.locator("#seed input")).to_have_value("7")
    [png] = generate(page, tmp_path)
    assert read_png_request(png).style[0].path.endswith(".safetensors")


def test_a_text_file_dropped_with_an_image_is_left_out_with_a_message_and_the_image_is_added(page, tiny, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not an image\n")
    add_references(page, notes, tiny.style_image)
    page.get_by_text("notes.png: not a readable image").first.wait_for()
    screenshot(page, "ui-error.png")
    close_messages(page)
    assert page.locator("[id^=card-pic-] figure").count() == 1
    page.locator("#prompt textarea").fill("a cat")
    set_number(page, "steps", 2)
    assert generate(page, tmp_path)


def test_out_of_range_value_shows_a_message_in_the_page(page, tiny):
    fill_form(page, tiny.style_image)
    page.locator("#width input").fill("100")
    page.locator("#generate").click()
    page.get_by_text("width must be a multiple of 8, got 100").first.wait_for()


def test_the_sweep_tab_shows_the_sheet_the_plot_and_the_pick(page, tiny):
    fill_form(page, tiny.style_image)
    tab(page, "Sweep")
    for elem_id, value in (("sweep-blocks", "style, all"), ("sweep-scales", "0.5, 1")):
        box = page.locator(f"#{elem_id} textarea")
        box.wait_for(state="visible")
        for _ in range(10):  # the tab may still be rendering and reset a value typed too early
            box.fill(value)
            page.wait_for_timeout(200)
            if box.input_value() == value:
                break
        assert box.input_value() == value
    page.locator("#run-sweep").click()
    page.locator("#plot img").first.wait_for()
    page.locator("#pick").get_by_text("Pick:").wait_for()
    screenshot(page, "ui-sweep.png")
    sheet = page.locator("#sheet img").first
    made = json.loads(Image.open(io.BytesIO(page.request.get(sheet.get_attribute("src")).body())).info[SHEET_KEY])
    assert (made["blocks"], made["scales"], made["base"]["seed"]) == (["style", "all"], [0.5, 1.0], 7)
    assert f"cell {made['picked'] + 1}:" in page.locator("#pick").inner_text()


# --- how it looks, to everyone --------------------------------------------------------------------------------


def test_a_screenshot_of_every_tab(page, tiny):
    add_references(page, tiny.style_image)
    for name in SETTINGS_TABS:
        tab(page, name)
        page.wait_for_timeout(300)
        screenshot(page, f"ui-tab-{name.lower()}.png")
    for name in OUTPUT_TABS:
        tab(page, name)
        page.wait_for_timeout(300)
        screenshot(page, f"ui-{name.split()[0].lower()}-tab.png")
    assert len(list(ARTIFACTS.glob("ui-tab-*.png"))) >= len(SETTINGS_TABS)


def test_no_tab_has_a_serious_accessibility_violation(page, tiny):
    """axe-core on every tab of both columns, with a reference card on the page: no serious or critical finding
    (every control labelled, text at contrast, names that match what is shown)."""
    if not AXE.exists():
        pytest.skip("the accessibility check needs axe-core: npm install --prefix .node axe-core")
    add_references(page, tiny.style_image)
    page.add_script_tag(path=str(AXE))
    found = set()
    for name in (*SETTINGS_TABS, *OUTPUT_TABS):
        tab(page, name)
        if name == "History":  # its tab loads the gallery: wait for it
            page.locator("#history-line").get_by_text("newest first").wait_for()
        for _ in range(2):  # an output loading is faded on purpose: check it settled, twice
            page.wait_for_timeout(300)
            settled(page)
        found |= set(page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .filter(v => ['serious', 'critical'].includes(v.impact))
            .flatMap(v => v.nodes.map(n => `${v.id}: ${n.target.join(' ')}`))"""))
    assert sorted(found) == []


# --- the API ----------------------------------------------------------------------------------------------------


def test_documented_api_client_example_works(app, tiny):
    """The README's example, as written there (a 2-step run for speed)."""
    from gradio_client import Client, handle_file

    client = Client(app[0], verbose=False)
    gallery, pngs, request_json = client.predict(
        style=[handle_file(str(tiny.style_image))], prompt="a cat", blocks="style", scale=1.0,
        seed=42, randomize_seed=False, steps=2, api_name="/generate",
    )
    assert read_png_request(pngs[0]).seed == 42 and json.loads(request_json)["seed"] == 42
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    sheet, cells, files = client.predict(
        style=[handle_file(str(tiny.style_image))], prompt="a cat", sweep_blocks="style, all",
        sweep_scales="0.5, 1.0", seed=42, randomize_seed=False, steps=2, api_name="/sweep",
    )
    assert len(cells) == 4 and Path(files[1]).name.endswith("sweep-plot.png")


def test_the_api_refuses_bad_input_with_the_pages_message(app, tiny):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app[0], verbose=False)
    with pytest.raises(AppError, match="width must be a multiple of 8"):
        client.predict(style=[handle_file(str(tiny.style_image))], prompt="a cat", width=100, api_name="/generate")
    with pytest.raises(AppError, match="randomize_seed must be true or false, got 'false'"):
        client.predict(style=[handle_file(str(tiny.style_image))], prompt="a cat", randomize_seed="false",
                       api_name="/generate")


def test_every_event_of_the_api_is_listed_with_the_forms_fields(app):
    from gradio_client import Client

    api = Client(app[0], verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) == {"/generate", "/sweep", "/save_style", "/restore", "/video", "/video_first_frame"}
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]] == list(ui.FIELDS)
    assert len(api["/generate"]["returns"]) == 3  # gallery, PNGs, request: as before the cards


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


def test_app_listens_on_localhost_only_without_a_share_link(app):
    """What the operating system says is listening on the app's port: the loopback address, nothing else."""
    import psutil

    port = int(app[0].rsplit(":", 1)[1].strip("/"))
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
    assert app[2].share_url is None


def test_a_login_guards_every_route_and_uploads_are_deleted_when_the_server_stops(tiny, tmp_path):
    import httpx

    from instantstyle import StylePipeline

    pipe = StylePipeline.from_pretrained(str(tiny.sdxl), str(tiny.sdxl_adapter), device="cpu")
    port = free_port()
    demo = ui.launch(pipe, tmp_path / "work", port=port, block=False, auth=[("ann", "pw")])
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


# --- restyle: the prompt from the photo, CSD guidance, content kept --------------------------------------------


def restyle_photo(page, photo: Path) -> None:
    """The Restyle tab's photo, and the recipe's canny ControlNet from the models folder."""
    tab(page, "Restyle")
    upload(page, "restyle", photo, page.locator("#thumb-restyle img"))
    tab(page, "Control")
    pick(page, "controlnet", "sdxl-controlnet")


def test_a_blank_prompt_and_a_caption_model_make_the_prompt_from_the_photo(page, tiny, restyle_models, tmp_path):
    from instantstyle.core.caption import caption
    from instantstyle.files.images import load_image

    fill_form(page, tiny.style_image, prompt="")
    restyle_photo(page, restyle_models.photo)
    pick(page, "caption-model", "blip")  # beside the prompt
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    assert Path(request.caption_model).name == "blip"
    assert request.prompt == caption(load_image(request.restyle), str(restyle_models.captioner)) != ""


def test_a_restyled_photos_score_table_says_how_much_of_it_is_kept(page, tiny, restyle_models, tmp_path):
    fill_form(page, tiny.style_image, prompt="a house")
    restyle_photo(page, restyle_models.photo)
    [png] = generate(page, tmp_path)
    rows = [row.inner_text().split("\t") for row in page.locator("#results table.scores tr").all()]
    assert ("keep", f"{read_png_scores(png).content_keep:.3f}") in [(name, value) for name, value in rows]


def test_csd_guidance_takes_a_checkpoint_from_the_models_folders(page, tiny, restyle_models, tmp_path):
    fill_form(page, tiny.style_image, prompt="a house")
    restyle_photo(page, restyle_models.photo)
    tab(page, "Restyle")
    pick(page, "csd", "csd.pth")
    set_number(page, "style-guidance", 300)
    screenshot(page, "ui-restyle-guidance.png")
    [png] = generate(page, tmp_path)
    request = read_png_request(png)
    assert (Path(request.csd).name, request.style_guidance, request.content_guidance) == ("csd.pth", 300.0, 0.0)


# --- CSGO: a second server, its adapter a CSGO checkpoint ----------------------------------------------------


@pytest.fixture
def csgo_page(csgo_app, browser):
    page = open_page(browser, csgo_app[0])
    yield page
    page.close()


def test_a_csgo_page_shows_its_composition_controls_and_hides_what_csgo_refuses(csgo_page):
    from playwright.sync_api import expect

    for name in ("Restyle", "Image", "Composition", "Regions", "Adapters"):  # the load event hides them
        expect(csgo_page.get_by_role("tab", name=name, exact=True)).to_be_hidden()
    visible = [name for name in SETTINGS_TABS if csgo_page.get_by_role("tab", name=name, exact=True).is_visible()]
    assert visible == ["Style", "Content", "Control", "Advanced"]
    assert "with CSGO adapter" in csgo_page.locator("#loaded").inner_text()
    tab(csgo_page, "Content")
    for shown in ("#content-image", "#content-adapter-scale"):
        csgo_page.locator(shown).wait_for()
    assert csgo_page.locator("#content-prompt").is_hidden() and csgo_page.locator("#content-scale").is_hidden()
    tab(csgo_page, "Control")
    csgo_page.locator("#control-scale").wait_for()
    assert csgo_page.locator("#control").is_hidden() and csgo_page.locator("#control-image").is_hidden()


def test_a_csgo_image_made_in_the_page_has_the_pixels_of_the_command_line(csgo_page, tiny, csgo_models, tmp_path):
    """Image-driven style transfer: the content image and the content tokens' scale in *Content*, the tile
    ControlNet in *Control*, guidance and control scale left blank (CSGO's 10 and 0.6)."""
    fill_form(csgo_page, csgo_models.style_image, prompt="a photo of a house", steps=1, seed=42)
    set_number(csgo_page, "width", 96)
    set_number(csgo_page, "height", 64)
    tab(csgo_page, "Content")
    upload(csgo_page, "content-image", csgo_models.content_image, csgo_page.locator("#thumb-content-image img"))
    set_number(csgo_page, "content-adapter-scale", 0.3)
    tab(csgo_page, "Control")
    pick(csgo_page, "controlnet", "TTPlanet/TTPLanet_SDXL_Controlnet_Tile_Realistic")
    [png] = generate(csgo_page, tmp_path)
    screenshot(csgo_page, "ui-csgo.png")
    request = read_png_request(png)
    assert (request.guidance, request.control, request.control_scale, request.content_adapter_scale) == (
        10.0, "tile", 0.6, 0.3)
    run_cli("generate", "--model", tiny.sdxl, "--adapter", csgo_models.checkpoint, "--style", csgo_models.style_image,
            "--content-image", csgo_models.content_image, "--prompt", "a photo of a house", "--content-adapter-scale",
            0.3, "--control", "tile", "--controlnet", csgo_models.tile_controlnet, "--steps", 1, "--width", 96,
            "--height", 64, "--seed", 42, "--device", "cpu", "-o", tmp_path / "cli.png")
    assert (pixels(Image.open(png)) == pixels(Image.open(tmp_path / "cli.png"))).all()


# --- video -------------------------------------------------------------------------------------------------------


def newest(folder: Path, pattern: str) -> Path:
    """The file the test just made (the module's server keeps every test's outputs in one workdir)."""
    return max(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns)


def video_settings(page, clip: Path, frames: int = 4, steps: int = 2) -> None:
    """The Video tab at the tiny fixtures' sizes: the clip, 4 frames at 64 px, 2 steps; the first frame's canny
    ControlNet from the models folder."""
    tab(page, "Control")
    pick(page, "controlnet", "sdxl-controlnet")
    tab(page, "Video")
    upload(page, "video-clip", clip, page.locator("#video-info").get_by_text(f"{clip.name}: "))
    for elem_id, value in (("video-frames", frames), ("video-width", 64), ("video-height", 64),
                           ("video-steps", steps)):
        set_number(page, elem_id, value)
    page.get_by_text("Inversion and injection (AnyV2V)").click()
    set_number(page, "video-inversion-steps", steps)


def test_the_video_tab_previews_the_first_frame_and_plays_the_video(page, app, tiny, video_models, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image, seed=3)
    video_settings(page, video_models.clip)
    page.locator("#video-preview").click()
    preview = page.locator("#first-frame img").first
    preview.wait_for()
    previewed = Image.open(io.BytesIO(page.request.get(preview.get_attribute("src")).body()))
    page.locator("#run-video").click()
    player = page.locator("#video-result video").first
    player.wait_for()
    page.wait_for_function("() => { const v = document.querySelector('#video-result video');"
                           " return v && v.readyState >= 2 && v.duration > 0; }")  # Chromium plays it
    screenshot(page, "ui-video.png")
    made = tmp_path / "made.mp4"
    made.write_bytes(page.request.get(player.get_attribute("src")).body())
    from instantstyle.modes.video import read_video_request

    record = read_video_request(made)
    assert (record.options.frames, record.options.width, record.options.seed) == (4, 64, 3)
    first = newest(app[1].outputs, "*video.first.png")  # this test's: the module's other videos are older
    assert (pixels(previewed) == pixels(Image.open(first))).all()  # the preview is the video's first frame
    expect(page.locator("#video-scores")).to_contain_text("temporal_consistency")  # the table under the player


def test_a_ready_first_frame_uploaded_in_the_video_tab_starts_the_video(page, app, tiny, video_models, tmp_path):
    fill_form(page, tiny.style_image, seed=3)
    video_settings(page, video_models.clip)
    upload(page, "video-first-frame", video_models.edited_frame, page.locator("#thumb-video-first-frame img"))
    page.locator("#run-video").click()
    page.locator("#video-result video").first.wait_for()
    from instantstyle.modes.video import read_video_request

    assert Path(read_video_request(newest(app[1].outputs, "*video.mp4")).options.first_frame).parent.name == "inputs"


def test_a_cancelled_video_saves_nothing_and_the_server_goes_on(page, app, tiny, video_models, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image)
    video_settings(page, video_models.clip, steps=200)
    before = sorted(app[1].outputs.glob("*video*"))
    settled(page)  # the last box's change is in: the click is not lost to it
    page.locator("#run-video").click()
    expect(page.locator("#video-result")).to_contain_text(re.compile(r"\d+/200 steps[\s\S]*inversion"),
                                                         use_inner_text=True)  # the phase and its step bar
    page.locator("#cancel-video").click()
    page.get_by_text("cancelling: the job stops after its current step").wait_for()
    page.goto(app[0])  # a new visit's job runs next
    page.wait_for_selector("#generate")
    fill_form(page, tiny.style_image)
    assert generate(page, tmp_path)
    assert sorted(app[1].outputs.glob("*video*")) == before  # nothing of the cancelled video is kept


# --- careless input of the new controls -------------------------------------------------------------------------


def careless_guidance(page, paths) -> None:
    page.locator("#guidance input").fill("-3")


def careless_csd_guidance(page, paths) -> None:
    tab(page, "Restyle")
    upload(page, "restyle", paths["photo"], page.locator("#thumb-restyle img"))
    set_number(page, "style-guidance", 300)


def careless_caption(page, paths) -> None:
    tab(page, "Restyle")
    upload(page, "restyle", paths["photo"], page.locator("#thumb-restyle img"))
    pick(page, "caption-model", "blip")  # and the prompt "a cat" typed


def careless_clip(page, paths) -> None:
    tab(page, "Video")
    upload(page, "video-clip", paths["notes"],
           page.locator("#video-info").get_by_text("clip notes.mp4: not a readable video"))  # said on upload
    page.locator("#run-video").click()


def careless_video_size(page, paths) -> None:
    tab(page, "Video")
    upload(page, "video-clip", paths["clip"], page.locator("#video-info").get_by_text(f"{paths['clip'].name}: "))
    set_number(page, "video-width", 100)
    page.locator("#run-video").click()


@pytest.mark.parametrize(("careless", "message"), [
    (careless_guidance, "guidance must be between 0 and 50, got -3"),
    (careless_csd_guidance, "CSD style and content guidance need a CSD checkpoint: pick one"),
    (careless_caption, "a caption model makes the prompt from the photo: clear the prompt, or pick none"),
    (careless_clip, "clip notes.mp4: not a readable video"),
    (careless_video_size, "video width must be a multiple of 8, got 100"),
])
def test_careless_input_of_a_new_control_is_one_line_in_the_page(page, app, tiny, restyle_models, video_models,
                                                                  tmp_path, careless, message):
    import httpx

    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    fill_form(page, tiny.style_image)
    careless(page, {"photo": restyle_models.photo, "notes": notes, "clip": video_models.clip})
    if careless.__name__ not in ("careless_clip", "careless_video_size"):
        tab(page, "Generate")
        page.locator("#generate").click()
    shown = page.locator(".toast-text, .toast-message-text").filter(has_text=message).first
    shown.wait_for()
    assert "\n" not in shown.inner_text().strip() and "Traceback" not in shown.inner_text()
    assert httpx.get(f"{app[0]}gradio_api/info", timeout=30).status_code == 200  # the server goes on


# --- last: a LoRA stays loaded in the module's pipeline -------------------------------------------------------


def test_a_lora_picked_from_the_models_folders_joins_the_request(page, tiny, tmp_path):
    from playwright.sync_api import expect

    fill_form(page, tiny.style_image)
    tab(page, "Advanced")
    pick(page, "lora-pick", "ink.safetensors", kept=False)
    expect(page.locator("#lora textarea, #lora input").first).to_have_value("ink.safetensors")
    [png] = generate(page, tmp_path)
    assert [Path(ref.path).name for ref in read_png_request(png).lora] == ["ink.safetensors"]
