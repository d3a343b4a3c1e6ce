"""What the page's events do, on the app's one pipeline and its workdir."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from ...core.embeddings import load_style
from ...core.pipeline import Result, StylePipeline
from ...core.preflight import check
from ...core.request import PNG_KEY, Request, read_png_request, read_png_text, write_png
from ...core.styles import style_settings
from ...errors import UserError
from ...files.images import image_size
from ...loading.runtime import Runtime
from ...modes.video import SOURCE_SUFFIX
from ...scores.scorer import Scores, read_png_scores
from ...scores.scorers import Scorers
from ..sweep import (
    SHEET_KEY,
    Axes,
    check_sweep,
    default_rows,
    parse_blocks_list,
    parse_number_list,
    render_sweep,
)
from .fields import (
    CUSTOM,
    FIELDS,
    MAX_REFERENCES,
    MODEL_BLOCKS,
    clamp_to_form,
    file_path,
    fit_to_shown,
    form_request,
    form_values,
    note_lost,
    rows_from_spec,
    shown_fields,
)
from .jobs import Jobs, run_with_steps
from .video_tab import VideoMaker, clip_info, preview_first_frame, run_video
from .views import Shown, card_html, results_html, thumb_html
from .workdir import Workdir

PipeSource = StylePipeline | Callable[[], StylePipeline]
#: History pages hold this many images.
HISTORY_PAGE = 24


class PipelineHolder:
    """The one pipeline of the app: given, or made by a factory on first use and then kept."""

    def __init__(self, source: PipeSource) -> None:
        self._pipe = source if isinstance(source, StylePipeline) else None
        self._factory = None if isinstance(source, StylePipeline) else source
        self._lock = threading.Lock()

    def get(self) -> StylePipeline:
        with self._lock:
            if self._pipe is None:
                assert self._factory is not None
                self._pipe = self._factory()
            return self._pipe


def _weights(text: str | None, count: int) -> list[float]:
    """The weights of ``count`` references from the weights field (blank or short: 1 for the rest)."""
    given = parse_number_list("style weight", text or "") if (text or "").strip() else ()
    return [*given[:count], *[1.0] * (count - len(given))]


def _weights_text(weights: list[float]) -> str:
    return "" if all(w == 1 for w in weights) else ", ".join(f"{w:g}" for w in weights)


@dataclass
class App:
    """What the page's events do, on the app's one pipeline and its workdir; every image is scored (CSD too when
    the app was given a checkpoint) and its scores shown under it. With a video model, videos too (``video_tab``)."""

    holder: PipelineHolder
    work: Workdir
    csd: str | None = None
    jobs: Jobs = field(default_factory=Jobs)
    video: VideoMaker | None = None
    _scorers: Scorers | None = field(default=None, init=False, repr=False)

    @property
    def scorers(self) -> Scorers:
        """Scorers on the app's pipeline (made once per choice of text tower)."""
        pipe = self.holder.get()
        if self._scorers is None or self._scorers.pipe is not pipe:
            self._scorers = Scorers(pipe)
        return self._scorers

    def runtime(self, pipe: StylePipeline) -> Runtime:
        """How the page runs its requests: the pipeline's runtime, every input image held to the page's cap."""
        return pipe.resources.runtime.replace(max_pixels=self.work.max_pixels)

    def scores(self, result: Result) -> list[Scores] | None:
        """The result's scores (a restyled photo's how much of it is kept too), or ``None`` (with a warning in the
        page) when they cannot be computed."""
        try:
            scorer = self.scorers.scorer(result.request.content_text_encoder, self.csd)
            return scorer.score_request(result.images, result.request)
        except UserError as err:
            gr.Warning(f"not scored: {err}")
            return None

    def shown(self) -> dict[str, bool]:
        return shown_fields(self.holder.get())

    # --- making images -------------------------------------------------------------------------------
    def generate(self, values: dict[str, Any], progress: Any,
                 session: str | None = None) -> tuple[list[tuple[str, str]], list[str], str]:
        """Make images from the form: the gallery (scores under each image), the PNG files (with their settings and
        scores) and the request as the page shows it (server paths relative to the workdir)."""
        pipe = self.holder.get()
        checked = check(form_request(self.work, values, pipe), self.runtime(pipe), pipe.resources.model_info)
        progress(0, desc="starting")

        def step(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        with self.jobs.running(session) as cancelled:
            result = run_with_steps(pipe, checked, step, cancelled)
        progress(1, desc="scoring")
        scores = self.scores(result)
        paths, captions = [], []
        for i, image in enumerate(result.images):
            path = self.work.new_output(f"seed{result.request.seed}-{i + 1}")
            paths.append(str(write_png(image, path, result.request, i, scores[i].png_text() if scores else None)))
            items = scores[i].caption_items() if scores else []
            captions.append(" · ".join([f"seed {result.request.seed} #{i + 1}", *items]))
        return list(zip(paths, captions, strict=True)), paths, self.request_json(result.request)

    def request_json(self, request: Request) -> str:
        """The request as the page's Request panel shows it (server paths as ``Workdir.shown`` names them)."""
        return json.dumps(self.work.shown_request(request), indent=2)

    def sweep(self, values: dict[str, Any], progress: Any,
              session: str | None = None) -> tuple[str, list[tuple[str, str]], list[str]]:
        """Render a labelled sheet over blocks x scale (x content scale; CSGO: its content tokens' scale x style
        scale) with the form's other settings; scored, with the plot, the CSV and (when the model scores prompts)
        the pick framed on the sheet."""
        contents = (values["sweep_content_scales"] or "").strip()
        pipe = self.holder.get()
        rows = (values["sweep_blocks"] or "").strip()
        scales = parse_number_list("scale", values["sweep_scales"] or "")
        content_scales = parse_number_list("content scale", contents) if contents else ()
        base = form_request(self.work, values, pipe).replace(num_images=1)
        if pipe.resources.csgo is not None:  # CSGO: its trained blocks in every row; its content axis, its tokens'
            if rows:
                raise UserError("a CSGO sweep varies the scales (style) and the content scales (its content tokens); "
                                "its blocks are trained in: leave the blocks to compare blank")
            axes = Axes((None,), scales, content_scales, content_field="content_adapter_scale")
        else:
            rows = rows or default_rows(list(pipe.resources.family.presets))
            axes = Axes(tuple(self.work.blocks_spec(spec, pipe) for spec in parse_blocks_list(rows)), scales,
                        content_scales)
        floor = values.get("sweep_style_floor", 0.9)
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
            raise UserError(f"the pick's style floor must be between 0 and 1, got {floor!r}")
        check_sweep(base, axes, self.runtime(pipe), pipe.resources.model_info)
        total, done = len(axes.rows) * len(axes.scales), []
        scorer = self.scorers.scorer(base.content_text_encoder, self.csd)

        with self.jobs.running(session) as cancelled:
            def tick(path: Path) -> None:
                done.append(str(path))
                progress((len(done), total), desc="sweep cells", unit="cells")
                if cancelled.is_set() and len(done) < total:
                    raise UserError(f"cancelled after {len(done)} of {total} cells; they are in the History tab")

            out = render_sweep(pipe, base, axes, self.work.new_output("sweep"), on_cell=tick, scorer=scorer,
                               style_floor=None if "clip_text" in scorer.unavailable() else float(floor))
        cells = [(path, " · ".join([cell.label, *cell.scores.caption_items()]))
                 for path, cell in zip(done, out.cells, strict=True)]
        return str(out.sheet), cells, [str(out.sheet), str(out.plot), str(out.table), *done]

    def make_video(self, values: dict[str, Any], progress: Any,
                   session: str | None = None) -> tuple[str, str, list[str], str, str]:
        """Restyle the video tab's clip with the form's request for its first frame (``video_tab.run_video``)."""
        return run_video(self, values, progress, session)

    def preview_first_frame(self, values: dict[str, Any], progress: Any, session: str | None = None) -> str:
        """The video's first frame alone (``video_tab.preview_first_frame``)."""
        return preview_first_frame(self, values, progress, session)

    def clip_info(self, clip: Any) -> str:
        return clip_info(self.work, clip)

    def save_style(self, values: dict[str, Any], progress: Any) -> str:
        """Save the current style (blended embedding, a small preview and the settings) as a style file."""
        request = form_request(self.work, values, self.holder.get())
        path = self.work.new_output("style", ".safetensors")
        self.holder.get().save_style(request, path, extra=style_settings(request))
        return str(path)

    def cancel(self, request: gr.Request) -> None:
        """Stop this visitor's running job at its next step (its queued jobs leave the queue: gradio)."""
        if self.jobs.cancel(getattr(request, "session_hash", None)):
            gr.Info("cancelling: the job stops after its current step")

    # --- what a run shows ---------------------------------------------------------------------------
    def show_results(self, files: list[Any] | None) -> str:
        """The results of a run, each with its score table, from its PNGs (which carry the request and scores)."""
        shown = []
        for i, item in enumerate(files or []):
            path = file_path(item)
            request = read_png_request(path)
            index = read_png_text(path, f"{PNG_KEY}-index")
            number = int(index) + 1 if index and index.isdigit() else i + 1
            shown.append(Shown(path, request.seed, number, read_png_scores(path)))
        return results_html(shown)

    def show_sweep(self, files: list[Any] | None) -> tuple[str | None, str]:
        """A sweep's scatter plot and a line naming its pick (ringed on the plot, framed on the sheet)."""
        paths = [file_path(f) for f in files or []]  # sheet, plot, table, then the cells row by row
        if len(paths) < 3:
            return None, ""
        text = read_png_text(paths[0], SHEET_KEY)
        picked = json.loads(text).get("picked") if text else None
        if not isinstance(picked, int) or not 0 <= picked < len(paths) - 3:
            return paths[1], "No pick: the pick needs prompt scores, and this model gives none."
        cell = paths[3 + picked]
        request, scores = read_png_request(cell), read_png_scores(cell)
        content = f", content scale {request.content_scale:g}" if json.loads(text or "{}").get("content_scales") else ""
        caption = f" ({scores.caption(', ')})" if scores else ""
        return paths[1], (f"**Pick:** cell {picked + 1}: blocks {request.blocks}, scale {request.scale:g}{content}"
                          f"{caption}; framed on the sheet.")

    # --- reference cards ----------------------------------------------------------------------------
    def add_references(self, added: list[Any] | None, style: list[Any] | None,
                       weights: str | None) -> tuple[list[str] | None, str, None]:
        """Dropped files become reference cards (each kept in the workdir; at most ``MAX_REFERENCES``); a file that
        is no image or style file is left out, with a message naming it."""
        current = [file_path(f) for f in style or []]
        new, refused = [], []
        for item in added or []:
            try:
                new.append(self.work.keep_upload(file_path(item), "style image", style_file=True))
            except UserError as err:
                refused.append(str(err))
        if refused:
            gr.Warning("; ".join(refused), duration=None)
        room = MAX_REFERENCES - len(current)
        if len(new) > room:
            gr.Warning(f"the page shows {MAX_REFERENCES} references; {len(new) - max(room, 0)} not added")
            new = new[:max(room, 0)]
        paths = current + new
        return paths or None, _weights_text(_weights(weights, len(current)) + [1.0] * len(new)), None

    def cards(self, style: list[Any] | None, weights: str | None) -> list[Any]:
        """Each card slot: shown or not, its picture, its weight."""
        paths = [file_path(f) for f in style or []][:MAX_REFERENCES]
        try:
            given = _weights(weights, len(paths))
        except UserError:
            given = [1.0] * len(paths)
        updates: list[Any] = []
        for i in range(MAX_REFERENCES):
            there = i < len(paths)
            updates += [gr.update(visible=there), card_html(paths[i], i, self.work.max_pixels) if there else "",
                        gr.update(value=min(given[i], 2.0)) if there else gr.update()]
        return updates

    def remove_reference(self, index: int) -> Callable[..., list[Any]]:
        """The handler of card ``index``'s remove button: the references, weights and region masks without it."""

        def remove(style: list[Any] | None, weights: str | None, *regions: Any) -> list[Any]:
            paths = [file_path(f) for f in style or []]
            given = _weights(weights, len(paths))
            slots = [file_path(r) if r else None for r in regions]
            if index < len(paths):
                del paths[index], given[index]
                slots = [*slots[:index], *slots[index + 1:], None]
            return [paths or None, _weights_text(given), *slots, self.regions_from_slots(paths, *slots)]

        return remove

    def style_uploaded(self, files: list[Any] | None) -> list[Any]:
        """A style file dropped alone brings its settings along: the form's values for them, but the style itself
        (``FIELDS[1:]``; skips when the drop is anything else). Errors name the file as the visitor did."""
        paths = [file_path(f) for f in files or []]
        if len(paths) != 1 or not paths[0].endswith(".safetensors"):
            return [gr.skip()] * (len(FIELDS) - 1)
        name = Path(paths[0]).name
        kept = self.work.keep_upload(paths[0], "style file", style_file=True)
        settings = load_style(kept).metadata.get("request")
        if settings is None:
            return [gr.skip()] * (len(FIELDS) - 1)
        try:
            request = Request.from_json(settings)
        except UserError as err:
            raise UserError(f"style file {name}: {err}") from None
        pipe = self.holder.get()
        values, _ = form_values(pipe, self.work, request.replace(style=(kept,)))
        values, clamped = clamp_to_form(values)
        values, reset = fit_to_shown(values, self.shown())
        notes = [f"held to the form's limits: {', '.join(clamped)}"] * bool(clamped)
        notes += [f"{pipe.resources.family.name} models do not take: {', '.join(reset)}"] * bool(reset)
        (gr.Warning if notes else gr.Info)("style file loaded with its settings" + "".join(f"; {n}" for n in notes))
        return values[1:]  # everything but the style input itself

    # --- regions ------------------------------------------------------------------------------------
    @staticmethod
    def regions_from_slots(style: list[Any] | None, *slots: Any) -> list[str] | None:
        """The request's region masks from the region slots of the shown references (``None``: none given; a
        missing one leaves the list short, which the request refuses with a message naming the counts)."""
        count = len(style or [])
        given = [file_path(s) for s in slots[:count] if s]
        return given or None

    @staticmethod
    def slots_from_regions(regions: list[Any] | None) -> list[str | None]:
        """The region slots for the request's region masks (one per reference, in order)."""
        paths = [file_path(r) for r in regions or []][:MAX_REFERENCES]
        return [*paths, *[None] * (MAX_REFERENCES - len(paths))]

    def use_painted_region(self, painting: Any, target: str | None, style: list[Any] | None,
                           *slots: Any) -> list[Any]:
        """The painting becomes the region mask of the chosen reference."""
        count = len(style or [])
        try:
            index = int(str(target or "").split()[-1]) - 1
        except ValueError:
            index = -1
        if not 0 <= index < count:
            raise UserError(f"pick the reference the painting is for (1 to {count})" if count
                            else "add a style reference first")
        mask = self.work.keep_painted_mask(painting)
        if mask is None:
            raise UserError("paint the region first (white = where that reference's style acts)")
        new = [file_path(s) if s else None for s in slots]
        new[index] = mask
        return [*new, self.regions_from_slots(style, *new)]

    # --- single uploads -----------------------------------------------------------------------------
    def thumb(self, what: str) -> Callable[[Any], str]:
        """The handler showing one upload's thumbnail."""
        return lambda item: thumb_html(file_path(item) if item else None, what, self.work.max_pixels)

    def paint_over(self, init_image: Any) -> dict[str, Any] | None:
        """The mask painter's value for a new init image: the image as background, no strokes yet (an image over
        the pixel cap is refused here, from its header, before the page shows it)."""
        path = file_path(init_image) if init_image else None
        if path is None:
            return None
        image_size(path, "init image", self.work.max_pixels, name=Path(path).name)
        return {"background": path, "layers": [], "composite": path}

    # --- restoring settings ---------------------------------------------------------------------------
    def restore(self, png: str | None) -> list[Any]:
        """Read the settings carried by a PNG made by instantstyle back into the form."""
        if not png:
            return [gr.skip()] * len(FIELDS)
        path = file_path(png)
        try:
            request = read_png_request(path)
        except UserError as err:
            raise UserError(str(err).replace(path, Path(path).name)) from None
        pipe = self.holder.get()
        values, lost = form_values(pipe, self.work, request)
        values, clamped = clamp_to_form(values)
        values, reset = fit_to_shown(values, self.shown())
        notes = []
        if lost:
            notes.append(note_lost(lost))
        if clamped:
            notes.append("held to the form's limits: " + ", ".join(clamped))
        if reset:
            notes.append(f"{pipe.resources.family.name} models do not take: " + ", ".join(reset))
        if request.model is not None and request.model != pipe.resources.model_id:
            notes.append(f"it was made with model {self.work.shown(request.model)}; this page runs "
                         f"{self.work.shown(pipe.resources.model_id)}")
        (gr.Warning if notes else gr.Info)("settings restored" + "".join(f"; {n}" for n in notes))
        return values

    def load_blocks(self, spec: str) -> Any:
        """The per-block table for the blocks field: the model's default, a preset, a typed spec or ``@FILE:NAME``."""
        if not spec or spec == CUSTOM:
            return gr.skip()
        pipe = self.holder.get()
        return rows_from_spec(pipe, None if spec == MODEL_BLOCKS else self.work.blocks_spec(spec, pipe))

    def add_lora(self, picked: str | None, lora: str | None) -> tuple[str, None]:
        """A LoRA picked from the models folders joins the LoRA field at scale 1."""
        items = [item.strip() for item in (lora or "").split(",") if item.strip()]
        if picked and picked not in [item.rsplit(":", 1)[0] for item in items]:
            items.append(picked)
        return ", ".join(items), None

    # --- history --------------------------------------------------------------------------------------
    def history(self, page: int | float | None) -> tuple[list[tuple[str, str]], str, list[str], int]:
        """One page of the workdir's images, newest first: the gallery, a line saying which page, their paths."""
        made = sorted((p for p in self.work.outputs.glob("*.png") if not p.name.endswith(SOURCE_SUFFIX)),
                      key=lambda p: (p.stat().st_mtime, p.name), reverse=True)  # a video's source frame: no image made
        pages = max(1, -(-len(made) // HISTORY_PAGE))
        page = min(max(1, int(page or 1)), pages)
        shown = made[(page - 1) * HISTORY_PAGE:page * HISTORY_PAGE]
        items = [(str(p), _history_caption(p)) for p in shown]
        line = f"{len(made)} image(s) in this server's workdir; page {page} of {pages}, newest first"
        return items, line, [str(p) for p in shown], page

    def open_history(self, paths: list[str] | None, evt: gr.SelectData) -> tuple[str, str, str | None, Any]:
        """A picked history image: its scores, its request (paths relative to the workdir), and the button that
        restores it into the form."""
        index = evt.index if isinstance(evt.index, int) else 0
        if not paths or not 0 <= index < len(paths):
            return "", "", None, gr.update(interactive=False)
        path = paths[index]
        text = read_png_text(path, PNG_KEY)
        if text is None:
            return "This image carries no settings (a sweep sheet or plot).", "", None, gr.update(interactive=False)
        request = Request.from_json(text)
        table = results_html([Shown(path, request.seed, 1, read_png_scores(path))])
        return table, self.request_json(request), path, gr.update(interactive=True)

    def describe_pipeline(self) -> dict[str, Any]:
        """The line naming the loaded model (its given id, or a local folder's name), and whether the page shows each
        field the loaded model's family may not take."""
        pipe = self.holder.get()
        res = pipe.resources
        adapter = f"{'CSGO ' if res.csgo is not None else ''}adapter `{Path(res.adapter.path).name}`"
        line = f"Model `{self.work.shown(res.model_id)}` ({res.family.name}) with {adapter} on {res.device}"
        return {"line": line, "shown": self.shown()}


def _history_caption(path: Path) -> str:
    """A history image's caption: its seed and the start of its prompt (from its PNG), or its file name."""
    try:
        text = read_png_text(path, PNG_KEY)
        request = Request.from_json(text) if text else None
    except UserError:
        request = None
    if request is None:
        return path.stem
    prompt = request.prompt if len(request.prompt) <= 40 else request.prompt[:39] + "…"
    return f"seed {request.seed} · {prompt}"
