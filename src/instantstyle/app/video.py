"""Making one video from a ``VideoRequest``, for the ``video`` command and batch video jobs: every check that needs
no model first (the clip, the caps, the outputs, the first-frame request's files, the video model and its
schedule), then the run (``modes.video.stylize_video``), the files (``save_video``) and, when asked, the scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.preflight import check_request, check_runtime
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
            check_request(request, runtime.max_pixels)
            check_runtime(request, runtime)
        except UserError:
            if written is not None:
                written.unlink(missing_ok=True)
            raise
    return Checked(video, source, written)


def make_video(checked: Checked, runtime: Runtime, files: VideoFiles, load_style: Callable[[Any], Any],
               on_progress: Callable[[str, int, int], None] | None = None) -> VideoResult:
    """Run a checked video request and write its files: the first-frame model (``load_style(request)``) is loaded
    only when step 1 runs and freed before the video model loads."""
    video = checked.video
    request = video.request
    resolved = resolve_source(request, str(files.source)) if checked.source_path is not None else request
    budget = None if runtime.memory_budget is None else int(runtime.memory_budget * 2**30)
    result = stylize_video(
        video.clip, request, video.options,
        video_model=lambda: VideoModel.from_pretrained(video.options.video_model, runtime),
        style_pipe=(lambda: load_style(resolved)) if video.options.first_frame is None else None,
        source_path=files.source, max_pixels=runtime.max_pixels, on_progress=on_progress, budget=budget,
        source=checked.source,
    )
    save_video(result, files)
    return result


def score_result(result: VideoResult, runtime: Runtime, files: VideoFiles, csd: str | None = None) -> Any:
    """Score the frames against the request's prompt (the video's) and style references with the first-frame
    model's encoders (loaded here: the video model is gone by now), and write ``OUT.scores.json``."""
    from ..loading.loader import load_scorer
    from ..loading.runtime import DEFAULT_ADAPTER
    from ..scores.video import score_video

    request = result.video.request
    scorer = load_scorer(request.adapter or DEFAULT_ADAPTER, runtime, model=request.model,
                         image_encoder=request.image_encoder, content_text_encoder=request.content_text_encoder,
                         csd=csd)
    prompt = result.video.options.prompt if result.video.options.prompt is not None else request.prompt
    scores = score_video(scorer, result.frames, prompt, request.style, request.content_prompt, request.style_fit)
    write_text_atomically(files.scores, scores.to_json() + "\n")
    return scores, scorer.unavailable()
