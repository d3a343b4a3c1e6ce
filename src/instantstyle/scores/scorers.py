"""Scorers made from what is loaded: on a pipeline's own encoders (``Scorers``), or alone (``load_scorer``).

``Scorers(pipe)`` scores with the encoders the pipeline already holds: its image encoder, the CLIP text tower of
that space (``Resources.content_text_tower``; none when the model has none and none is named: then no text
scores) and a CSD model (a checkpoint, loaded once). Under a memory budget the text tower and CSD wait off the
device and come to it only to score. ``load_scorer`` loads only what scores need, without the denoiser where the
model allows (the ``score`` command). Scoring never changes an image or the pipeline's configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from PIL import Image

from ..core.adapter import read_adapter
from ..core.embeddings import TextTower, has_clip_text_tower, load_image_encoder, load_text_tower
from ..core.request import StyleRef
from ..errors import UserError
from ..families import all_families
from ..loading.hub import find_image_encoder, hub_error, model_source, resolve_adapter_file
from ..loading.loader import load_base_pipeline
from ..loading.resources import Resources
from ..loading.runtime import Runtime
from .csd import CsdModel, load_csd
from .scorer import Scorer, Scores, kept_photo


@dataclass
class Scorers:
    """``Scorer``s on one pipeline's loaded encoders (a ``StylePipeline`` or its ``Resources``), each made once per
    choice of text tower and CSD model; CSD checkpoints are loaded once per pipeline (``Extras.csd``)."""

    pipe: Any
    _made: dict[tuple[str | None, str | None], Scorer] = field(default_factory=dict, repr=False)

    @property
    def resources(self) -> Resources:
        return self.pipe if isinstance(self.pipe, Resources) else self.pipe.resources  # type: ignore[no-any-return]

    def scorer(self, content_text_encoder: str | None = None, csd: str | Path | CsdModel | None = None) -> Scorer:
        """The ``Scorer`` with the text tower ``content_text_encoder`` names (else the pipeline's) and CSD from
        ``csd`` (a checkpoint file or a loaded ``CsdModel``; none: no CSD score)."""
        res = self.resources
        key = (content_text_encoder or res.content_text_encoder,
               csd.identity if isinstance(csd, CsdModel) else None if csd is None else str(csd))
        if key not in self._made:
            try:
                tower: TextTower | None = res.content_text_tower(key[0])
            except UserError:
                if key[0] is not None:  # a tower the user named that does not load or fit: say so
                    raise
                tower = None
            model = csd if isinstance(csd, CsdModel) else None if csd is None else self._load_csd(str(csd))
            if res.budget is not None:  # the scoring models wait off the device, and come only to score
                resident = res.text_encoders if res.family.encode_prompts is None else []  # run by the call
                res.budget.park([tower.model if tower is not None and tower.model not in resident else None])
                if model is not None and res.budget.moves:
                    model.to("cpu")
            self._made[key] = Scorer(res.image_encoder, tower, model, res.device, res.dtype, res.low_memory,
                                     max_pixels=res.runtime.max_pixels,
                                     make_room=res.budget.make_room if res.budget is not None else None)
        return self._made[key]

    def _load_csd(self, path: str) -> CsdModel:
        return self.resources.extras.csd(path)  # loaded once per pipeline, shared with restyle's CSD guidance

    def score(
        self,
        images: Any,
        prompt: str | None = None,
        style: Sequence[StyleRef | str] | StyleRef | str = (),
        content_prompt: str | None = None,
        *,
        csd: str | Path | CsdModel | None = None,
    ) -> list[Scores]:
        """The scores of images (see ``scorer``): CLIP text against ``prompt``, CLIP style (and CSD with ``csd``)
        against the ``style`` references, content leak against ``content_prompt``. Given a ``Result``, its request
        supplies whatever is not given (prompt, style, content prompt, fit, text tower) and the photo whose content
        is kept (``scorer.kept_photo``: a restyle's photo, CSGO's content image)."""
        request = getattr(images, "request", None)
        if request is not None:
            scorer = self.scorer(request.content_text_encoder, csd)
            return scorer.score(images.images, prompt if prompt is not None else request.prompt,
                                style or request.style, content_prompt or request.content_prompt, request.style_fit,
                                kept_photo(request))
        pictures: Sequence[Image.Image | str | Path] = images
        return self.scorer(csd=csd).score(pictures, prompt, style, content_prompt)


def load_scorer(adapter: str, runtime: Runtime, *, model: str | None = None, image_encoder: str | None = None,
                content_text_encoder: str | None = None, csd: str | None = None) -> Scorer:
    """A ``Scorer`` without a pipeline: the adapter's image encoder; the CLIP text tower of its space
    (``content_text_encoder``, else ``model``'s own tower of that width, SDXL's ``text_encoder_2``, else the image
    encoder's own CLIP repository's, as ``Resources.content_text_tower``; none when none: no text scores); CSD
    from the checkpoint ``csd``. Only a single-file model loads whole."""
    device = runtime.placement()
    dtype = runtime.torch_dtype(device)
    csd_model = load_csd(csd, device, dtype) if csd else None  # first: a refused file fails before the rest loads
    weights = read_adapter(resolve_adapter_file(adapter))
    encoder = load_image_encoder(find_image_encoder(weights, image_encoder), dtype)
    del weights  # only its kind and width were needed
    want = encoder.embed_dim
    tower = None
    if content_text_encoder is not None:
        tower = load_text_tower(content_text_encoder, dtype=dtype, width=want)
    elif model is not None:
        tower = model_text_tower(model, want, dtype, runtime.single_file_config)
    if tower is None and has_clip_text_tower(Path(encoder.identity)):  # a whole CLIP repository (XLabs FLUX)
        tower = load_text_tower(encoder.identity, dtype=dtype, width=want)
    encoder.model.to(device)  # type: ignore[arg-type]  # transformers types .to loosely
    if tower is not None:
        tower.model.to(device)
    return Scorer(encoder, tower, csd_model, max_pixels=runtime.max_pixels)


def model_text_tower(model: str, want: int, dtype: torch.dtype, config: str | None = None) -> TextTower | None:
    """The model's own CLIP text tower with a ``want``-wide projection (a family's ``content_towers``: SDXL's
    ``text_encoder_2``), read from its folder or hub snapshot alone; ``None`` when it has none of that width."""
    source = model_source(model)
    towers = list(dict.fromkeys(pair for family in all_families() for pair in family.content_towers))
    if isinstance(source, Path) and source.is_file():  # a single file holds its towers: load it
        pipe = load_base_pipeline(model, dtype, config)
        for tokenizer, encoder in towers:
            found = getattr(pipe, encoder, None)
            if found is not None and getattr(found.config, "projection_dim", None) == want:
                return TextTower(getattr(pipe, tokenizer), found.eval())
        return None
    try:
        index = diffusers.DiffusionPipeline.load_config(str(source))
        for tokenizer, encoder in towers:
            if encoder not in index:
                continue
            folder = source if isinstance(source, Path) else _hub_folders(source, [encoder, tokenizer])
            if _projection_dim(folder / encoder) == want:
                return load_text_tower(folder, encoder, tokenizer, dtype)
    except OSError as err:
        raise hub_error("model", model, err) from None
    return None


def _hub_folders(repo: str, subfolders: list[str]) -> Path:
    """The local snapshot of a hub model holding ``subfolders`` (fetched through the HF cache if needed)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=[f"{sub}/*" for sub in subfolders]))
    except Exception as err:
        raise hub_error("model", repo, err) from None


def _projection_dim(folder: Path) -> int | None:
    """A CLIP text config's ``projection_dim`` (``None``: no readable config, or no projection)."""
    import json

    try:
        value = json.loads((folder / "config.json").read_text()).get("projection_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
