"""Model references: a local path or a Hugging Face hub id, resolved through the normal HF cache.

A model is a folder, a single file or ``org/name``; an adapter is a file or ``org/repo/path/in/repo``;
its CLIP image encoder is found beside it (h94's layout) or named. Hub failures become one-line
``UserError``s, told apart by ``huggingface_hub``'s exception types (not cached while offline, no such
repository, no such file), never by the wording of a message.

Without a network, ``huggingface_hub`` retries every request for about half a minute before it falls back to
the cache. So a hub reference is checked first (``require_hub``): in the local cache, or the hub answers one
request with a short timeout; the answer is kept for the process (``hub_reachable``), and when the hub does
not answer, ``huggingface_hub`` is put in offline mode so later loads read the cache at once.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..families import Family, all_families, family_of_checkpoint
from .configs import check_model_folder, check_part_folder

if TYPE_CHECKING:
    from ..core.adapter import AdapterWeights


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


#: How long the one reachability check of the hub may take, name lookup included (seconds).
HUB_CHECK_TIMEOUT = 3.0
#: The flag that takes a local copy instead, and what it takes, for each kind of hub reference.
LOCAL_FLAG = {"model": "--model also takes a local folder or .safetensors file",
              "adapter": "--adapter also takes a local file",
              **{what: f"--{what.replace(' ', '-')} also takes a local folder" for what in (
                  "image encoder", "controlnet", "depth model", "content text encoder", "single-file config")}}


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers one request within ``HUB_CHECK_TIMEOUT`` (no retries; an answer that
    ``huggingface_hub`` would retry, 5xx or 429, does not count), asked once per process. When it does not,
    ``huggingface_hub`` is switched to offline mode for the rest of the process, so cached files load at once
    instead of after its retries (``HF_HUB_OFFLINE=1``: no request at all)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    answers: list[bool] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                                   timeout=HUB_CHECK_TIMEOUT).close()
            answers.append(True)
        except urllib.error.HTTPError as err:  # a 4xx answer: the hub is there; huggingface_hub retries 5xx and 429
            answers.append(err.code < 500 and err.code != 429)
        except (OSError, ValueError):
            answers.append(False)

    thread = threading.Thread(target=ask, daemon=True)  # the join bounds name lookup too (urllib's timeout does not)
    thread.start()
    thread.join(HUB_CHECK_TIMEOUT)
    reachable = bool(answers) and answers[0]
    if not reachable:
        constants.HF_HUB_OFFLINE = True  # huggingface_hub reads it on every request (diffusers, transformers too)
    return reachable


@dataclass(frozen=True)
class HubRef:
    """A reference to something on the hub: ``what`` it is, the ``ref`` as given, its ``repo`` and a ``file`` of it
    that is in the local cache once it was downloaded (``folder``: the part of the repo it needs, if not all)."""

    what: str
    ref: str
    repo: str
    file: str
    folder: str = ""

    def cached(self) -> bool:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(self.repo, self.file), str)

    def download_command(self) -> str:
        if self.folder:  # an adapter's folder holds its image encoder in h94's layout
            return f'hf download {self.repo} --include "{self.folder}/*"'
        return f"hf download {self.repo} {self.file}" if self.what == "adapter" else f"hf download {self.repo}"

    def missing(self, why: str = "the hub cannot be reached") -> str:
        """One line: not in the cache, ``why`` not from the hub, and how to get it."""
        local = f"; {LOCAL_FLAG[self.what]}" if self.what in LOCAL_FLAG else ""
        return (f"{self.what} {self.ref!r} is not in the Hugging Face cache and {why}: download it where there is "
                f"network with `{self.download_command()}`{local}")


def hub_ref(what: str, ref: str) -> HubRef | None:
    """The hub reference ``ref`` stands for (``None`` for a local path): a diffusers model, ControlNet or
    transformers model is ``org/name``; an adapter file or image encoder folder is ``org/repo/path/in/repo``."""
    if Path(ref).expanduser().exists() or (looks_like_path(ref) and what != "adapter"):
        return None
    parts = ref.split("/")
    if what in ("adapter", "image encoder"):
        if len(parts) < 3 or ref.startswith((".", "/", "~")):
            return None
        repo, inner = "/".join(parts[:2]), "/".join(parts[2:])
        if what == "adapter":
            return HubRef(what, ref, repo, inner, inner.rpartition("/")[0])
        return HubRef(what, ref, repo, f"{inner}/config.json", inner)
    if len(parts) != 2:
        return None
    return HubRef(what, ref, ref, "model_index.json" if what in ("model", "single-file config") else "config.json")


def require_hub(*refs: tuple[str, str | None]) -> None:
    """Every hub reference among ``refs`` ((what, reference) pairs; local paths and ``None`` pass) is in the local
    HF cache, or the hub answers (asked once per process): else one line naming what is missing and the ``hf
    download`` command for each, before anything waits on the network."""
    from huggingface_hub import constants

    wanted = [found for what, ref in refs if ref and (found := hub_ref(what, ref)) is not None]
    if not wanted:
        return
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
    missing = [ref for ref in wanted if not ref.cached()]
    if hub_reachable() or not missing:
        return
    raise UserError("; and ".join(ref.missing(why) for ref in missing))


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
        found = hub_ref(what, ref)
        if found is not None:
            return UserError(found.missing("the hub cannot be reached (offline, no network, or a partial download)"))
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
        if not (path / "model_index.json").exists():
            raise UserError(f"model {path}: not a diffusers model folder (no model_index.json)")
        check_model_folder(path)
        return path
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"model {path}: single-file checkpoints must be .safetensors")
        return path
    if looks_like_path(model) or model.count("/") != 1:
        raise UserError(f"model {model}: no such file or folder")
    require_hub(("model", model))
    return model


def check_model_ref(what: str, ref: str) -> None:
    """A transformers/diffusers model reference must be an existing folder with a config, or a hub id (``org/name``)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{what} {ref}: no config.json in that folder")
        check_part_folder(path, f"{what} {ref}: ")
    elif path.exists() or looks_like_path(ref) or ref.count("/") != 1:
        raise UserError(f"{what} {ref}: no such folder (give a model folder or hub id)")
    else:
        require_hub((what, ref))


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


def _hub_snapshot_folder(adapter_file: Path, folder: Path) -> Path | None:
    """For an adapter from the HF cache, ``folder`` (a path of the same repository snapshot: ``image_encoder`` beside
    the file, h94's ``../models/image_encoder``) fetched if needed; ``None`` when the adapter is not from the cache or
    the folder is outside its repository (``../models`` of a file at the repository's root, as Kolors' adapter)."""
    parts = adapter_file.parts
    if "snapshots" not in parts:
        return None
    at = parts.index("snapshots")
    repo_dir, snapshot = Path(*parts[:at]), Path(*parts[: at + 2])
    if not repo_dir.name.startswith("models--"):
        return None
    try:
        subfolder = Path(os.path.normpath(folder)).relative_to(snapshot).as_posix()
    except ValueError:
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
    if adapter.kind == "csgo" and explicit is None:  # InstantX/CSGO ships none: h94's SDXL encoder, as its authors
        from ..core.csgo import IMAGE_ENCODER

        here = Path(adapter.path).parent
        beside = [folder for folder in (here / "image_encoder", here.parent.parent / IMAGE_ENCODER) if folder.is_dir()]
        explicit = str(beside[0]) if beside else IMAGE_ENCODER
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
    candidates = [here / "image_encoder", here.parent / "models" / "image_encoder"]
    for folder in candidates:
        if not folder.is_dir():
            folder = _hub_snapshot_folder(Path(adapter.path), folder) or folder
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
