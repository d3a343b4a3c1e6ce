"""The server's files as the page sees them: kept uploads, outputs, the operator's models folders, and the names a
visitor is shown for server paths (never the server's own folders)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...core.blocks import expand_preset_ref, is_preset_ref, split_preset_ref
from ...core.csgo import has_csgo_names
from ...core.embeddings import load_style
from ...core.pipeline import StylePipeline
from ...core.request import CONTROL_KINDS, Request
from ...errors import UserError
from ...files.images import MAX_PIXELS, load_image
from ...scores.csd import STYLE_HEAD

#: How deep and how many entries the page looks into the models folders for the names it offers.
MODELS_DEPTH, MODELS_LISTED = 4, 1000


@dataclass(frozen=True)
class ModelChoices:
    """What the models folders hold, by kind, as names relative to their folder (what the page offers)."""

    loras: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    depth_models: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    captioners: tuple[str, ...] = ()  # image-to-text model folders (restyle's prompt from the photo)
    csds: tuple[str, ...] = ()  # CSD checkpoints (restyle's CSD guidance)


def _safetensors_kind(path: Path) -> str | None:
    """``adapter`` (IP-Adapter keys), ``csgo`` (a CSGO checkpoint), ``style`` (a style file), ``csd`` (a CSD
    checkpoint) or ``lora`` by the tensor names in a file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:  # safetensors raises several types for a bad file: not offered
        return None
    if has_csgo_names(keys):
        return "csgo"  # a CSGO checkpoint: the main adapter of a model, never a further one
    if any(k.startswith(("image_proj.", "ip_adapter.", "ip_adapter_proj")) for k in keys):
        return "adapter"
    if any(k.endswith(STYLE_HEAD) for k in keys):
        return "csd"
    return "style" if set(keys) == {"embeds", "negative"} else "lora"


#: Largest pickle inside a ``torch.save`` archive read to recognise a CSD checkpoint (its tensors are elsewhere).
MAX_CHECKPOINT_PICKLE = 4 * 1024 * 1024


def _is_csd_archive(path: Path) -> bool:
    """Whether a ``.pth``/``.pt``/``.bin`` file is a ``torch.save`` archive naming CSD's style head: its pickle is read
    as bytes (never unpickled) and searched for the name."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            return any(i.file_size <= MAX_CHECKPOINT_PICKLE and STYLE_HEAD.encode() in archive.read(i)
                       for i in pickles[:1])
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _folder_kind(config: Path) -> str | None:
    """``controlnet``, ``depth`` or ``caption`` (an image-to-text model) from a model folder's ``config.json``
    (diffusers' or transformers' class)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8")[:200_000])
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if "ControlNet" in str(data.get("_class_name", "")):
        return "controlnet"
    architectures = [str(a) for a in data.get("architectures") or []]
    if any("DepthEstimation" in a for a in architectures):
        return "depth"
    return "caption" if any(a in _image_to_text_classes() for a in architectures) else None


@functools.cache
def _image_to_text_classes() -> frozenset[str]:
    """The model classes transformers' ``AutoModelForImageTextToText`` loads (what ``core.caption`` uses)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    names = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()
    return frozenset(n for name in names for n in ((name,) if isinstance(name, str) else name))


def list_models(folders: Sequence[Path]) -> ModelChoices:
    """The LoRA and adapter files, ControlNet, depth-model and captioning-model folders, CSD checkpoints and presets
    files in the models folders (links are not followed; at most ``MODELS_LISTED`` entries, ``MODELS_DEPTH`` folders
    deep)."""
    found: dict[str, list[str]] = {"lora": [], "adapter": [], "controlnet": [], "depth": [], "presets": [],
                                   "caption": [], "csd": []}
    seen = 0
    for folder in folders:
        for here, dirs, files in os.walk(folder, followlinks=False):
            depth = len(Path(here).relative_to(folder).parts)
            if depth >= MODELS_DEPTH or "model_index.json" in files:  # a whole pipeline: its parts are not offered
                dirs[:] = []
            dirs.sort()
            weights_of_a_model = "config.json" in files  # a model folder's own weights are no LoRA
            for name in sorted(files):
                seen += 1
                if seen > MODELS_LISTED:
                    break
                path = Path(here) / name
                rel = path.relative_to(folder).as_posix()
                if name == "config.json" and (kind := _folder_kind(path)) is not None:
                    found[kind].append(Path(rel).parent.as_posix())
                elif (name.endswith(".safetensors") and not weights_of_a_model
                      and (kind := _safetensors_kind(path)) in ("lora", "adapter", "csd")):
                    found[kind].append(rel)
                elif name.endswith((".pth", ".pt", ".bin")) and not weights_of_a_model and _is_csd_archive(path):
                    found["csd"].append(rel)
                elif name.endswith(".json") and name != "config.json" and "/" not in rel:
                    found["presets"].append(rel)
    unique = {k: tuple(dict.fromkeys(v)) for k, v in found.items()}
    return ModelChoices(unique["lora"], unique["adapter"], unique["controlnet"], unique["depth"], unique["presets"],
                        unique["caption"], unique["csd"])


def as_uploaded(err: UserError, path: str | Path) -> UserError:
    """``err`` naming an upload as the user knows it (its name), not by gradio's temporary path."""
    return UserError(str(err).replace(str(path), Path(path).name))


class Workdir:
    """The server's files as the page sees them: where the app keeps what it makes (``inputs/``: uploads, by
    content hash; ``outputs/``), the operator's models folders it may read LoRAs, adapters, ControlNets, depth models
    and presets files from (``ui --models-dir``; none by default), and the pixel cap on every image a visitor
    sends."""

    def __init__(self, root: str | Path, models_dirs: Sequence[str | Path] = (), max_pixels: int = MAX_PIXELS) -> None:
        self.root = Path(root).expanduser().resolve()
        self.inputs = self.root / "inputs"
        self.outputs = self.root / "outputs"
        self.models_dirs = tuple(Path(os.path.abspath(Path(d).expanduser())) for d in models_dirs)
        self.max_pixels = max_pixels
        for folder in (self.inputs, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)

    def keep_upload(self, path: str | Path, what: str, style_file: bool = False) -> str:
        """Check an uploaded image (within the pixel cap, read from its header before decoding; a reference may be a
        ``style_file`` too) and keep a copy."""
        path = Path(path)
        try:
            if style_file and path.suffix.lower() == ".safetensors":
                load_style(path)
            else:
                load_image(path, what, self.max_pixels)
        except UserError as err:
            raise as_uploaded(err, path) from None
        return self._keep(path.read_bytes(), path.suffix.lower())

    def keep_clip(self, path: str | Path) -> str:
        """Check an uploaded clip from its header (a video whose frames are within the pixel cap) and keep a copy."""
        from ...files.video import VIDEO_SUFFIXES, probe_clip

        path = Path(path)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UserError(f"clip {path.name}: give a video ({', '.join(VIDEO_SUFFIXES)})")
        try:
            probe_clip(path, "clip", self.max_pixels)
        except UserError as err:
            raise as_uploaded(err, path) from None
        return self._keep(path.read_bytes(), path.suffix.lower())

    def _keep(self, data: bytes, suffix: str) -> str:
        """An upload's (or a made image's) bytes under ``inputs/``, named by their content (kept once)."""
        kept = self.inputs / f"{hashlib.sha256(data).hexdigest()[:20]}{suffix}"
        if not kept.exists():
            kept.write_bytes(data)
        return str(kept)

    def keep_painted_mask(self, editor: Any) -> str | None:
        """The mask painted in an editor (any stroke = white), kept as a PNG; ``None`` if unpainted."""
        layers = [np.asarray(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
        painted = [layer[..., 3] > 0 for layer in layers if layer.ndim == 3 and layer.shape[-1] == 4]
        if not painted or not any(p.any() for p in painted):
            return None
        return self.keep_image(Image.fromarray(np.logical_or.reduce(painted).astype(np.uint8) * 255, "L"))

    def keep_image(self, image: Image.Image) -> str:
        """An image the app made for a request (a painted mask, a clip's first frame), kept as a PNG under
        ``inputs/`` by its content."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self._keep(buffer.getvalue(), ".png")

    def model_path(self, what: str, ref: str, defaults: frozenset[str] = frozenset()) -> str:
        """A LoRA or adapter file, ControlNet or depth-model folder or presets file named in the page: ``ref``
        inside one of the models folders (a path in one, or relative to one), as an absolute path; one of
        ``defaults`` as it is. Anything else (missing, outside the folders, a hub id, ``..``) gets the same message,
        so the page tells a visitor nothing about the server's other files."""
        if ref in defaults:
            return ref
        if ".." not in Path(ref).parts:
            for folder in self.models_dirs:
                real, inside = Path(os.path.realpath(folder / ref)), Path(os.path.realpath(folder))
                if (real == inside or inside in real.parents) and real.exists():  # a link out of it is outside
                    return str(real)
        where = "the models folders this page may read" if self.models_dirs else "any models folder (none is allowed)"
        raise UserError(f"{what} {ref}: not found in {where}; the server's operator allows folders with "
                        "`instantstyle ui --models-dir DIR`")

    def model_name(self, path: str | None) -> str | None:
        """The name a models-folder path has in the page (relative to its folder); ``None`` for other paths."""
        if not path:
            return None
        candidate = Path(os.path.realpath(path))
        for folder in self.models_dirs:
            inside = Path(os.path.realpath(folder))
            if inside in candidate.parents:
                return candidate.relative_to(inside).as_posix()
        return None

    def blocks_spec(self, spec: str, pipe: StylePipeline | None = None) -> str:
        """A blocks spec from the page, with ``@FILE:NAME`` expanded to the blocks it names: FILE is read only from
        the models folders, as LoRAs are (``model_path``), and errors name it as the visitor gave it; with ``pipe``,
        its blocks are checked against the model's there, so no later message quotes what the file holds."""
        if not is_preset_ref(spec):
            return spec
        file, name = split_preset_ref(spec)
        path = self.model_path("presets file", file)
        try:
            if pipe is None:
                return expand_preset_ref(f"@{path}:{name}")
            return expand_preset_ref(f"@{path}:{name}", layers=pipe.resources.layers, family=pipe.resources.family)
        except UserError as err:
            raise UserError(str(err).replace(path, file)) from None

    def owns(self, path: str) -> bool:
        """Whether a path from a restored request is one of this app's kept uploads (never serve others)."""
        resolved = Path(path).expanduser().resolve()
        return resolved.parent == self.inputs and resolved.is_file()

    def new_output(self, stem: str, suffix: str = ".png") -> Path:
        """A fresh output path (time-stamped; never one that exists, so nothing made is overwritten)."""
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
        path, n = self.outputs / f"{name}{suffix}", 1
        while path.exists() or any(path.parent.glob(f"{path.stem}-*")):
            n += 1
            path = self.outputs / f"{name}-{n}{suffix}"
        return path

    def models(self) -> ModelChoices:
        """What the models folders offer the page (``list_models``)."""
        return list_models(self.models_dirs)

    # --- what a visitor is shown ------------------------------------------------------------------
    def shown(self, path: str | None) -> str | None:
        """A server path as the page shows it: relative to the workdir or to its models folder; a hub id or a
        relative path as given; any other absolute path by its last name only (never the server's folders)."""
        if not path or not os.path.isabs(os.path.expanduser(path)):
            return path
        candidate = Path(os.path.normpath(os.path.expanduser(path)))
        for folder in (self.root, *self.models_dirs):
            real = (Path(os.path.realpath(candidate)), Path(os.path.realpath(folder)))
            for named, inside in ((candidate, folder), real):
                if inside in named.parents:
                    return named.relative_to(inside).as_posix()
        return candidate.name

    def shown_request(self, request: Request) -> dict[str, Any]:
        """The request as JSON data for the page's Request panel: every server path as ``shown`` makes it."""
        data = request.to_dict()
        paths = ("model", "adapter", "image_encoder", "content_text_encoder", "content_image", "init_image", "mask",
                 "control_image", "controlnet", "depth_model", "composition", "restyle", "csd", "caption_model")
        for name in paths:
            if name in data:
                data[name] = self.shown(data[name])
        if data["control"] not in CONTROL_KINDS:
            data["control"] = self.shown(data["control"])
        data["regions"] = [self.shown(p) for p in data["regions"]]
        for ref in (*data["style"], *data["lora"]):
            ref["path"] = self.shown(ref["path"])
        for use in data["adapters"]:
            use["path"] = self.shown(use["path"])
            use["regions"] = [self.shown(p) for p in use["regions"]]
            for ref in use["style"]:
                ref["path"] = self.shown(ref["path"])
        return data
