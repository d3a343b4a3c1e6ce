"""Model references: a local path or a Hugging Face hub id, resolved through the normal HF cache.

A model is a folder, a single file or ``org/name``; an adapter is a file or ``org/repo/path/in/repo``;
its CLIP image encoder is found beside it (h94's layout) or named. Hub failures become one-line
``UserError``s, told apart by ``huggingface_hub``'s exception types (not cached while offline, no such
repository, no such file), never by the wording of a message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .families import Family, all_families, family_of_checkpoint

if TYPE_CHECKING:
    from .adapter import AdapterWeights


def looks_like_path(ref: str) -> bool:
    """Whether a reference is meant as a local path (never a hub id), even if nothing is there."""
    return ref.startswith((".", "/", "~")) or ref.endswith((".safetensors", ".ckpt", ".bin")) or "\\" in ref


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def hub_error(what: str, ref: str, err: BaseException) -> UserError:
    """One line for a hub failure, by the ``huggingface_hub`` error behind it (diffusers and transformers
    re-raise those as ``OSError``; the original is in the exception chain)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    causes = list(_causes(err))
    if any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in causes) or (
        constants.HF_HUB_OFFLINE and not any(isinstance(e, RepositoryNotFoundError) for e in causes)
    ):
        return UserError(f"{what} {ref!r} is not in the Hugging Face cache and the hub cannot be reached "
                         "(offline or no network); download it first")
    if any(isinstance(e, GatedRepoError) for e in causes):
        return UserError(f"{what} {ref!r} is gated on the hub: accept its licence there and log in (hf auth login)")
    if any(isinstance(e, RepositoryNotFoundError) for e in causes):
        return UserError(f"{what} {ref!r}: no such repository on the hub (or a private one: log in with hf auth login)")
    if any(isinstance(e, RevisionNotFoundError) for e in causes):
        return UserError(f"{what} {ref!r}: no such revision on the hub")
    if any(isinstance(e, EntryNotFoundError) for e in causes):
        return UserError(f"{what} {ref!r}: the hub repository has no such file")
    first = str(err).splitlines()[0][:200] if str(err) else ""
    return UserError(f"{what} {ref!r} could not be loaded from the hub ({type(err).__name__}: {first})")


def model_source(model: str) -> Path | str:
    """A model reference as a local folder or file (``Path``) or a hub id (``str``); a reference that is
    neither is a ``UserError``."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"model {path}: not a diffusers model folder (no model_index.json)")
        return path
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"model {path}: single-file checkpoints must be .safetensors")
        return path
    if looks_like_path(model) or model.count("/") != 1:
        raise UserError(f"model {model}: no such file or folder")
    return model


def check_model_ref(what: str, ref: str) -> None:
    """A transformers/diffusers model reference must be an existing folder with a config, or a hub id (``org/name``)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what} {ref}: no config.json in that folder")
    elif path.exists() or looks_like_path(ref) or ref.count("/") != 1:
        raise UserError(f"{what} {ref}: no such folder (give a model folder or hub id)")


def check_controlnet_ref(ref: str) -> None:
    """A ControlNet reference must be a diffusers ControlNet folder or a hub id (``org/name``)."""
    check_model_ref("controlnet", ref)
    config = Path(ref).expanduser() / "config.json"
    if config.is_file():
        try:
            kind = json.loads(config.read_text()).get("_class_name", "")
        except (OSError, ValueError, AttributeError):
            raise UserError(f"controlnet {ref}: config.json is not readable JSON") from None
        if "ControlNet" not in str(kind):
            raise UserError(f"controlnet {ref}: is a {kind or 'non-ControlNet'} folder, not a ControlNet")


def is_local_adapter_ref(ref: str) -> bool:
    """Whether an adapter reference names a local file (checkable without the hub)."""
    return ref.startswith((".", "/", "~")) or ref.count("/") < 2 or Path(ref).expanduser().exists()


def resolve_adapter_file(ref: str) -> Path:
    """A local adapter file, or ``org/repo/path/in/repo`` fetched through the normal HF cache."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"adapter {ref}: is a folder; give the weights file inside it")
    parts = ref.split("/")
    if looks_like_path(ref) and not (len(parts) >= 3 and not ref.startswith((".", "/", "~"))):
        raise UserError(f"adapter {ref}: no such file")
    if len(parts) < 3:
        raise UserError(f"adapter {ref}: no such file (hub references look like org/repo/path/file.safetensors)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as err:
        raise hub_error("adapter", ref, err) from None


def _encoder_dims(folder: Path) -> tuple[int, int] | None:
    """(global embedding width, hidden size) from a CLIP or SigLIP (vision) config, or ``None`` when there is
    none: CLIP's global embedding is its projection, SigLIP's its pooled output (hidden size)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        vision = config.get("vision_config", config)
        hidden = int(vision.get("hidden_size", 768))
        if str(config.get("model_type", "")).startswith("siglip"):
            return hidden, hidden
        return int(vision.get("projection_dim", config.get("projection_dim", 512))), hidden
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _hub_snapshot_folder(adapter_file: Path, subfolder: str) -> Path | None:
    """For an adapter from the HF cache, ``subfolder`` of the same repo snapshot (fetched if needed)."""
    parts = adapter_file.parts
    if "snapshots" not in parts:
        return None
    repo_dir = Path(*parts[: parts.index("snapshots")])
    if not repo_dir.name.startswith("models--"):
        return None
    repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
    from huggingface_hub import snapshot_download

    try:
        root = snapshot_download(repo_id, allow_patterns=[f"{subfolder}/*"])
    except Exception:
        return None
    return Path(root) / subfolder


def find_image_encoder(adapter: AdapterWeights, explicit: str | None = None) -> Path:
    """The image encoder for an adapter: given, else ``image_encoder/`` beside the weights file or
    ``../models/image_encoder`` (h94's layout for ViT-H adapters), else one of the encoders the model families'
    published adapters use (InstantX: ``google/siglip-so400m-patch14-384``; XLabs:
    ``openai/clip-vit-large-patch14``) as a folder beside the adapter's repository folder (hub repositories
    mirrored as ``ORG/NAME`` folders) or in the HF cache; whichever has the adapter's width."""
    want = adapter.image_embed_dim
    index = 0 if adapter.kind == "global" else 1
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            ref = explicit.split("/")
            if len(ref) >= 3 and not looks_like_path(explicit):
                from huggingface_hub import snapshot_download

                try:
                    sub = "/".join(ref[2:])
                    folder = Path(snapshot_download("/".join(ref[:2]), allow_patterns=[f"{sub}/*"])) / sub
                except Exception as err:
                    raise hub_error("image encoder", explicit, err) from None
            elif len(ref) == 2 and not looks_like_path(explicit):
                folder = _hub_encoder(explicit, index, want, strict=True) or folder
            else:
                raise UserError(f"image encoder {explicit}: no such folder")
        dims = _encoder_dims(folder)
        if dims is None:
            raise UserError(f"image encoder {folder}: no readable config.json")
        if dims[index] != want:
            raise UserError(f"image encoder {folder} gives {dims[index]}-d features; adapter needs {want}")
        return folder
    here = Path(adapter.path).parent
    candidates = [
        ("image_encoder", here / "image_encoder"),
        ("models/image_encoder", here.parent / "models" / "image_encoder"),
    ]
    for sub, folder in candidates:
        if not folder.is_dir():
            hub_sub = (here.name + "/" + sub) if sub == "image_encoder" else sub
            folder = _hub_snapshot_folder(Path(adapter.path), hub_sub) or folder
        dims = _encoder_dims(folder)
        if dims is not None and dims[index] == want:
            return folder
    known = list(dict.fromkeys(repo for family in all_families() for repo in family.image_encoders))
    for repo in known:  # mirrored beside the adapter's repository folder: ROOT/ORG/NAME/file -> ROOT/REPO
        dims = _encoder_dims(here.parent.parent / repo)
        if dims is not None and dims[index] == want:
            return here.parent.parent / repo
    for repo in known:
        found = _hub_encoder(repo, index, want, strict=False)
        if found is not None:
            return found
    tried = f" or {', '.join(known)}" if known else ""
    raise UserError(
        f"no image encoder with {want}-d features found beside adapter {adapter.path} (image_encoder/{tried}); "
        "pass --image-encoder"
    )


def _hub_encoder(repo: str, index: int, want: int, strict: bool) -> Path | None:
    """A hub image encoder repository (``org/name``) through the HF cache, when its config gives ``want``-d
    features: its config first, then its weights, tokenizer and processor files (no other formats). Not
    ``strict``: ``None`` when it is not cached and the hub cannot be reached, or does not fit."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        config = Path(hf_hub_download(repo, "config.json"))
    except Exception as err:
        if strict:
            raise hub_error("image encoder", repo, err) from None
        return None
    dims = _encoder_dims(config.parent)
    if dims is None or dims[index] != want:
        if strict:
            raise UserError(f"image encoder {repo} gives {dims[index] if dims else '?'}-d features; adapter "
                            f"needs {want}")
        return None
    try:
        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as err:
        if strict:
            raise hub_error("image encoder", repo, err) from None
        return None


def checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file ``.safetensors`` checkpoint (read from its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as err:
        raise UserError(f"model {path}: not a readable .safetensors checkpoint ({type(err).__name__})") from None


def checkpoint_family(path: Path) -> Family:
    """The model family of a single-file (original-format) ``.safetensors`` checkpoint, from its tensor names."""
    return family_of_checkpoint(checkpoint_keys(path), f"model {path}")


#: Tensor-name prefixes of the parts besides the denoiser in whole-model single files (VAE, text encoders).
WHOLE_MODEL_PREFIXES = ("first_stage_model.", "vae.", "cond_stage_model.", "conditioner.", "text_encoders.")


def holds_denoiser_only(keys: list[str]) -> bool:
    """Whether a single file holds only the denoiser (BFL's ``flux1-dev.safetensors``), not a whole model."""
    return not any(k.startswith(WHOLE_MODEL_PREFIXES) for k in keys)
