"""``StylePipeline``: the public face. It loads once (``from_pretrained``) and runs ``Request``s.

Each request is checked (``preflight.check``, unless a surface already did and hands over its ``Checked``),
completed, planned and run inside ``Plan.applied``, which leaves the loaded pipeline as it found it (see
``plan``). ``generate_many`` runs requests that may share one denoising call as one, each image as ``__call__``
makes it. What is loaded lives in ``resources`` (``loading.resources.Resources``); scores are asked of the scores
layer (``scores.scorers.Scorers``) and never change an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..loading import loader
from ..loading.resources import Resources
from ..loading.runtime import DEFAULT_MODEL, Runtime
from . import styles
from .plan import batch_key, can_batch, complete, plan
from .preflight import Checked, against, check, default_adapter
from .request import Request
from .styles import EmbeddingMemory


@dataclass
class Result:
    """The images and the complete request that reproduces them (seed and size filled in)."""

    images: list[Image.Image]
    request: Request


@dataclass
class StylePipeline:
    """A diffusers pipeline of a supported family with an InstantStyle adapter, ready to run requests."""

    resources: Resources

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        adapter: str | None = None,
        runtime: Runtime | None = None,
        *,
        image_encoder: str | None = None,
        content_text_encoder: str | None = None,
        blocks: str | None = None,
        embedding_memory: EmbeddingMemory | None = None,
        checked: Checked | None = None,
        **options: Any,
    ) -> StylePipeline:
        """The one loader: base model, adapter (``None``: the family's own; weights kept only for ``blocks``,
        ``None`` being the family's default, unless the runtime keeps all) and image encoder, placed as ``runtime``
        says. ``options`` are ``Runtime`` fields overriding it (``device="cpu"``, ``offload="model"``,
        ``low_memory=True``, ``cache_dir=...``). ``embedding_memory``: reference embeddings shared with other
        pipelines (its ``encoder_runs`` counts the image-encoder passes). ``checked``: a surface's ``check`` of a
        request against this model's config, whose findings the loader reuses (family, hub, blocks)."""
        runtime = (runtime or Runtime()).replace(**options)
        if adapter is None:
            adapter = checked.adapter if checked is not None and checked.adapter else \
                default_adapter(model, runtime.single_file_config)
        return cls(loader.load(model, adapter, runtime, image_encoder=image_encoder, blocks=blocks,
                               content_text_encoder=content_text_encoder, embedding_memory=embedding_memory,
                               checked=checked))

    @property
    def pipe(self) -> Any:
        """The diffusers text-to-image pipeline (every mode's pipeline shares its components)."""
        return self.resources.pipe

    @property
    def on_phase(self) -> Callable[[str], None] | None:
        """Told the name of each phase (``plan.PHASES``, then ``end``) as it begins; ``None``: nobody listens."""
        return self.resources.on_phase

    @on_phase.setter
    def on_phase(self, listener: Callable[[str], None] | None) -> None:
        self.resources.on_phase = listener

    def __call__(self, request: Request | Checked | None = None, *, progress: bool = False,
                 on_step: Callable[[int, int], bool | None] | None = None, **fields: Any) -> Result:
        """Make the images of a request (or of ``Request(**fields)``, or of ``request`` with ``fields`` changed).
        ``on_step(done, total)`` is told after each denoising step; returning true skips the rest (a cancel)."""
        if request is None:
            request = Request(**fields)
        elif fields:
            request = (request.request if isinstance(request, Checked) else request).replace(**fields)
        checked = self._checked(request)
        done = complete(checked.request, self.resources)
        return self._run([done], checked, progress, on_step)[0]

    def generate_many(self, requests: Sequence[Request | Checked]) -> list[Result]:
        """The results of several requests: in one denoising call when they can share it (equal ``batch_key``, all
        ``can_batch``), else one by one. In a shared call each request's noise is drawn from its own seed exactly
        as ``__call__`` draws it, so an image does not depend on the others in its call beyond float rounding."""
        checked = [self._checked(r) for r in requests]
        done = [complete(c.request, self.resources) for c in checked]  # fills in every seed first
        if (len(done) < 2 or self.resources.family.draw_latents is None or not all(can_batch(r) for r in done)
                or len({batch_key(r) for r in done}) > 1):
            return [self._run([d], c)[0] for d, c in zip(done, checked, strict=True)]
        return self._run(done, checked[0])

    def save_style(self, request: Request, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """Save the request's blended references as a style file, reusable without the images (``extra``: more
        metadata, e.g. the web UI's settings)."""
        res = self.resources
        return styles.save_style_file(res.embeddings, request, res.main_adapter, path, extra)

    def _checked(self, request: Request | Checked) -> Checked:
        """The request checked against this pipeline's model (what a surface's ``check`` left to do, if anything)."""
        model = self.resources.model_info
        if not isinstance(request, Checked):
            return check(request, self.resources.runtime, model)
        return request if request.slots is not None else against(request, model)

    def _run(self, requests: list[Request], checked: Checked, progress: bool = False,
             on_step: Callable[[int, int], bool | None] | None = None) -> list[Result]:
        """Plan the call of ``requests`` (completed; several share it) and run it inside the applied plan."""
        the_plan = plan(requests[0], self.resources, checked.slots, together=requests[1:])
        with the_plan.applied(self.resources) as call:
            images = call(progress=progress, on_step=on_step)
        return [Result(mine, r) for mine, r in zip(the_plan.finish(images, self.resources), requests, strict=True)]
