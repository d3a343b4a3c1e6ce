"""How an image is made: ``StylePipeline`` runs a ``Request`` through a diffusers pipeline.

Loading: a base model (diffusers folder, hub id, or single ``.safetensors`` file), an IP-Adapter
file (local path or ``org/repo/path/in/repo``) and the CLIP image encoder that fits it. Running: the
request's style embedding (encoded once, cached), minus its content, goes to diffusers as
``ip_adapter_image_embeds``; the blocks spec becomes per-layer adapter scales.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from . import adapter as adapters
from . import control, guards, memory, modes, routing
from .blocks import cross_attention_layers, resolve_blocks
from .cache import EmbeddingCache, encoder_fingerprint
from .embeddings import (
    ImageEncoder,
    StyleFile,
    blend,
    encode_reference,
    image_hash,
    load_image,
    load_image_encoder,
    load_style,
    save_style,
    subtract_content,
    text_embeds,
    unconditional_embeds,
)
from .errors import UserError
from .lora import apply_loras
from .request import Request
from .schedulers import make_scheduler

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_ADAPTER = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
#: The diffusers pipelines a StylePipeline drives (diffusers types them loosely, hence Any).
SDPipeline = Any
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r} (auto, cpu, cuda, mps)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda asked for, but no CUDA GPU is available")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps asked for, but MPS is not available")
    return torch.device(device)


def resolve_placement(device: str = "auto", device_map: str | None = None) -> torch.device:
    """The main device; with ``device_map="balanced"`` (a model over all GPUs of a machine) the first GPU."""
    if device_map not in (None, "balanced"):
        raise UserError(f"unknown device map {device_map!r} (balanced)")
    if device_map is not None and not torch.cuda.is_available():
        raise UserError("--device-map balanced spreads a model over CUDA GPUs, and none is available")
    return resolve_device("cuda" if device_map else device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on a GPU and float32 on the CPU (CPU half precision is slow here)."""
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.endswith((".safetensors", ".ckpt", ".bin")) or "\\" in ref


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint answers at all (to tell "no network" from "no such file")."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_error(what: str, ref: str, err: Exception) -> UserError:
    """One line for a hub failure: not cached while offline (or unreachable), or what the hub said."""
    from huggingface_hub import constants

    text = str(err).lower()
    offline = constants.HF_HUB_OFFLINE or "offline" in text or "outgoing traffic has been disabled" in text
    if offline or not _hub_reachable():
        return UserError(f"{what} {ref!r} is not in the Hugging Face cache and the hub cannot be reached "
                         "(offline or no network); download it first")
    return UserError(f"{what} {ref!r} could not be loaded from the hub ({type(err).__name__}: {str(err)[:200]})")


def single_file_arch(path: Path) -> str:
    """SDXL or SD1.5, from an original-format checkpoint's keys (SDXL has a second text embedder)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:
        raise UserError(f"model {path}: not a readable .safetensors checkpoint ({type(err).__name__})") from None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    raise UserError(f"model {path}: not an SD1.5 or SDXL checkpoint")


def load_base_pipeline(
    model: str, dtype: torch.dtype, config: str | None = None, device_map: str | None = None
) -> SDPipeline:
    """Load the base text-to-image pipeline from a folder, a single file or a hub id (on the CPU, or
    spread over the GPUs by diffusers' ``device_map="balanced"``; folders and hub ids only)."""
    path = Path(model).expanduser()
    placement = {} if device_map is None else {"device_map": device_map}
    if device_map is not None and path.is_file():
        raise UserError(f"model {path}: --device-map needs a diffusers folder or hub id, not a single file")
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"model {path}: not a diffusers model folder (no model_index.json)")
        pipe = DiffusionPipeline.from_pretrained(str(path), dtype=dtype, **placement)
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"model {path}: single-file checkpoints must be .safetensors")
        cls = StableDiffusionXLPipeline if single_file_arch(path) == "sdxl" else StableDiffusionPipeline
        kwargs: dict[str, Any] = {"dtype": dtype}
        if config is not None:
            kwargs["config"] = config
        try:
            pipe = cls.from_single_file(str(path), **kwargs)
        except OSError as err:
            raise _hub_error("the config for single-file model", model, err) from None
    elif _looks_like_path(model) or model.count("/") != 1:
        raise UserError(f"model {model}: no such file or folder")
    else:
        try:
            pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype, **placement)
        except OSError as err:
            raise _hub_error("model", model, err) from None
    pipe = modes.as_text_pipeline(pipe, dtype)  # an inpainting/img2img model folder: same components
    if not isinstance(pipe, (StableDiffusionXLPipeline, StableDiffusionPipeline)):
        raise UserError(f"model {model}: {type(pipe).__name__} is not supported (SD1.5 or SDXL text-to-image)")
    return pipe


def model_arch(pipe: SDPipeline) -> str:
    """``sdxl`` when the UNet takes SDXL's text+time conditioning, else ``sd15``."""
    return "sdxl" if pipe.unet.config.addition_embed_type == "text_time" else "sd15"


def resolve_adapter_file(ref: str) -> Path:
    """A local adapter file, or ``org/repo/path/in/repo`` fetched through the normal HF cache."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"adapter {ref}: is a folder; give the weights file inside it")
    parts = ref.split("/")
    if _looks_like_path(ref) and not (len(parts) >= 3 and not ref.startswith((".", "/", "~"))):
        raise UserError(f"adapter {ref}: no such file")
    if len(parts) < 3:
        raise UserError(f"adapter {ref}: no such file (hub references look like org/repo/path/file.safetensors)")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as err:
        raise _hub_error("adapter", ref, err) from None


def _encoder_dims(folder: Path) -> tuple[int, int] | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("vision_config", config)
    return int(config.get("projection_dim", 512)), int(config.get("hidden_size", 768))


def _hub_snapshot_folder(adapter_file: Path, subfolder: str) -> Path | None:
    """For an adapter from the HF cache, fetch ``subfolder`` of the same repo snapshot."""
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


def find_image_encoder(adapter: adapters.AdapterWeights, explicit: str | None = None) -> Path:
    """The CLIP image encoder for an adapter: given, else ``image_encoder/`` beside the weights file or
    ``../models/image_encoder`` (h94's layout for ViT-H adapters), whichever has the adapter's width."""
    want = adapter.image_embed_dim
    index = 0 if adapter.kind == "global" else 1
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            ref = explicit.split("/")
            if len(ref) >= 3 and not _looks_like_path(explicit):
                from huggingface_hub import snapshot_download

                try:
                    sub = "/".join(ref[2:])
                    folder = Path(snapshot_download("/".join(ref[:2]), allow_patterns=[f"{sub}/*"])) / sub
                except Exception as err:
                    raise _hub_error("image encoder", explicit, err) from None
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
    raise UserError(
        f"no image encoder with {want}-d features found beside adapter {adapter.path}; pass --image-encoder"
    )


@dataclass
class Result:
    """The images and the complete request that reproduces them (seed and size filled in)."""

    images: list[Image.Image]
    request: Request


@dataclass
class StylePipeline:
    """A diffusers SD/SDXL pipeline with an InstantStyle adapter, ready to run requests."""

    pipe: SDPipeline
    adapter: adapters.AdapterWeights  # kind and dims; the weights live in the UNet
    image_encoder: ImageEncoder
    model_id: str
    device: torch.device
    dtype: torch.dtype
    keep_all_weights: bool = False
    content_text_encoder: str | None = None
    low_memory: bool = False  # image encoder off the device between uses (see ``memory``)
    disk_cache: EmbeddingCache | None = None
    adapter_ref: str | None = None  # the adapter as the user named it (a hub reference stays one in the PNG)
    _embed_cache: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict, repr=False)
    _base_scheduler: Any = field(default=None, repr=False)
    _content_towers: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _controlnets: dict[str, Any] = field(default_factory=dict, repr=False)
    _depth_models: dict[str, Any] = field(default_factory=dict, repr=False)
    _extras: dict[str, tuple[adapters.AdapterWeights, ImageEncoder]] = field(default_factory=dict, repr=False)
    _attached: tuple[str, ...] = field(default=(), repr=False)  # the further adapters now in the UNet

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        adapter: str = DEFAULT_ADAPTER,
        *,
        image_encoder: str | None = None,
        content_text_encoder: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        blocks: str = "style",
        keep_all_weights: bool = False,
        single_file_config: str | None = None,
        device_map: str | None = None,
        offload: str | None = None,
        low_memory: bool | None = None,
        compile_backend: str | None = None,
        cache_dir: str | None = None,
    ) -> StylePipeline:
        """Load base model, adapter and image encoder; keep adapter weights only for ``blocks``
        (unless ``keep_all_weights``), then move everything to the device.

        How to run, not what to make: ``device_map`` spreads the model over several GPUs; ``offload``
        (``model``/``sequential``) moves models to the device only while they run; ``low_memory`` keeps
        the image encoder off the device between encodes (``None``: when memory is tight, or with offload);
        ``compile_backend`` torch.compiles the UNet; ``cache_dir`` keeps style embeddings on disk."""
        memory.check_offload(offload)
        cache = EmbeddingCache.open(cache_dir) if cache_dir else None
        torch_device = resolve_placement(device, device_map)
        torch_dtype = resolve_dtype(dtype, torch_device)
        weights = read_adapter_for(adapter)
        encoder_dir = find_image_encoder(weights, image_encoder)
        pipe = load_base_pipeline(model, torch_dtype, single_file_config, device_map)
        arch = model_arch(pipe)
        adapters.check_adapter_fits(weights, pipe.unet, arch)
        layers = cross_attention_layers(pipe.unet.attn_processors)
        keep = None if keep_all_weights else [set(resolve_blocks(blocks, layers, arch))]
        adapters.attach_adapters(pipe, [weights], keep)
        if device_map is None:  # a device-mapped pipeline is already placed (and refuses .to())
            memory.place_pipeline(pipe, torch_device, offload)
        if compile_backend:
            memory.compile_unet(pipe.unet, compile_backend)
        encoder = load_image_encoder(encoder_dir, torch_dtype, weights=False)  # weights read on first use
        if low_memory is None:
            low_memory = offload is not None or memory.memory_is_tight(torch_device, encoder, torch_dtype)
        if not low_memory:
            memory.ready_encoder(encoder, torch_device, torch_dtype)
        elif torch_device.type == "cpu":
            memory.pin_mmap_threshold()  # freed tensors leave the process (see memory.py)
        weights = replace(weights, state_dict={})  # the file's tensors now live, pruned, in the UNet
        memory.return_freed_memory()  # give back what loading and pruning freed
        return cls(
            pipe, weights, encoder, model, torch_device, torch_dtype,
            keep_all_weights, content_text_encoder, low_memory, cache, adapter_ref=adapter,
        )

    @property
    def arch(self) -> str:
        return model_arch(self.pipe)

    @property
    def layers(self) -> list[str]:
        """The UNet's cross-attention layers, the units blocks resolve to."""
        return cross_attention_layers(self.pipe.unet.attn_processors)

    def __call__(self, request: Request | None = None, *, progress: bool = False, **kwargs: Any) -> Result:
        """Make the images of a request (or of ``Request(**kwargs)``)."""
        if request is None:
            request = Request(**kwargs)
        elif kwargs:
            request = request.replace(**kwargs)
        request = self.complete(request)
        modes.check_model(request, self.pipe.unet)
        slots = self.apply_blocks(request)
        self.apply_model_changes(request)
        embeds = self.ip_adapter_embeds(request)
        pipe = modes.mode_pipeline(self.pipe, request, self.controlnet(request), self.dtype)
        extra = modes.mode_kwargs(request, self.depth_model(request))
        masks = routing.region_masks(request, (request.width or 0, request.height or 0))
        if masks is not None:
            extra["cross_attention_kwargs"] = {"ip_adapter_masks": masks}
        callback = routing.schedule_callback(request, self.pipe.unet, slots, routing.per_image_weights(request))
        if callback is not None:
            extra["callback_on_step_end"] = callback
        modes.set_vae_tiling(self.pipe.vae, request)
        pipe.set_progress_bar_config(disable=not progress)
        assert request.seed is not None
        guards.warn_if_prompts_truncated(pipe, request)
        with guards.refuse_nonfinite(self.pipe.vae, guards.nonfinite_cause(self.dtype, request)):
            output = pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                num_images_per_prompt=request.num_images,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                ip_adapter_image_embeds=embeds,
                **extra,
            )
        return Result(modes.paste_back(list(output.images), request), request)

    def complete(self, request: Request) -> Request:
        """Fill in what the pipeline decides: model and adapter identity, size, and a seed."""
        adapter = self.adapter_ref or self.adapter.path
        for name, mine in (("model", self.model_id), ("adapter", adapter)):
            theirs = getattr(request, name)
            if theirs is None or theirs == mine or Path(theirs).expanduser() == Path(mine).expanduser():
                continue
            # Another spelling of the same adapter (a path into the HF cache, say) is resolved once, here only.
            if name == "model" or resolve_adapter_file(theirs) != Path(self.adapter.path):
                raise UserError(f"request is for {name} {theirs!r} but this pipeline has {mine!r}")
        default = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        width, height = modes.init_size(request, default) or (default, default)
        return request.replace(
            model=request.model or self.model_id,
            adapter=request.adapter or adapter,
            width=request.width or width,
            height=request.height or height,
            seed=request.seed if request.seed is not None else secrets.randbits(32),
            strength=modes.default_strength(request),
            controlnet=request.control and control.controlnet_ref(request.control, self.arch, request.controlnet),
        )

    def controlnet(self, request: Request) -> Any | None:
        """The request's ControlNet, loaded once per reference and moved to the pipeline's device."""
        if request.control is None:
            return None
        ref = control.controlnet_ref(request.control, self.arch, request.controlnet)
        if ref not in self._controlnets:
            model = control.load_controlnet(ref, self.pipe.unet, self.dtype)
            self._controlnets[ref] = model.to(self.device)
        return self._controlnets[ref]

    def depth_model(self, request: Request) -> Any | None:
        """The request's depth-estimation model (loaded once), or ``None``."""
        ref = request.depth_model
        if ref is not None and ref not in self._depth_models:
            self._depth_models[ref] = control.load_depth_model(ref, self.device)
        return self._depth_models.get(ref) if ref is not None else None

    def apply_blocks(self, request: Request) -> list[dict[str, float]]:
        """Resolve the blocks to per-slot layer scales (see ``routing.slot_scales``); reload the adapters when
        the request names other further adapters or needs layers that were pruned."""
        slots = routing.slot_scales(request, self.layers, self.arch)
        unet = self.pipe.unet
        wanted = tuple(a.path for a in request.adapters)
        real = 1 + len(wanted)
        own = [[slots[0], *slots[real:]], *([scales] for scales in slots[1:real])]  # per loaded adapter
        targets = [{layer for scales in group for layer, s in scales.items() if s} for group in own]
        held = adapters.active_layers(unet)
        pruned = held is not None and any(not t <= h for t, h in zip(targets, held, strict=False))
        if held is None or wanted != self._attached or pruned:
            files = [read_adapter_for(self.adapter.path), *(read_adapter_for(self.extra_adapter(p)[0].path)
                                                             for p in wanted)]
            keep = None if self.keep_all_weights else [set().union(*group) for group in own]
            adapters.attach_adapters(self.pipe, files, keep)
            self._attached = wanted
        routing.set_slot_count(unet, len(slots))
        routing.set_scales(unet, slots, routing.per_image_weights(request))
        return slots

    def extra_adapter(self, ref: str) -> tuple[adapters.AdapterWeights, ImageEncoder]:
        """A further adapter (file read and checked against the UNet, weights not kept) and its image encoder."""
        if ref not in self._extras:
            weights = read_adapter_for(ref)
            adapters.check_adapter_fits(weights, self.pipe.unet, self.arch)
            folder = str(find_image_encoder(weights))
            known = [self.image_encoder, *(e for _, e in self._extras.values())]
            encoder = next((e for e in known if e.identity == folder), None)
            if encoder is None:
                encoder = load_image_encoder(folder, self.dtype)
                encoder.model.to(self.device)  # type: ignore[arg-type]  # transformers types .to loosely
            self._extras[ref] = (replace(weights, state_dict={}), encoder)
        return self._extras[ref]

    def apply_model_changes(self, request: Request) -> None:
        """Set the request's scheduler (the model's own when none) and make exactly its LoRAs active."""
        if self._base_scheduler is None:
            self._base_scheduler = self.pipe.scheduler
        base = self._base_scheduler
        self.pipe.scheduler = make_scheduler(request.scheduler, base) if request.scheduler else base
        apply_loras(self.pipe, [(lora.path, lora.scale) for lora in request.lora])

    # --- the style embedding -------------------------------------------------------------
    def encode(
        self, path: str, fit: str = "crop", encoder: ImageEncoder | None = None, kind: str | None = None
    ) -> torch.Tensor:
        """Encode one reference image (fitted to a square by ``fit``; by default for the main adapter),
        cached by image content and encoder in memory, and on disk with ``cache_dir``: a style seen
        before never runs the encoder."""
        encoder, kind = encoder or self.image_encoder, kind or self.adapter.kind
        key = (image_hash(path), encoder_fingerprint(encoder.identity), kind, fit)
        if key not in self._embed_cache:
            embeds = self.disk_cache.get(key) if self.disk_cache else None
            if embeds is None:
                image = load_image(path, "style image")
                with memory.encoder_in_use(encoder, self.device, self.dtype, self.low_memory) as enc:
                    embeds = encode_reference(image, enc, kind, fit).cpu()
                if self.disk_cache:
                    self.disk_cache.put(key, embeds)
            self._embed_cache[key] = embeds
        return self._embed_cache[key]

    def negative_embeds(
        self, like: torch.Tensor, encoder: ImageEncoder | None = None, kind: str | None = None
    ) -> torch.Tensor:
        """The CFG negative embedding, shaped like ``like``: zeros for global adapters; plus adapters
        encode a black image, once per encoder. By default for the main adapter."""
        encoder, kind = encoder or self.image_encoder, kind or self.adapter.kind
        if kind == "global":
            return unconditional_embeds(like, None, "global")
        key = ("<unconditional>", encoder_fingerprint(encoder.identity), kind)
        if key not in self._embed_cache:
            with memory.encoder_in_use(encoder, self.device, self.dtype, self.low_memory) as enc:
                self._embed_cache[key] = unconditional_embeds(like, enc, kind).cpu()
        return self._embed_cache[key].expand_as(like)

    def reference_embeds(self, request: Request) -> torch.Tensor:
        """The blended embedding of the request's style references (images or style files)."""
        parts = []
        for ref in request.style:
            if ref.path.endswith(".safetensors"):
                style = load_style(ref.path)
                if style.kind != self.adapter.kind or style.embeds.shape[-1] != self.adapter.image_embed_dim:
                    raise UserError(f"style file {ref.path} was made for a {style.kind} adapter of another width")
                parts.append(style.embeds)
            else:
                parts.append(self.encode(ref.path, request.style_fit))
        if request.regions:  # one image per region, each weighted by its scale (routing.set_scales)
            return torch.cat(parts)
        return blend(parts, [ref.weight for ref in request.style])

    def content_embeds(self, request: Request) -> torch.Tensor | None:
        """The content to subtract: a content prompt through the CLIP text tower of the image
        encoder's space, or a content image through the image encoder."""
        if request.content_prompt is None and request.content_image is None:
            return None
        if self.adapter.kind != "global":
            raise UserError("content subtraction needs a global adapter; this is a plus (patch-feature) adapter")
        if request.content_image is not None:
            if not Path(request.content_image).is_file():
                raise UserError(f"content image {request.content_image}: no such file")
            return self.encode(request.content_image)
        tokenizer, tower = self.content_text_tower(request.content_text_encoder or self.content_text_encoder)
        return text_embeds(request.content_prompt or "", tokenizer, tower)

    def content_text_tower(self, folder: str | None) -> tuple[Any, Any]:
        """SDXL's own ``text_encoder_2`` when it shares the image encoder's space (ViT-bigG), else the
        CLIP text model the user names (e.g. the ViT-H text tower for ViT-H adapters)."""
        want = self.adapter.image_embed_dim
        if folder is None:
            te2 = getattr(self.pipe, "text_encoder_2", None)
            if te2 is not None and te2.config.projection_dim == want:
                return self.pipe.tokenizer_2, te2
            raise UserError(
                f"content prompt needs a CLIP text encoder with {want}-d projection (the image encoder's "
                "space); pass --content-text-encoder"
            )
        if folder not in self._content_towers:
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer

            path = Path(folder).expanduser()
            if not (path / "config.json").is_file():
                raise UserError(f"content text encoder {folder}: no such model folder")
            tower = CLIPTextModelWithProjection.from_pretrained(path, dtype=self.dtype)
            tower = tower.to(self.device).eval()  # type: ignore[arg-type]
            if tower.config.projection_dim != want:
                raise UserError(
                    f"content text encoder {folder} gives {tower.config.projection_dim}-d embeddings; "
                    f"the adapter's image encoder {want}"
                )
            self._content_towers[folder] = (CLIPTokenizer.from_pretrained(path), tower)
        return self._content_towers[folder]

    def style_embeds(self, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        """(style, negative) embeddings: the blended references minus ``content_scale`` times the
        content (InstantStyle), and the CFG negative (zeros for global adapters)."""
        style = self.reference_embeds(request)
        content = self.content_embeds(request)
        if content is not None:
            style = subtract_content(style, content.cpu(), request.content_scale)
        negative = self.negative_embeds(style)
        return style, negative

    def save_style(self, request: Request, path: str | Path, extra: dict[str, str] | None = None) -> Path:
        """Save the request's blended references as a style file, reusable without the images
        (``extra``: more metadata, e.g. the web UI's settings)."""
        style = self.reference_embeds(request)
        negative = self.negative_embeds(style)
        references = json.dumps([{"path": r.path, "weight": r.weight} for r in request.style])
        metadata = {**(extra or {}), "adapter": self.adapter.path, "references": references}
        return save_style(path, StyleFile(style, negative, self.adapter.kind, self.image_encoder.identity, metadata))

    def ip_adapter_embeds(self, request: Request) -> list[torch.Tensor]:
        """What diffusers takes as ``ip_adapter_image_embeds``: per slot (main style, further adapters, then
        composition) a tensor (2, n, ...) under CFG, negative half first, n = 1 or one per region; diffusers
        repeats it per image. Content subtraction applies to the main adapter's style only."""
        pairs = [self.style_embeds(request)]
        for use in request.adapters:
            weights, encoder = self.extra_adapter(use.path)
            parts = [self.encode(ref.path, request.style_fit, encoder, weights.kind) for ref in use.style]
            style = torch.cat(parts) if use.regions else blend(parts, [ref.weight for ref in use.style])
            pairs.append((style, self.negative_embeds(style, encoder, weights.kind)))
        if request.composition is not None:
            layout = self.encode(request.composition, request.style_fit)
            pairs.append((layout, self.negative_embeds(layout)))
        cfg = request.guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        return [
            (torch.cat([negative[None], style[None]]) if cfg else style[None]).to(self.device, self.dtype)
            for style, negative in pairs
        ]


def read_adapter_for(ref: str) -> adapters.AdapterWeights:
    """Resolve an adapter reference to a file and read it."""
    return adapters.read_adapter(resolve_adapter_file(ref))


def unet_layers(model: str, config: str | None = None) -> tuple[str, list[str]]:
    """(arch, cross-attention layers) of a model from its UNet config alone, without its weights:
    cheap enough to check a blocks spec before any model loads."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    path = Path(model).expanduser()
    source: Path | str
    if path.is_file():
        if config is None:
            return single_file_arch(path), []  # layers known only after loading
        source = Path(config).expanduser()
    elif path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"model {path}: not a diffusers model folder (no model_index.json)")
        source = path
    elif _looks_like_path(model) or model.count("/") != 1:
        raise UserError(f"model {model}: no such file or folder")
    else:
        source = model
    try:
        cfg = UNet2DConditionModel.load_config(str(source), subfolder="unet")
    except OSError as err:
        raise _hub_error("model", model, err) from None
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg)
    arch = "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"
    return arch, cross_attention_layers(unet.attn_processors)
