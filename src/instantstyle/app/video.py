"""Making one video from a ``VideoRequest``, for the ``video`` command and batch video jobs: every check that needs
no model first (the clip, the caps, the outputs, the first-frame request's files, the video model and its
schedule), then the run (``modes.video.stylize_video``), the files (``save_video``) and, when asked, the scores."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.preflight import check
from ..core.video_options import DEFAULT_VIDEO_MODEL, VideoRequest, resolve_source, uses_source
from ..errors import UserError
from ..files.atomic import atomic_path, write_text_atomically
from ..files.images import load_image
from ..files.video import Clip
from ..loading.runtime import Runtime
from ..modes.video import (
    VideoFiles,
    VideoModel,
    VideoResult,
    check_schedule,
    read_source,
    save_video,
    stylize_video,
    windows,
)


@dataclass
class Checked:
    """A video request that passed every check: the clip's frames, read, and where its first frame was written."""

    video: VideoRequest
    source: Clip
    source_path: Path | None

    @property
    def windows(self) -> int:
        """How many model runs the frames take."""
        return len(windows(len(self.source.frames), self.video.options.window))


def check_video(video: VideoRequest, runtime: Runtime, files: VideoFiles, max_frames: int) -> Checked:
    """Everything about a video request that can be checked before a model loads, in one line each: the frame
    cap, the video model and its schedule, the clip (a decodable video, within the pixel cap, frames in the window),
    the ready first frame, and the first-frame request's files (with the clip's first frame written to
    ``files.source``, removed again when a check fails)."""
    options = video.options
    if options.frames > max_frames:
        raise UserError(f"{options.frames} frames is over the limit of {max_frames} (--max-frames)")
    check_schedule(options.video_model or DEFAULT_VIDEO_MODEL, options)
    if options.first_frame is not None:
        load_image(options.first_frame, "first frame", runtime.max_pixels)
    source = read_source(video.clip, options, runtime.max_pixels)
    written = None
    if options.first_frame is None:
        request = video.request
        if uses_source(request):
            with atomic_path(files.source) as tmp:
                source.frames[0].save(tmp, format="PNG")
            written = files.source
            request = resolve_source(request, str(files.source))
        try:
            check(request, runtime)
        except UserError:
            if written is not None:
                written.unlink(missing_ok=True)
            raise
    return Checked(video, source, written)


def make_video(checked: Checked, runtime: Runtime, files: VideoFiles, load_style: Callable[[Any], Any],
               on_progress: Callable[[str, int, int], None] | None = None,
               video_model: VideoModel | None = None) -> VideoResult:
    """Run a checked video request and write its files: the first-frame model (``load_style(request)``) is loaded
    only when step 1 runs, before the video model (``video_model``, else loaded as ``runtime`` says)."""
    video = checked.video
    request = video.request
    resolved = resolve_source(request, str(files.source)) if checked.source_path is not None else request
    budget = None if runtime.memory_budget is None else int(runtime.memory_budget * 2**30)
    result = stylize_video(
        video.clip, request, video.options,
        video_model=video_model or (lambda: VideoModel.from_pretrained(video.options.video_model, runtime)),
        style_pipe=(lambda: load_style(resolved)) if video.options.first_frame is None else None,
        source_path=files.source, max_pixels=runtime.max_pixels, on_progress=on_progress, budget=budget,
        source=checked.source,
    )
    save_video(result, files)
    return result


def load_video_scorer(result: VideoResult, runtime: Runtime, csd: str | None = None) -> Any:
    """The scorer of a video: the first-frame model's encoders (loaded here: the video model is gone by now)."""
    from ..loading.runtime import DEFAULT_ADAPTER
    from ..scores.scorers import load_scorer

    request = result.video.request
    return load_scorer(request.adapter or DEFAULT_ADAPTER, runtime, model=request.model,
                       image_encoder=request.image_encoder, content_text_encoder=request.content_text_encoder, csd=csd)


def score_result(result: VideoResult, scorer: Any, files: VideoFiles) -> Any:
    """Score the frames against the request's prompt (the video's) and style references, and write
    ``OUT.scores.json``; the ``VideoScores``."""
    from ..scores.video import score_video

    request = result.video.request
    prompt = result.video.options.prompt if result.video.options.prompt is not None else request.prompt
    scores = score_video(scorer, result.frames, prompt, request.style, request.content_prompt, request.style_fit)
    write_text_atomically(files.scores, scores.to_json() + "\n")
    return scores


# --- batch video jobs ----------------------------------------------------------------------------------------------
def resolve_video_paths(video: VideoRequest, local: Callable[[str], str]) -> VideoRequest:
    """The clip, the ready first frame and a local video model as ``local`` finds them (a batch job's paths are
    taken from its job file's folder)."""
    options = video.options
    changes: dict[str, Any] = {}
    if options.first_frame is not None:
        changes["first_frame"] = local(options.first_frame)
    if options.video_model is not None:
        changes["video_model"] = local(options.video_model)
    return video.replace(clip=local(video.clip), options=options.replace(**changes) if changes else options)


@functools.cache
def _stand_in_frame() -> str:
    """A small image standing for the clip's first frame while a job's other inputs are checked (the clip itself
    is checked apart, from its header)."""
    import tempfile

    from PIL import Image

    path = Path(tempfile.mkdtemp(prefix="instantstyle-")) / "source-frame.png"
    Image.new("RGB", (64, 64)).save(path)
    return str(path)


def check_video_job(video: VideoRequest, runtime: Runtime) -> None:
    """A batch video job's checks from headers alone, one line each: the frame cap, the clip (a decodable video
    within the pixel cap), the video model and its schedule, the ready first frame, the first-frame request's
    files."""
    from ..core.video_options import DEFAULT_MAX_FRAMES
    from ..files.video import probe_clip

    options = video.options
    if options.frames > DEFAULT_MAX_FRAMES:
        raise UserError(f"{options.frames} frames is over the limit of {DEFAULT_MAX_FRAMES}")
    max_pixels = runtime.max_pixels
    probe_clip(video.clip, max_pixels=max_pixels)
    check_schedule(options.video_model or DEFAULT_VIDEO_MODEL, options)
    if options.first_frame is not None:
        load_image(options.first_frame, "first frame", max_pixels)
        return
    request = video.request
    if uses_source(request):
        request = resolve_source(request, _stand_in_frame())
    check(request, runtime)


def _first_frame_pipe(worker: Any, job: Any, request: Any) -> Any:
    """The worker's pipeline for a job's first-frame request (loaded once, kept for the next jobs)."""
    return worker.pipeline_for([job])


def run_video_jobs(jobs: Sequence[Any], folder: Path, runtime: Runtime, pipeline: Any = None,
                   scoring: Any = None) -> Iterator[Any]:
    """Make batch video jobs one after the other in this process, each job's files written into ``folder``
    (``ID.mp4``, ``ID.first.png``, ``ID.json``, ``ID.source.png``; ``ID.scores.json`` with ``scoring``), and yield
    an ``Outcome`` per job: its frames and record, or why it failed (a failing job fails alone)."""
    from ..core.video_options import MAX_FRAMES
    from ..scores.scorers import Scorers
    from ..scores.video import score_video
    from .workers import Outcome, Worker, _one_line

    worker = Worker(runtime, pipeline)
    models: dict[str, VideoModel] = {}
    try:
        for job in jobs:
            start = time.perf_counter()
            video = job.video
            try:
                files = VideoFiles.beside(folder / f"{job.id}.mp4")
                checked = check_video(video, runtime, files, MAX_FRAMES)
                name = video.options.video_model or DEFAULT_VIDEO_MODEL
                if name not in models:
                    models.clear()  # one video model at a time
                    models[name] = VideoModel.from_pretrained(name, runtime)
                result = make_video(checked, runtime, files, functools.partial(_first_frame_pipe, worker, job),
                                    video_model=models[name])
            except Exception as err:
                yield Outcome(job, [], None, _one_line(err), time.perf_counter() - start, 0)
                continue
            scores, failure = None, None
            if scoring is not None:
                try:
                    request = result.video.request
                    scorer = Scorers(worker.pipeline_for([job])).scorer(csd=scoring.csd)
                    prompt = video.options.prompt if video.options.prompt is not None else request.prompt
                    made = score_video(scorer, result.frames, prompt, request.style, request.content_prompt,
                                       request.style_fit)
                    write_text_atomically(files.scores, made.to_json() + "\n")
                    scores = made.to_dict()
                except Exception as err:
                    failure = _one_line(err)
            yield Outcome(job, result.frames, result.first_frame_request or result.video.request, None,
                          time.perf_counter() - start, len(result.frames), score_error=failure,
                          video=result.video.to_dict(), video_scores=scores)
    finally:
        worker.close()
