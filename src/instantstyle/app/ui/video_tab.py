"""The Video tab: a clip restyled frame-consistently (AnyV2V on I2VGen-XL, as ``instantstyle video``), its first
frame made by the form's request on the page's pipeline.

The tab exists when the server was given a video model (``ui --video-model``), loaded on the first video job and kept.
"Preview first frame" runs step 1 alone (``modes.video.style_first_frame`` on the clip's first frame as the video
takes it; a ready first frame is shown as the video takes it); "Make video" runs the whole recipe (``app.video``:
the CLI's checks, ``stylize_video`` and ``save_video``) and scores it (``--score``'s table, with the page's scorer),
so the page writes the files the command writes, beside each other under ``WORKDIR/outputs/``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...core.request import Request, write_png
from ...core.video_options import DEFAULT_MAX_FRAMES, VideoOptions, VideoRequest, first_frame_fields
from ...errors import UserError
from ...files.video import probe_clip
from ...loading.runtime import Runtime
from ...modes.video import (
    PHASES,
    VideoFiles,
    VideoModel,
    check_video_model,
    read_source,
    ready_first_frame,
    style_first_frame,
)
from ..video import check_video, make_video, score_result
from .fields import VIDEO_FORM, file_path, form_fields
from .jobs import Cancelled, Jobs
from .workdir import Workdir, as_uploaded


class Page(Protocol):
    """What the video handlers use of the page's ``handlers.App``."""

    work: Workdir
    jobs: Jobs
    video: VideoMaker | None
    csd: str | None

    @property
    def scorers(self) -> Any: ...

    @property
    def holder(self) -> Any: ...

    def runtime(self, pipe: Any) -> Runtime: ...


@dataclass
class VideoMaker:
    """The server's video model (a diffusers ``I2VGenXLPipeline`` folder or hub id), loaded once, on first use."""

    model: str
    _loaded: VideoModel | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        check_video_model(self.model)  # a folder that is no I2VGen-XL pipeline: one line before the server starts

    def load(self, runtime: Runtime) -> VideoModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = VideoModel.from_pretrained(self.model, runtime)
            return self._loaded


def video_options(values: dict[str, Any], model: str) -> VideoOptions:
    """The video options of the tab's fields (``video_frames`` is ``VideoOptions.frames``...)."""
    given = {f.name.removeprefix("video_"): f.to_request(values.get(f.name, f.default))
             for f in VIDEO_FORM if f.to_request is not None}
    return VideoOptions(**given, video_model=model)


def video_request(work: Workdir, values: dict[str, Any], pipe: Any, model: str) -> VideoRequest:
    """The video a filled-in form and video tab stand for: the clip kept in the workdir, the form's request as the
    first-frame request (by default AnyV2V's: a canny ControlNet on the clip's first frame, ``first_frame_fields``)."""
    clip = values.get("video_clip")
    if not clip:
        raise UserError("upload a clip to restyle first (.mp4, .mov or .mkv)")
    kept = work.keep_clip(file_path(clip))
    options = video_options(values, model)
    if values.get("video_first_frame"):  # a ready first frame: kept, checked as any upload
        options = options.replace(first_frame=work.keep_upload(file_path(values["video_first_frame"]), "first frame"))
    return VideoRequest(kept, Request(**first_frame_fields(form_fields(work, values, pipe))), options)


def clip_info(work: Workdir, clip: Any) -> str:
    """A line on an uploaded clip from its header (size, length, frame rate), or its one-line error."""
    if not clip:
        return ""
    path = file_path(clip)
    name = path.rsplit("/", 1)[-1]
    try:
        info = probe_clip(path, "clip", work.max_pixels)
    except UserError as err:
        return f"**{as_uploaded(err, path)}**"
    length = f", {info.duration:.1f} s" if info.duration else ""
    rate = f" at {info.fps:g} fps" if info.fps else ""
    return f"{name}: {info.width}×{info.height}{length}{rate} ({info.codec})"


def preview_first_frame(app: Page, values: dict[str, Any], progress: Any, session: str | None = None) -> str:
    """Step 1 alone: the clip's first frame, as the video takes it, styled by the form's request (on the page's
    pipeline), written as a PNG carrying that request; the video made with the same settings starts with it. Cancel
    stops it after its current step."""
    maker = _maker(app)
    pipe = app.holder.get()
    video = video_request(app.work, values, pipe, maker.model)
    runtime = app.runtime(pipe)
    size = (video.options.width, video.options.height)
    if video.options.first_frame is not None:  # the video starts with it, cropped to the video's size
        return app.work.keep_image(ready_first_frame(video.options.first_frame, size, runtime.max_pixels))
    progress(0, desc="reading the clip")
    source = read_source(video.clip, video.options.replace(frames=2), runtime.max_pixels)  # the first is used
    frame = app.work.keep_image(source.frames[0])
    with app.jobs.running(session) as cancelled:
        progress(0, desc="first frame")

        def step(done: int, total: int) -> bool:
            progress((done, total), desc="first frame", unit="steps")
            return cancelled.is_set()  # Cancel: the rest of the steps are skipped

        image, made_by = style_first_frame(pipe, video.request, frame, size, on_step=step)
        if cancelled.is_set():
            raise Cancelled("cancelled; nothing was saved")
    path = app.work.new_output(f"first-frame-seed{made_by.seed}")
    return str(write_png(image, path, made_by))


def run_video(app: Page, values: dict[str, Any], progress: Any,
              session: str | None = None) -> tuple[str, str, list[str], str, str]:
    """The whole recipe: the video (a player), its styled first frame, the files (video, first frame, record,
    scores), the record as the page shows it (server paths relative to the workdir) and the scores' table (as
    ``instantstyle video --score``'s, with the page's scorer). Cancel stops it between steps."""
    maker = _maker(app)
    pipe = app.holder.get()
    video = video_request(app.work, values, pipe, maker.model)
    runtime = app.runtime(pipe)
    files = VideoFiles.beside(app.work.new_output("video", ".mp4"))
    checked = check_video(video, runtime, files, DEFAULT_MAX_FRAMES)
    windows = checked.windows
    seen: dict[str, Any] = {"phase": "", "window": 0}

    with app.jobs.running(session) as cancelled:
        def tell(phase: str, done: int, total: int) -> None:
            if cancelled.is_set():
                raise Cancelled("cancelled; nothing was saved")
            if phase != seen["phase"]:
                seen["window"] += phase == PHASES[1]
                seen["phase"] = phase
            where = f" (window {seen['window']}/{windows})" if windows > 1 and phase != PHASES[0] else ""
            progress((done, total), desc=f"{phase}{where}", unit="frames" if phase == "decoding" else "steps")

        try:
            progress(0, desc="loading the video model")
            model = maker.load(runtime)
            result = make_video(checked, runtime, files, lambda request: pipe, tell, video_model=model)
        except BaseException:
            if not files.video.exists():  # nothing made: the clip's first frame written for the run goes too
                files.source.unlink(missing_ok=True)
            raise
    options = result.video.options
    shown = {**app.work.shown_request(result.video.request),
             "video": {**options.to_dict(), "clip": app.work.shown(result.video.clip),
                       "first_frame": app.work.shown(options.first_frame), "video_model": app.work.shown(maker.model)}}
    paths = [str(files.video), str(files.first_frame), str(files.record)]
    progress(0, desc="scoring")
    try:
        scores = score_result(result, app.scorers.scorer(result.video.request.content_text_encoder, app.csd), files)
        table = scores.table(markdown=True)
        paths.append(str(files.scores))
    except UserError as err:  # the video is made; its scores are not (said in place of the table)
        table = f"not scored: {err}"
    return str(files.video), str(files.first_frame), paths, json.dumps(shown, indent=2), table


def _maker(app: Page) -> VideoMaker:
    if app.video is None:
        raise UserError("this server makes no videos: start it with `instantstyle ui --video-model MODEL`")
    return app.video
