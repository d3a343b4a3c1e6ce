"""Export a diffusers pipeline folder (SD1.5, SDXL) or its transformer (SD3, FLUX) in the original single-file layout.

This is the inverse of diffusers' single-file conversion (``diffusers/loaders/single_file_utils.py``), so
tests can exercise ``from_single_file`` offline with tiny models. Every tensor is renamed, never changed,
except where the original format stores it differently (fused OpenCLIP q/k/v, transposed text
projection, 1x1-conv VAE attention); loading the file back gives bit-identical weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from safetensors.torch import save_file

Tensor = torch.Tensor

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

# diffusers resnet layer name -> LDM ResBlock layer name (UNet).
_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

# Top-level UNet modules: diffusers name -> LDM name.
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # class_embedding (timestep/projection) and add_embedding (SDXL text_time) share the LDM label_emb slot.
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

# VAE mid-block attention: diffusers layer -> LDM AttnBlock layer (the LDM ones are 1x1 convs).
_VAE_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

# OpenCLIP text tower: diffusers (transformers CLIP) name -> OpenCLIP name, for non-layer tensors.
_OPENCLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split_module(rest: str) -> tuple[str, str]:
    """Split ``"a.b.weight"`` into ``("a.b", "weight")``."""
    module, _, param = rest.rpartition(".")
    return module, param


def _unet_resnet(rest: str) -> str:
    """Rename a resnet-relative key (``norm1.weight``) to its LDM ResBlock name."""
    module, param = _split_module(rest)
    if module not in _UNET_RESNET_NAMES:
        raise KeyError(rest)
    return f"{_UNET_RESNET_NAMES[module]}.{param}"


def _unet_key(key: str, layers_per_block: int, up_blocks_with_attn: set[int]) -> str:
    """Map one diffusers UNet2DConditionModel key to its LDM ``model.diffusion_model`` name."""
    stride = layers_per_block + 1  # LDM slots per down block (resnets + downsampler) / per up block (resnets)
    module, param = _split_module(key)
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = 1 + block * stride + layer
        return (
            f"input_blocks.{slot}.0.{_unet_resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{slot}.1.{rest}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * stride}.0.op.{m[2]}"

    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_unet_resnet(rest)}"
        return f"middle_block.{2 * layer + 1}.{rest}"

    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        slot = block * stride + layer
        return (
            f"output_blocks.{slot}.0.{_unet_resnet(rest)}"
            if kind == "resnets"
            else f"output_blocks.{slot}.1.{rest}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(m[1])
        # The upsampler follows the block's last resnet (and its attention, when the block has one).
        position = 2 if block in up_blocks_with_attn else 1
        return f"output_blocks.{block * stride + layers_per_block}.{position}.conv.{m[2]}"

    raise KeyError(key)


def unet_to_ldm(state_dict: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """Rename a diffusers UNet state dict to LDM/SGM names (``model.diffusion_model.*``)."""
    layers_per_block = config["layers_per_block"]
    if not isinstance(layers_per_block, int):
        # diffusers' converter indexes blocks with a single int; per-block counts cannot round-trip.
        raise ValueError(f"layers_per_block must be one int for the LDM layout, got {layers_per_block!r}")
    with_attn = {int(m[1]) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {UNET_PREFIX + _unet_key(k, layers_per_block, with_attn): v for k, v in state_dict.items()}
    if len(out) != len(state_dict):  # e.g. class_embedding and add_embedding both present
        raise ValueError("UNet has modules that share one LDM name (class_embedding and add_embedding?)")
    return out


def _vae_key(key: str, num_up_blocks: int) -> tuple[str, bool]:
    """Map one diffusers AutoencoderKL key to its LDM name; the flag marks weights LDM keeps as 1x1 convs."""
    key = key.replace("conv_shortcut.", "nin_shortcut.")
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
        return f"{m[1]}.norm_out.{m[2]}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", False
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        # LDM numbers decoder levels from the lowest resolution up; diffusers from the first block run.
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}", False
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", False
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(\w+)", key):
        name = _VAE_ATTN_NAMES.get(m[2])
        if name is None:
            raise KeyError(key)
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}", name != "norm" and m[3] == "weight"
    if re.fullmatch(
        r"(encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out"
        r"|quant_conv|post_quant_conv)\.\w+",
        key,
    ):
        return key, False
    raise KeyError(key)


def vae_to_ldm(state_dict: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """Rename a diffusers AutoencoderKL state dict to LDM names (``first_stage_model.*``)."""
    out = {}
    for key, value in state_dict.items():
        ldm_key, is_conv = _vae_key(key, len(config["up_block_types"]))
        out[VAE_PREFIX + ldm_key] = value[:, :, None, None] if is_conv and value.ndim == 2 else value
    return out


def clip_to_ldm(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Prefix a transformers CLIPTextModel state dict the way LDM/SGM stores it (``<prefix>text_model.*``)."""
    # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); originals always have it.
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state_dict.items()}


def openclip_to_ldm(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Convert a CLIPTextModelWithProjection state dict to OpenCLIP names, fusing q/k/v into ``in_proj``."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key in _OPENCLIP_FIXED:
            out[prefix + _OPENCLIP_FIXED[key]] = value
        elif key == "text_projection.weight":
            # nn.Linear stores (proj_dim, hidden); OpenCLIP computes x @ text_projection: (hidden, proj_dim).
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            layer, module, param = m[1], m[2], m[3]
            base = f"{prefix}transformer.resblocks.{layer}."
            if qm := re.fullmatch(r"self_attn\.([qkv])_proj", module):
                qkv.setdefault(f"{base}attn.in_proj_{param}", {})[qm[1]] = value
            elif module in _OPENCLIP_LAYER_NAMES:
                out[f"{base}{_OPENCLIP_LAYER_NAMES[module]}.{param}"] = value
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _component_class(model_index: dict, name: str) -> type:
    """Return the class that model_index.json names for a component."""
    library, class_name = model_index[name]
    module = {"diffusers": diffusers, "transformers": transformers}[library]
    return getattr(module, class_name)


def _load(pipeline_dir: Path, model_index: dict, name: str) -> Any:
    """Load one component (a diffusers or transformers model) from the pipeline folder, offline."""
    cls: Any = _component_class(model_index, name)
    return cls.from_pretrained(pipeline_dir, subfolder=name, local_files_only=True)


def _has(model_index: dict, name: str) -> bool:
    """Whether model_index.json lists a non-null component."""
    return isinstance(model_index.get(name), list) and model_index[name][0] is not None


def export_single_file(pipeline_dir: Path, out_file: Path) -> Path:
    """Write a diffusers SD1.5 or SDXL pipeline folder as one original-format (LDM/SGM) safetensors file.

    SD1.5 layout: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``.
    SDXL adds ``conditioner.embedders.0.transformer.*`` (CLIP-L) and ``conditioner.embedders.1.model.*``
    (OpenCLIP bigG). diffusers only detects a file as SDXL without ``config=`` if the second text encoder
    has at least 10 layers (it looks for ``resblocks.9``), and it tells the two SDXL text encoders apart by
    hidden size, so they must differ (768 vs 1280 in the real model).
    """
    pipeline_dir, out_file = Path(pipeline_dir), Path(out_file)
    model_index = json.loads((pipeline_dir / "model_index.json").read_text())
    if not _has(model_index, "unet") or not _has(model_index, "vae") or not _has(model_index, "text_encoder"):
        raise ValueError(f"{pipeline_dir} needs unet, vae and text_encoder components")

    unet = _load(pipeline_dir, model_index, "unet")
    vae = _load(pipeline_dir, model_index, "vae")
    text_encoder = _load(pipeline_dir, model_index, "text_encoder")
    tensors = unet_to_ldm(unet.state_dict(), dict(unet.config))
    tensors.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))

    if _has(model_index, "text_encoder_2"):
        text_encoder_2 = _load(pipeline_dir, model_index, "text_encoder_2")
        if text_encoder.config.hidden_size == text_encoder_2.config.hidden_size:
            raise ValueError(
                "SDXL text encoders need different hidden sizes: diffusers picks the CLIP-L tensors for "
                "text_encoder_2 when the position embedding widths match"
            )
        tensors.update(clip_to_ldm(text_encoder.state_dict(), SDXL_CLIP_PREFIX))
        tensors.update(openclip_to_ldm(text_encoder_2.state_dict(), SDXL_OPENCLIP_PREFIX))
    else:
        tensors.update(clip_to_ldm(text_encoder.state_dict(), SD15_CLIP_PREFIX))

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out_file), metadata={"format": "pt"})
    return out_file


# --------------------------------------------------------------------------------------------
# Transformer-only files: FLUX in BFL's layout, SD3 in Stability's (MMDiT) layout

# (diffusers key pattern, original key template, position in a fused tensor or None). A template names the
# regex groups it keeps; tensors sharing a fused name are concatenated by position (q, k, v[, mlp]).
_Rule = tuple[str, str, int | None]

_FLUX_RULES: list[_Rule] = [
    (r"time_text_embed\.timestep_embedder\.linear_1\.(\w+)", "time_in.in_layer.{0}", None),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(\w+)", "time_in.out_layer.{0}", None),
    (r"time_text_embed\.text_embedder\.linear_1\.(\w+)", "vector_in.in_layer.{0}", None),
    (r"time_text_embed\.text_embedder\.linear_2\.(\w+)", "vector_in.out_layer.{0}", None),
    (r"time_text_embed\.guidance_embedder\.linear_1\.(\w+)", "guidance_in.in_layer.{0}", None),
    (r"time_text_embed\.guidance_embedder\.linear_2\.(\w+)", "guidance_in.out_layer.{0}", None),
    (r"context_embedder\.(\w+)", "txt_in.{0}", None),
    (r"x_embedder\.(\w+)", "img_in.{0}", None),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(\w+)", "double_blocks.{0}.img_mod.lin.{1}", None),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(\w+)", "double_blocks.{0}.txt_mod.lin.{1}", None),
    (r"transformer_blocks\.(\d+)\.attn\.to_q\.(\w+)", "double_blocks.{0}.img_attn.qkv.{1}", 0),
    (r"transformer_blocks\.(\d+)\.attn\.to_k\.(\w+)", "double_blocks.{0}.img_attn.qkv.{1}", 1),
    (r"transformer_blocks\.(\d+)\.attn\.to_v\.(\w+)", "double_blocks.{0}.img_attn.qkv.{1}", 2),
    (r"transformer_blocks\.(\d+)\.attn\.add_q_proj\.(\w+)", "double_blocks.{0}.txt_attn.qkv.{1}", 0),
    (r"transformer_blocks\.(\d+)\.attn\.add_k_proj\.(\w+)", "double_blocks.{0}.txt_attn.qkv.{1}", 1),
    (r"transformer_blocks\.(\d+)\.attn\.add_v_proj\.(\w+)", "double_blocks.{0}.txt_attn.qkv.{1}", 2),
    (r"transformer_blocks\.(\d+)\.attn\.norm_q\.weight", "double_blocks.{0}.img_attn.norm.query_norm.scale", None),
    (r"transformer_blocks\.(\d+)\.attn\.norm_k\.weight", "double_blocks.{0}.img_attn.norm.key_norm.scale", None),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", "double_blocks.{0}.txt_attn.norm.query_norm.scale",
     None),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", "double_blocks.{0}.txt_attn.norm.key_norm.scale",
     None),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(\w+)", "double_blocks.{0}.img_mlp.0.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(\w+)", "double_blocks.{0}.img_mlp.2.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(\w+)", "double_blocks.{0}.txt_mlp.0.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(\w+)", "double_blocks.{0}.txt_mlp.2.{1}", None),
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.(\w+)", "double_blocks.{0}.img_attn.proj.{1}", None),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(\w+)", "double_blocks.{0}.txt_attn.proj.{1}", None),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear\.(\w+)", "single_blocks.{0}.modulation.lin.{1}", None),
    (r"single_transformer_blocks\.(\d+)\.attn\.to_q\.(\w+)", "single_blocks.{0}.linear1.{1}", 0),
    (r"single_transformer_blocks\.(\d+)\.attn\.to_k\.(\w+)", "single_blocks.{0}.linear1.{1}", 1),
    (r"single_transformer_blocks\.(\d+)\.attn\.to_v\.(\w+)", "single_blocks.{0}.linear1.{1}", 2),
    (r"single_transformer_blocks\.(\d+)\.proj_mlp\.(\w+)", "single_blocks.{0}.linear1.{1}", 3),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight", "single_blocks.{0}.norm.query_norm.scale", None),
    (r"single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight", "single_blocks.{0}.norm.key_norm.scale", None),
    (r"single_transformer_blocks\.(\d+)\.proj_out\.(\w+)", "single_blocks.{0}.linear2.{1}", None),
    (r"proj_out\.(\w+)", "final_layer.linear.{0}", None),
    (r"norm_out\.linear\.(\w+)", "final_layer.adaLN_modulation.1.{0}", None),
]

_SD3_RULES: list[_Rule] = [
    (r"pos_embed\.pos_embed", "pos_embed", None),
    (r"pos_embed\.proj\.(\w+)", "x_embedder.proj.{0}", None),
    (r"time_text_embed\.timestep_embedder\.linear_1\.(\w+)", "t_embedder.mlp.0.{0}", None),
    (r"time_text_embed\.timestep_embedder\.linear_2\.(\w+)", "t_embedder.mlp.2.{0}", None),
    (r"time_text_embed\.text_embedder\.linear_1\.(\w+)", "y_embedder.mlp.0.{0}", None),
    (r"time_text_embed\.text_embedder\.linear_2\.(\w+)", "y_embedder.mlp.2.{0}", None),
    (r"context_embedder\.(\w+)", "context_embedder.{0}", None),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.to_q\.(\w+)", "joint_blocks.{0}.x_block.attn{1}.qkv.{2}", 0),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.to_k\.(\w+)", "joint_blocks.{0}.x_block.attn{1}.qkv.{2}", 1),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.to_v\.(\w+)", "joint_blocks.{0}.x_block.attn{1}.qkv.{2}", 2),
    (r"transformer_blocks\.(\d+)\.attn\.add_q_proj\.(\w+)", "joint_blocks.{0}.context_block.attn.qkv.{1}", 0),
    (r"transformer_blocks\.(\d+)\.attn\.add_k_proj\.(\w+)", "joint_blocks.{0}.context_block.attn.qkv.{1}", 1),
    (r"transformer_blocks\.(\d+)\.attn\.add_v_proj\.(\w+)", "joint_blocks.{0}.context_block.attn.qkv.{1}", 2),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.norm_q\.weight", "joint_blocks.{0}.x_block.attn{1}.ln_q.weight", None),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.norm_k\.weight", "joint_blocks.{0}.x_block.attn{1}.ln_k.weight", None),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight", "joint_blocks.{0}.context_block.attn.ln_q.weight",
     None),
    (r"transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight", "joint_blocks.{0}.context_block.attn.ln_k.weight",
     None),
    (r"transformer_blocks\.(\d+)\.attn(2?)\.to_out\.0\.(\w+)", "joint_blocks.{0}.x_block.attn{1}.proj.{2}", None),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out\.(\w+)", "joint_blocks.{0}.context_block.attn.proj.{1}", None),
    (r"transformer_blocks\.(\d+)\.norm1\.linear\.(\w+)", "joint_blocks.{0}.x_block.adaLN_modulation.1.{1}", None),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear\.(\w+)",
     "joint_blocks.{0}.context_block.adaLN_modulation.1.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.(\w+)", "joint_blocks.{0}.x_block.mlp.fc1.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.(\w+)", "joint_blocks.{0}.x_block.mlp.fc2.{1}", None),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.(\w+)", "joint_blocks.{0}.context_block.mlp.fc1.{1}",
     None),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2\.(\w+)", "joint_blocks.{0}.context_block.mlp.fc2.{1}", None),
    (r"proj_out\.(\w+)", "final_layer.linear.{0}", None),
    (r"norm_out\.linear\.(\w+)", "final_layer.adaLN_modulation.1.{0}", None),
]


def _swap_halves(tensor: Tensor) -> Tensor:
    """diffusers' AdaLayerNormContinuous splits (scale, shift); the original layouts store (shift, scale)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _apply_rules(state_dict: dict[str, Tensor], rules: list[_Rule], swapped: set[str]) -> dict[str, Tensor]:
    """Rename by ``rules`` (first full match wins), fuse tensors sharing a name in rule order, and swap the halves of
    the original keys in ``swapped`` (the adaptive norms diffusers reorders)."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[int, Tensor]] = {}
    for key, value in state_dict.items():
        for pattern, template, part in rules:
            if m := re.fullmatch(pattern, key):
                name = template.format(*m.groups())
                if part is None:
                    out[name] = value
                else:
                    fused.setdefault(name, {})[part] = value
                break
        else:
            raise KeyError(key)
    for name, parts in fused.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return {k: _swap_halves(v) if k in swapped else v for k, v in out.items()}


def flux_transformer_to_bfl(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers ``FluxTransformer2DModel`` state dict to Black Forest Labs' layout (``flux1-dev``): fused
    ``img_attn.qkv`` / ``txt_attn.qkv`` in ``double_blocks.N``, fused q/k/v/mlp ``linear1`` in ``single_blocks.N``;
    the inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``."""
    return _apply_rules(state_dict, _FLUX_RULES, {"final_layer.adaLN_modulation.1.weight",
                                                  "final_layer.adaLN_modulation.1.bias"})


def sd3_transformer_to_sai(state_dict: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Rename a diffusers ``SD3Transformer2DModel`` state dict to Stability's MMDiT layout (``joint_blocks.N``
    ``x_block`` / ``context_block``, fused qkv) under ``model.diffusion_model.``; the inverse of diffusers'
    ``convert_sd3_transformer_checkpoint_to_diffusers`` (which also reorders the last block's context norm)."""
    last = f"joint_blocks.{num_layers - 1}.context_block.adaLN_modulation.1."
    swapped = {f"{last}weight", f"{last}bias", "final_layer.adaLN_modulation.1.weight",
               "final_layer.adaLN_modulation.1.bias"}
    return {UNET_PREFIX + k: v for k, v in _apply_rules(state_dict, _SD3_RULES, swapped).items()}


def export_transformer_single_file(pipeline_dir: Path, out_file: Path) -> Path:
    """Write the transformer of a diffusers SD3 or FLUX pipeline folder as one original-format safetensors file
    holding only the denoiser (as BFL publish ``flux1-dev.safetensors``); loading it needs the folder as config."""
    pipeline_dir, out_file = Path(pipeline_dir), Path(out_file)
    model_index = json.loads((pipeline_dir / "model_index.json").read_text())
    transformer = _load(pipeline_dir, model_index, "transformer")
    state = transformer.state_dict()
    name = type(transformer).__name__
    if name == "FluxTransformer2DModel":
        tensors = flux_transformer_to_bfl(state)
    elif name == "SD3Transformer2DModel":
        tensors = sd3_transformer_to_sai(state, transformer.config.num_layers)
    else:
        raise ValueError(f"{pipeline_dir}: no original layout known for {name}")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out_file), metadata={"format": "pt"})
    return out_file
