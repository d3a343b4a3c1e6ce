"""The page: the form's tabs (``fields.TABS``) beside the results, sweep, history and restore tabs, and the events
that tie them to ``App``; then ``launch``, which serves it behind the app's guards."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ...errors import UserError
from ...files.images import MAX_PIXELS
from ...files.textfiles import read_small_text
from .fields import (
    ABOVE_TABS,
    CUSTOM,
    FIELD,
    FIELDS,
    FORM,
    MAX_REFERENCES,
    SWEEP_FORM,
    TABS,
    VIDEO_FORM,
    Field,
    Item,
    shows_errors,
    tab_fields,
    takes_form,
)
from .guard import Guard, LoginThrottle, PaintGuard, guard_painter, stop_on_sigterm
from .handlers import App, PipelineHolder, PipeSource
from .painter import cap_mask_painter
from .video_tab import VideoMaker
from .workdir import ModelChoices, Workdir

#: Largest upload gradio accepts (the most pixels an image may have is the app's pixel cap, ``ui --max-pixels``).
MAX_FILE_SIZE = "25mb"
#: gradio's own copies of uploads are deleted an hour after they arrive (checked every 10 minutes) and all of them
#: when the server stops (Ctrl-C or SIGTERM); the app keeps what it uses under ``WORKDIR/inputs``.
DELETE_CACHE = (600, 3600)
#: The largest ``--auth-file`` read (a file of logins is a few lines).
MAX_AUTH_FILE = 1024 * 1024
QUEUE = "pipeline"  # every event that runs the pipeline shares this concurrency slot
THEME_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page works offline
#: Compact: the common case (a reference, a prompt, Generate, the result) fits a 1366 x 768 screen.
#: Text and buttons at WCAG AA contrast (4.5:1): gradio's default orange and light grey text are below it.
THEME = gr.themes.Default(primary_hue="indigo", font=THEME_FONTS, font_mono=["ui-monospace", "monospace"],
                          spacing_size="sm", text_size="sm", radius_size="sm").set(
    block_padding="4px 8px", layout_gap="6px", form_gap_width="1px",
    body_text_color_subdued="*neutral_600", color_accent="*primary_600", color_accent_soft="*primary_100",
    button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
    button_primary_text_color="white", button_cancel_background_fill="#b91c1c",
    button_cancel_background_fill_hover="#991b1b", button_cancel_text_color="white",
    slider_color="*primary_600", checkbox_background_color_selected="*primary_600",
)
#: gradio's own markup, made to pass an accessibility check: a button named unlike its visible text (the upload
#: areas, gallery thumbnails) gets a name starting with that text; a labelled element without a role (empty-state
#: boxes, icons) gets one. Run on load and after every change of the page.
PAGE_JS = """
() => {
  const fix = () => {
    document.querySelectorAll('button[aria-label]').forEach(b => {
      const text = (b.innerText || '').replace(/\\s+/g, ' ').trim();
      const label = b.getAttribute('aria-label') || '';
      if (text && !label.toLowerCase().includes(text.toLowerCase())) b.setAttribute('aria-label', `${text} (${label})`);
    });
    document.querySelectorAll('div[aria-label]:not([role]), span[aria-label]:not([role])').forEach(d => {
      d.setAttribute('role', d.querySelector('button, input, select, textarea, a, [tabindex]') ? 'group' : 'img');
    });
  };
  let queued = false;
  new MutationObserver(() => {
    if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; fix(); }); }
  }).observe(document.body, {subtree: true, childList: true});
  fix();
}
"""
#: Fields built hidden (the cards and region slots fill them); the page never shows them.
HIDDEN = frozenset({"style", "style_weights", "regions"})

CSS = """
.gradio-container {padding: 2px 10px !important}
#style, #weights, #regions {display: none !important}
#header {align-items: baseline; gap: 16px; min-height: 0; flex-wrap: nowrap}
#header {justify-content: flex-start !important}
#title, #loaded {flex: 0 1 auto !important; width: auto !important; min-width: 0 !important; padding: 0 !important}
#title h1 {font-size: 1.2rem !important; margin: 0 !important}
#loaded p {margin: 0 !important; font-size: .8rem !important}
#refs {gap: 6px; flex-wrap: wrap; align-items: stretch}
.ref-card {flex: 0 0 124px !important; min-width: 124px !important; gap: 0 !important;
           border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 4px !important}
.ref-card .block {padding: 2px 4px !important}
.ref-thumb, .thumb {margin: 0; text-align: center}
.ref-thumb img {width: 112px; height: 64px; object-fit: cover; border-radius: 6px; display: block; margin: auto}
.thumb img {max-width: 96px; max-height: 96px; border-radius: 6px; display: block}
.ref-thumb figcaption, .thumb figcaption {font-size: .72rem; color: var(--body-text-color-subdued)}
.no-thumb {display: inline-block; width: 112px; height: 64px; line-height: 64px; font-size: .8rem;
           border-radius: 6px; background: var(--background-fill-secondary)}
#style-add {flex: 1 1 150px !important; min-width: 150px !important}
#settings button[role=tab] {padding: 3px 6px !important; font-size: .8rem !important}
.results {display: flex; flex-wrap: wrap; gap: 10px}
.result {margin: 0; flex: 0 1 auto}
.result img {max-width: min(100%, 400px); max-height: 400px; min-width: 160px; border-radius: 6px; display: block;
             image-rendering: pixelated}
.result figcaption {font-size: .8rem}
table.scores {font-size: .8rem; border-collapse: collapse; margin-top: 2px}
table.scores th, table.scores td {padding: 1px 8px; border-bottom: 1px solid var(--border-color-primary);
                                  text-align: left; font-variant-numeric: tabular-nums}
table.scores td.better {background: #d9f2dd; color: #0b4d16}
table.scores td.worse {background: #f8dcdc; color: #6b0f0f}
.dark table.scores td.better {background: #0f3d1a; color: #d9f2dd}
.dark table.scores td.worse {background: #4d1111; color: #f8dcdc}
#generate {min-height: 40px}
footer {margin-top: 2px !important; padding: 2px !important}
@media (max-width: 640px) {
  .ref-card {flex: 0 0 104px !important; min-width: 104px !important}
  .ref-thumb img, .no-thumb {width: 92px}
}
"""


def _build(items: Sequence[Item], made: dict[str, Any], models: ModelChoices,
           fields: dict[str, Field] = FIELD, in_row: bool = False) -> None:
    """Build ``items`` (a field, a row of fields, or an ``@panel`` the page builds itself) in place, noting the
    components in ``made`` (a field that is a single upload gets its thumbnail beside it: ``thumb:NAME``)."""
    for item in items:
        if isinstance(item, tuple):
            with gr.Row(equal_height=False):
                _build(item, made, models, fields, in_row=True)
        elif item.startswith("@"):
            made[item] = None  # built by the page (regions, LoRA picker)
        elif fields[item].thumb is not None and not in_row:
            with gr.Row(equal_height=False):
                _build((item,), made, models, fields, in_row=True)
        else:
            field = fields[item]
            made[item] = field.build(field.default, models)
            if field.thumb is not None:
                made[f"thumb:{item}"] = gr.HTML(elem_id=f"thumb-{item.replace('_', '-')}", elem_classes=["thumb-box"],
                                                min_width=100, scale=0)


def _references(made: dict[str, Any], models: ModelChoices) -> None:
    """The reference cards (picture, weight, remove) and the drop zone that adds several at once."""
    with gr.Row(elem_id="refs", equal_height=False):
        for i in range(MAX_REFERENCES):
            with gr.Column(visible=False, min_width=120, elem_classes=["ref-card"]) as card:
                made[f"card:{i}"] = card
                made[f"card-pic:{i}"] = gr.HTML(elem_id=f"card-pic-{i}")
                made[f"weight:{i}"] = gr.Slider(0, 2, 1.0, step=0.05, label=f"Weight #{i + 1}",
                                                elem_id=f"weight-{i}", min_width=100, buttons=[])
                made[f"remove:{i}"] = gr.Button(f"Remove #{i + 1}", size="sm", elem_id=f"remove-{i}")
        made["style_add"] = gr.File(label="Add style references: drop images or style files (several at once)",
                                    file_count="multiple", file_types=["image", ".safetensors"], elem_id="style-add",
                                    height=100)
    _build(ABOVE_TABS, made, models)


def _regions_panel(made: dict[str, Any], guard: PaintGuard, max_pixels: int) -> None:
    """Per reference, its region mask (white = where its style acts): an upload, or painted below."""
    gr.Markdown("One mask per reference, white where its style acts (with regions the references are not "
                "blended). Upload a mask, or paint one and give it to a reference.")
    for i in range(MAX_REFERENCES):
        with gr.Row(visible=False, equal_height=False) as row:
            made[f"region-row:{i}"] = row
            made[f"region:{i}"] = gr.File(label=f"Region of reference {i + 1}", file_types=["image"],
                                          elem_id=f"region-{i}", height=80)
            made[f"region-pic:{i}"] = gr.HTML(elem_id=f"region-pic-{i}")
    made["region_paint"] = guard_painter(cap_mask_painter(gr.ImageEditor(
        None, label="Paint a region (white)", type="numpy", image_mode="RGBA", sources=("upload",),
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False, canvas_size=(512, 512),
        elem_id="region-paint", height=260), max_pixels), guard)
    with gr.Row():
        made["region_target"] = gr.Dropdown([f"reference {i + 1}" for i in range(MAX_REFERENCES)],
                                            value="reference 1", label="The painting is the region of",
                                            elem_id="region-target")
        made["region_use"] = gr.Button("Use the painting", elem_id="region-use")


def _form(made: dict[str, Any], models: ModelChoices, guard: PaintGuard, max_pixels: int) -> dict[str, Any]:
    """The left column: references, prompt, and the settings tabs (``TABS``); tab name -> tab."""
    _references(made, models)
    tabs: dict[str, Any] = {}
    with gr.Tabs(elem_id="settings", overflow_behavior="wrap"):
        for tab in TABS:
            with gr.Tab(tab.label, id=tab.name, elem_id=f"tab-{tab.name}") as tabs[tab.name]:
                _build(tab.items, made, models)
                if "@regions" in made and made["@regions"] is None:
                    made["@regions"] = True
                    _regions_panel(made, guard, max_pixels)
                if "@lora" in made and made["@lora"] is None:
                    made["@lora"] = True
                    made["lora_pick"] = gr.Dropdown(list(models.loras), value=None, visible=bool(models.loras),
                                                    label="Add a LoRA from the models folders", elem_id="lora-pick")
    return tabs


def _video_tab(out: dict[str, Any]) -> None:
    """The Video tab: the clip, the buttons, the first frame's preview and the result's player, then the video's
    options (the result in view first, as on the Generate tab)."""
    video_fields = {f.name: f for f in VIDEO_FORM}
    _build(("video_clip",), out, ModelChoices(), video_fields)
    out["video-info"] = gr.Markdown(elem_id="video-info")
    gr.Markdown("The form makes the first frame (by default AnyV2V's: a canny ControlNet on the clip's first frame; "
                "pick its ControlNet in *Control*), then the video model carries its style through the clip.",
                elem_id="video-note")
    with gr.Row():
        out["preview-first"] = gr.Button("Preview first frame", elem_id="video-preview", scale=2)
        out["run-video"] = gr.Button("Make video", variant="primary", elem_id="run-video", scale=2)
        out["cancel-video"] = gr.Button("Cancel", variant="stop", elem_id="cancel-video", scale=1)
    with gr.Row(equal_height=False):
        out["first-frame"] = gr.Image(label="First frame", type="filepath", format="png", interactive=False,
                                      elem_id="first-frame", height=240)
        out["video"] = gr.Video(label="Video", interactive=False, elem_id="video-result", height=240)
    out["video-scores"] = gr.Markdown(elem_id="video-scores")
    _build((("video_frames", "video_fps", "video_width", "video_height"),
            ("video_steps", "video_guidance"), ("video_start", "video_duration"), "video_prompt",
            "video_first_frame"), out, ModelChoices(), video_fields)
    with gr.Accordion("Inversion and injection (AnyV2V)", open=False, elem_id="video-advanced"):
        _build((("video_inversion_steps", "video_conv_injection"), ("video_spatial_injection",
                                                                    "video_temporal_injection")),
               out, ModelChoices(), video_fields)
    with gr.Accordion("Downloads and record", open=False, elem_id="video-details"):
        out["video-files"] = gr.File(label="Video, first frame (its settings inside) and record (instantstyle video "
                                     "--from)", file_count="multiple", interactive=False, elem_id="video-files")
        out["video-json"] = gr.Code(label="Record (paths relative to the server's workdir)", language="json",
                                    interactive=False, elem_id="video-json")


def _outputs(video: bool = False) -> dict[str, Any]:
    """The right column's tabs: results, sweep, video (with a video model), history, restore and style files."""
    out: dict[str, Any] = {}
    with gr.Tabs(elem_id="views"):
        with gr.Tab("Generate", id="results-tab"):
            with gr.Row(elem_id="run-row"):
                out["generate"] = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                out["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel", scale=1)
            out["results"] = gr.HTML(elem_id="results", min_height=120)
            out["gallery"] = gr.Gallery(label="Results", columns=2, elem_id="gallery", format="png", visible=False)
            with gr.Accordion("Downloads and request", open=False, elem_id="details"):
                out["downloads"] = gr.File(label="PNGs (their settings inside)", file_count="multiple",
                                           interactive=False, elem_id="downloads")
                out["json"] = gr.Code(label="Request (paths relative to the server's workdir)", language="json",
                                      interactive=False, elem_id="request-json")
        with gr.Tab("Sweep", id="sweep-tab"):
            _build(tuple(f.name for f in SWEEP_FORM), out, ModelChoices(), {f.name: f for f in SWEEP_FORM})
            with gr.Row():
                out["run-sweep"] = gr.Button("Render sweep", variant="primary", elem_id="run-sweep", scale=3)
                out["cancel-sweep"] = gr.Button("Cancel", variant="stop", elem_id="cancel-sweep", scale=1)
            out["pick"] = gr.Markdown(elem_id="pick")
            out["sheet"] = gr.Image(label="Sweep sheet (the pick framed)", type="filepath", format="png",
                                    interactive=False, elem_id="sheet")
            out["plot"] = gr.Image(label="Style against prompt score (the pick ringed)", type="filepath",
                                   format="png", interactive=False, elem_id="plot")
            out["cells"] = gr.Gallery(label="Cells", columns=3, format="png", elem_id="cells")
            out["sweep-files"] = gr.File(label="Download sheet, plot, table and cells", file_count="multiple",
                                         interactive=False, elem_id="sweep-files")
        if video:
            with gr.Tab("Video", id="video-tab"):
                _video_tab(out)
        with gr.Tab("History", id="history-tab") as out["history-tab"]:
            with gr.Row(equal_height=True):
                out["newer"] = gr.Button("Newer", size="sm", elem_id="history-newer", scale=0, min_width=80)
                out["older"] = gr.Button("Older", size="sm", elem_id="history-older", scale=0, min_width=80)
                out["history-line"] = gr.Markdown(elem_id="history-line")
            out["history"] = gr.Gallery(label="Made on this server", columns=4, allow_preview=False,
                                        format="png", elem_id="history", height=300)
            out["history-scores"] = gr.HTML(elem_id="history-scores")
            out["use"] = gr.Button("Use these settings", interactive=False, elem_id="use-settings")
            with gr.Accordion("Details: its request", open=False, elem_id="history-details"):
                out["history-json"] = gr.Code(label="Request (paths relative to the server's workdir)",
                                              language="json", interactive=False, elem_id="history-json")
            out["history-paths"], out["history-page"] = gr.State([]), gr.State(1)
            out["history-picked"] = gr.State(None)
        with gr.Tab("Restore & style files", id="restore-tab"):
            out["restore"] = gr.File(label="Drop a PNG made by instantstyle to restore its settings",
                                     file_types=[".png"], elem_id="restore")
            out["save-style"] = gr.Button("Save current style as a style file", elem_id="save-style")
            out["style-file"] = gr.File(label="Style file (add it as a reference to reuse it without the image)",
                                        interactive=False, elem_id="style-file")
    return out


def build_app(
    source: PipeSource, workdir: str | Path, csd: str | None = None, *, models_dirs: Sequence[str | Path] = (),
    max_pixels: int = MAX_PIXELS, guard: PaintGuard | None = None, video_model: str | None = None,
) -> gr.Blocks:
    """The gradio app over one pipeline (or a factory called on first use); outputs go under ``workdir``; ``csd``:
    a CSD checkpoint for the csd_style score. LoRAs, adapters, ControlNets, depth models, captioning models and CSD
    checkpoints named in the page are read only from ``models_dirs``; every image sent is held to ``max_pixels``.
    With ``video_model`` (an I2VGen-XL folder or hub id) the page has a Video tab."""
    app = App(PipelineHolder(source), Workdir(workdir, models_dirs, max_pixels), csd,
              video=None if video_model is None else VideoMaker(video_model))
    guard = guard or PaintGuard()
    models = app.work.models()
    with gr.Blocks(title="InstantStyle", analytics_enabled=False, delete_cache=DELETE_CACHE, fill_width=True) as demo:
        with gr.Row(elem_id="header", equal_height=False):
            gr.Markdown("# InstantStyle", elem_id="title")
            loaded = gr.Markdown("Loading the model…", elem_id="loaded")
        field: dict[str, Any] = {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320, elem_id="form"):
                tabs = _form(field, models, guard, max_pixels)
            with gr.Column(scale=6, min_width=320, elem_id="output"):
                out = _outputs(video=app.video is not None)
        for name in ("mask_paint",):
            field[name].max_pixels = max_pixels
            guard_painter(field[name], guard)
        _wire(demo, app, field, out, tabs, loaded)
    return demo


def _wire(demo: gr.Blocks, app: App, field: dict[str, Any], out: dict[str, Any], tabs: dict[str, Any],
          loaded: Any) -> None:
    """The page's events."""
    form = [field[name] for name in FIELDS]
    queue = {"concurrency_limit": 1, "concurrency_id": QUEUE}  # events that use the pipeline take turns
    private: dict[str, Any] = {"api_visibility": "private"}
    history = [out["history"], out["history-line"], out["history-paths"], out["history-page"]]

    generate = out["generate"].click(takes_form(FORM, app.generate), form, [out["gallery"], out["downloads"],
                                     out["json"]], api_name="generate", show_progress_on=[out["results"]], **queue)
    generate.success(shows_errors(app.show_results), out["downloads"], out["results"], **private)
    sweep = out["run-sweep"].click(takes_form(FORM + SWEEP_FORM, app.sweep),
                                   form + [out[f.name] for f in SWEEP_FORM],
                                   [out["sheet"], out["cells"], out["sweep-files"]], api_name="sweep", **queue)
    sweep.success(shows_errors(app.show_sweep), out["sweep-files"], [out["plot"], out["pick"]], **private)
    jobs = [generate, sweep]
    if app.video is not None:
        jobs += _wire_video(app, form, out, queue, private)
    for button in ("cancel", "cancel-sweep", "cancel-video"):  # API clients cancel their own jobs (Job.cancel)
        if button in out:
            out[button].click(app.cancel, None, None, cancels=jobs, **private)
    out["save-style"].click(takes_form(FORM, app.save_style), form, out["style-file"], api_name="save_style",
                            **queue)
    restored = out["restore"].upload(shows_errors(app.restore), out["restore"], form, api_name="restore")

    # References: drop to add, a card per reference, weights typed into the weights field as the sliders move.
    cards = [c for i in range(MAX_REFERENCES) for c in (field[f"card:{i}"], field[f"card-pic:{i}"],
                                                       field[f"weight:{i}"], field[f"region-row:{i}"])]
    regions = [field[f"region:{i}"] for i in range(MAX_REFERENCES)]
    sliders = [field[f"weight:{i}"] for i in range(MAX_REFERENCES)]
    show_cards = (shows_errors(lambda style, weights: _cards(app, style, weights)),
                  [field["style"], field["style_weights"]], cards)
    def add(added: Any, style: Any, weights: Any) -> list[Any]:
        """References added, a lone style file's settings restored, the cards: one update (no slider races)."""
        style, weights, cleared = app.add_references(added, style, weights)
        values = [style, *(app.style_uploaded(added) if len(style or []) == 1 else [gr.skip()] * (len(FIELDS) - 1))]
        at = FIELDS.index("style_weights")
        if isinstance(values[at], str):
            weights = values[at]
        else:
            values[at] = weights
        return [cleared, *values, *_cards(app, style, weights)]

    field["style_add"].upload(shows_errors(add), [field["style_add"], field["style"], field["style_weights"]],
                              [field["style_add"], *form, *cards], **private)
    restored.success(*show_cards, **private)
    weights_js = "(files, ...w) => w.slice(0, (files || []).length).map(v => Number(v)).join(', ')"
    for slider in sliders:
        slider.input(None, [field["style"], *sliders], field["style_weights"], js=weights_js, **private)
    for i in range(MAX_REFERENCES):
        def remove(style: Any, weights: Any, *slots: Any, i: int = i) -> list[Any]:
            style, weights, *rest = app.remove_reference(i)(style, weights, *slots)
            return [style, weights, *rest, *_cards(app, style, weights)]

        field[f"remove:{i}"].click(shows_errors(remove), [field["style"], field["style_weights"], *regions],
                                   [field["style"], field["style_weights"], *regions, field["regions"], *cards],
                                   **private)

    # Regions: a slot per reference fills the request's region masks; a painting can fill a slot.
    for i, slot in enumerate(regions):
        slot.upload(app.regions_from_slots, [field["style"], *regions], field["regions"], **private)
        slot.clear(app.regions_from_slots, [field["style"], *regions], field["regions"], **private)
        slot.change(app.thumb(f"region of reference {i + 1}"), slot, field[f"region-pic:{i}"], **private)
    field["regions"].change(app.slots_from_regions, field["regions"], regions, **private)
    field["region_use"].click(shows_errors(app.use_painted_region),
                              [field["region_paint"], field["region_target"], field["style"], *regions],
                              [*regions, field["regions"]], **private)

    _wire_thumbs(app, FORM, field, private)
    field["blocks"].change(shows_errors(app.load_blocks), field["blocks"], field["block_table"], **private)
    field["init_image"].change(shows_errors(app.paint_over), field["init_image"], field["mask_paint"], **private)
    field["block_table"].input(lambda: CUSTOM, None, field["blocks"], **private)  # an edited table: custom
    field["lora_pick"].input(shows_errors(app.add_lora), [field["lora_pick"], field["lora"]],
                             [field["lora"], field["lora_pick"]], **private)

    # History: the workdir's images, newest first; one opens its request; "use these settings" restores it.
    out["history-tab"].select(shows_errors(app.history), out["history-page"], history, **private)
    generate.success(shows_errors(app.history), out["history-page"], history, **private)
    out["newer"].click(shows_errors(lambda page: app.history((page or 1) - 1)), out["history-page"], history,
                       **private)
    out["older"].click(shows_errors(lambda page: app.history((page or 1) + 1)), out["history-page"], history,
                       **private)
    out["history"].select(shows_errors(app.open_history), out["history-paths"],
                          [out["history-scores"], out["history-json"], out["history-picked"], out["use"]], **private)
    out["use"].click(shows_errors(app.restore), out["history-picked"], form, **private).success(*show_cards,
                                                                                                   **private)

    demo.load(shows_errors(app.load_blocks), field["blocks"], field["block_table"], **private)
    toggled = [name for name in FIELDS if FIELD[name].shown_for is not None and name not in HIDDEN]
    demo.load(lambda: _shown(app, toggled, list(tabs)), None, [loaded, *(field[n] for n in toggled), *tabs.values()],
              **private)


def _wire_thumbs(app: App, fields: Sequence[Field], made: dict[str, Any], private: dict[str, Any]) -> None:
    """A thumbnail beside each single upload of ``fields`` (``thumb:NAME``, built by ``_build``), shown on change."""
    for f in fields:
        if f.thumb is not None:
            made[f.name].change(app.thumb(f.thumb), made[f.name], made[f"thumb:{f.name}"], **private)


def _wire_video(app: App, form: list[Any], out: dict[str, Any], queue: dict[str, Any],
                private: dict[str, Any]) -> list[Any]:
    """The Video tab's events (``/video``, ``/video_first_frame``; the clip's line on upload); the running ones."""
    inputs = form + [out[f.name] for f in VIDEO_FORM]
    out["video_clip"].change(shows_errors(app.clip_info), out["video_clip"], out["video-info"], **private)
    _wire_thumbs(app, VIDEO_FORM, out, private)
    preview = out["preview-first"].click(takes_form(FORM + VIDEO_FORM, app.preview_first_frame), inputs,
                                         out["first-frame"], api_name="video_first_frame",
                                         show_progress_on=[out["first-frame"]], **queue)
    video = out["run-video"].click(takes_form(FORM + VIDEO_FORM, app.make_video), inputs,
                                   [out["video"], out["first-frame"], out["video-files"], out["video-json"],
                                    out["video-scores"]],
                                   api_name="video", show_progress_on=[out["video"]], **queue)
    return [preview, video]


def _cards(app: App, style: Any, weights: Any) -> list[Any]:
    """The card slots and region rows for the references (visible per reference)."""
    made = app.cards(style, weights)
    count = len(style or [])
    return [item for i in range(MAX_REFERENCES) for item in (*made[3 * i:3 * i + 3], gr.update(visible=i < count))]


def _shown(app: App, toggled: list[str], tab_names: list[str]) -> list[Any]:
    """The model's line, the family-specific fields shown or hidden, and each tab shown when any field of it is."""
    described = app.describe_pipeline()
    shown = described["shown"]
    tab_shown = [any(shown[name] for name in tab_fields(tab)) for tab in TABS if tab.name in tab_names]
    # A tab updated to visible=False keeps its button in gradio 6 (the page showed FLUX a Composition tab);
    # "hidden" takes it away.
    return [described["line"], *(gr.update(visible=shown[n]) for n in toggled),
            *(gr.update(visible=True if v else "hidden") for v in tab_shown)]


def read_auth(pairs: Sequence[str] = (), files: Sequence[str | Path] = ()) -> list[tuple[str, str]]:
    """Logins for the page from ``USER:PASSWORD`` values and files of such lines (blank lines and ``#`` comments
    skipped); a malformed one is a one-line ``UserError`` that never shows the password."""
    found = [("--auth value", pair) for pair in pairs]
    for name in files:
        text = read_small_text(name, "auth file", MAX_AUTH_FILE, "USER:PASSWORD lines")  # never all of /dev/zero
        lines = [(f"auth file {name} line {n}", line.strip()) for n, line in enumerate(text.split("\n"), 1)]
        lines = [(where, line) for where, line in lines if line and not line.startswith("#")]
        if not lines:
            raise UserError(f"auth file {name}: holds no USER:PASSWORD line")
        found += lines
    logins: dict[str, str] = {}
    for where, pair in found:
        user, _, password = pair.partition(":")
        user = user.strip()
        if not user or not password:
            raise UserError(f"{where}: give USER:PASSWORD, neither empty")
        if user in logins:
            raise UserError(f"{where}: user {user!r} is given twice")
        logins[user] = password
    return list(logins.items())


def launch(
    source: PipeSource,
    workdir: str | Path = "instantstyle-ui",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
    csd: str | None = None,
    *,
    auth: Sequence[tuple[str, str]] = (),
    models_dirs: Sequence[str | Path] = (),
    max_pixels: int = MAX_PIXELS,
    video_model: str | None = None,
) -> gr.Blocks:
    """Serve the app on ``host:port`` (localhost unless told otherwise; no public link unless ``share``; a login
    page when ``auth`` gives (user, password) pairs, failed logins backing off per client). Blocking, it stops on
    Ctrl-C or SIGTERM, deleting gradio's copies of the uploads. gradio prints nothing: the caller says where it
    serves."""
    from starlette.middleware import Middleware

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(source, workdir, csd, models_dirs=models_dirs, max_pixels=max_pixels, video_model=video_model)
    demo.queue(default_concurrency_limit=1)
    if block:
        stop_on_sigterm()
    demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(Workdir(workdir).root)], ssr_mode=False, quiet=True, auth=list(auth) or None,
        theme=THEME, css=CSS, js=PAGE_JS,
        app_kwargs={"middleware": [Middleware(Guard, throttle=LoginThrottle())]},
    )
    if block:  # stopped (Ctrl-C or SIGTERM): gradio's server waits 5 s at most for open connections, and its own
        demo.close(verbose=False)  # deleting of the uploads comes after that wait, so it is done here as well
        from gradio.route_utils import delete_files_created_by_app

        delete_files_created_by_app(demo, age=None)
    return demo
