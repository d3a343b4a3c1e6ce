"""Models a request may name beyond the loaded pipeline, each loaded once and kept: ControlNets, depth
estimators, further IP-Adapters (with their image encoders), CLIP text towers for content subtraction and
scores, and CSD models for style scores."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..core.adapter import check_adapter_fits, read_adapter
from ..core.embeddings import ImageEncoder, TextTower, load_image_encoder, load_text_tower
from ..core.styles import LoadedAdapter
from ..families import Family
from ..modes import control
from ..scores.csd import CsdModel, load_csd
from .hub import find_image_encoder, resolve_adapter_file


@dataclass
class Extras:
    """The registry, on one device at one dtype."""

    device: torch.device
    dtype: torch.dtype
    controlnets: dict[str, Any] = field(default_factory=dict)
    depth_models: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    adapters: dict[str, LoadedAdapter] = field(default_factory=dict)
    text_towers: dict[str, TextTower] = field(default_factory=dict)
    csd_models: dict[str, CsdModel] = field(default_factory=dict)

    def controlnet(self, ref: str, family: Family, denoiser: Any) -> Any:
        """A ControlNet (checked against the denoiser), on the device."""
        if ref not in self.controlnets:
            self.controlnets[ref] = control.load_controlnet(ref, family, denoiser, self.dtype).to(self.device)
        return self.controlnets[ref]

    def depth_model(self, ref: str) -> tuple[Any, Any]:
        """A transformers depth estimator and its image processor."""
        if ref not in self.depth_models:
            self.depth_models[ref] = control.load_depth_model(ref, self.device)
        return self.depth_models[ref]

    def adapter(self, ref: str, family: Family, denoiser: Any, encoders: list[ImageEncoder]) -> LoadedAdapter:
        """A further adapter (its file read and checked against the denoiser; the weights are not kept here) and
        its image encoder: one of ``encoders`` (already loaded) when it is the same folder."""
        if ref not in self.adapters:
            weights = read_adapter(resolve_adapter_file(ref))
            check_adapter_fits(weights, family, denoiser)
            folder = str(find_image_encoder(weights))
            known = [*encoders, *(a.encoder for a in self.adapters.values())]
            encoder = next((e for e in known if e.identity == folder), None)
            if encoder is None:
                encoder = load_image_encoder(folder, self.dtype)
                encoder.model.to(self.device)  # type: ignore[arg-type]  # transformers types .to loosely
            self.adapters[ref] = LoadedAdapter(replace(weights, state_dict={}), encoder, family.negative_image)
        return self.adapters[ref]

    def text_tower(self, folder: str, want: int) -> TextTower:
        """A CLIP text model with projection and its tokenizer from a folder (``load_text_tower``'s checks), on
        the device; its projection must be ``want`` wide."""
        if folder not in self.text_towers:
            tower = load_text_tower(folder, dtype=self.dtype, width=want)
            tower.model.to(self.device)
            self.text_towers[folder] = tower
        return self.text_towers[folder]

    def csd(self, path: str) -> CsdModel:
        """The CSD style model from a checkpoint file or folder (read safely, see ``csd``), on the device."""
        if path not in self.csd_models:
            self.csd_models[path] = load_csd(path, self.device, self.dtype)
        return self.csd_models[path]
