"""The Hugging Face CLIP <-> open_clip name map: one table, `HF_TOWER_MAP`, read both ways.

On load, `from_hf_names` turns ``CLIPVisionModel``, ``CLIPVisionModelWithProjection`` and
``CLIPModel`` state dicts (``vision_model.``-prefixed, or the bare layout transformers 5 writes
for ``CLIPVisionModel``) into open_clip names; on export, `to_hf_names` goes back
(``save_state_dict(..., hf_names=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from ..errors import CheckpointError
from .formats import DROPPED_SUFFIXES

# Each tower entry: (HF root, open_clip root, rows). A row is (HF name, open_clip name, how):
#   "copy"       same tensor;
#   "transpose"  HF nn.Linear weight (out, in) vs open_clip matrix used as x @ proj (in, out);
#   "qkv"        HF q_proj/k_proj/v_proj, concatenated in that order along dim 0 = in_proj.
# Placeholders: {i} block index, {wb} weight|bias, {qkv} q|k|v.

_BLOCK_ROWS = (
    ("encoder.layers.{i}.self_attn.{qkv}_proj.{wb}", "transformer.resblocks.{i}.attn.in_proj_{wb}", "qkv"),
    ("encoder.layers.{i}.self_attn.out_proj.{wb}", "transformer.resblocks.{i}.attn.out_proj.{wb}", "copy"),
    ("encoder.layers.{i}.layer_norm1.{wb}", "transformer.resblocks.{i}.ln_1.{wb}", "copy"),
    ("encoder.layers.{i}.layer_norm2.{wb}", "transformer.resblocks.{i}.ln_2.{wb}", "copy"),
    ("encoder.layers.{i}.mlp.fc1.{wb}", "transformer.resblocks.{i}.mlp.c_fc.{wb}", "copy"),
    ("encoder.layers.{i}.mlp.fc2.{wb}", "transformer.resblocks.{i}.mlp.c_proj.{wb}", "copy"),
)

HF_TOWER_MAP = {
    "vision": (
        "vision_model.",
        "visual.",
        (
            ("embeddings.class_embedding", "class_embedding", "copy"),
            ("embeddings.patch_embedding.weight", "conv1.weight", "copy"),
            ("embeddings.position_embedding.weight", "positional_embedding", "copy"),
            ("pre_layrnorm.{wb}", "ln_pre.{wb}", "copy"),
            *_BLOCK_ROWS,
            ("post_layernorm.{wb}", "ln_post.{wb}", "copy"),
        ),
    ),
    "text": (
        "text_model.",
        "",
        (
            ("embeddings.token_embedding.weight", "token_embedding.weight", "copy"),
            ("embeddings.position_embedding.weight", "positional_embedding", "copy"),
            *_BLOCK_ROWS,
            ("final_layer_norm.{wb}", "ln_final.{wb}", "copy"),
        ),
    ),
    # Top-level parameters of CLIPModel / *WithProjection (no tower root).
    "heads": (
        "",
        "",
        (
            ("visual_projection.weight", "visual.proj", "transpose"),
            ("text_projection.weight", "text_projection", "transpose"),
            ("logit_scale", "logit_scale", "copy"),
        ),
    ),
}

_PLACEHOLDERS = {"{i}": r"(?P<i>\d+)", "{wb}": r"(?P<wb>weight|bias)", "{qkv}": r"(?P<qkv>q|k|v)"}


def _template_regex(template: str) -> re.Pattern:
    rx = re.escape(template)
    for ph, group in _PLACEHOLDERS.items():
        rx = rx.replace(re.escape(ph), group)
    return re.compile(rx + "$")


class _Row(NamedTuple):
    hf: str  # full HF template, tower root included
    oc: str  # full open_clip template
    how: str
    hf_rx: re.Pattern
    oc_rx: re.Pattern


def _compile_rows() -> list[_Row]:
    rows = []
    for hf_root, oc_root, table in HF_TOWER_MAP.values():
        for hf, oc, how in table:
            rows.append(
                _Row(hf_root + hf, oc_root + oc, how, _template_regex(hf_root + hf), _template_regex(oc_root + oc))
            )
    return rows


_ROWS = _compile_rows()
# Bare HF layout (transformers 5 CLIPVisionModel, CLIPTextModel): tower keys without a root.
_HF_BARE_STARTS = ("embeddings.", "encoder.layers.", "pre_layrnorm.", "post_layernorm.", "final_layer_norm.")


def _fill(template: str, groups: Mapping[str, str]) -> str:
    out = template
    for name, value in groups.items():
        if value is not None:
            out = out.replace("{" + name + "}", value)
    return out


def is_hf_layout(keys) -> bool:
    return any(
        k.startswith(("vision_model.", "text_model.", *_HF_BARE_STARTS))
        or k in ("visual_projection.weight", "text_projection.weight")
        for k in keys
    )


def from_hf_names(sd: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Translate a HF CLIP state dict (vision, text or full) into open_clip names.

    q/k/v projections are concatenated (q, k, v along dim 0) into ``attn.in_proj_*``;
    ``visual_projection.weight`` (embed, width) becomes ``visual.proj`` (width, embed).
    Works on meta tensors too, so checkpoint_info can map shapes without reading data.
    """
    keys = [k for k in sd if not k.endswith(DROPPED_SUFFIXES)]
    if keys and not any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        # Bare layout: a single tower without its root; it is the text tower only if it has token embeddings.
        root = "text_model." if "embeddings.token_embedding.weight" in sd else "vision_model."
        sd = {
            (k if k in ("visual_projection.weight", "text_projection.weight", "logit_scale") else root + k): sd[k]
            for k in keys
        }
        keys = list(sd)
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k in keys:
        for row in _ROWS:
            m = row.hf_rx.match(k)
            if not m:
                continue
            how, target = row.how, _fill(row.oc, m.groupdict())
            t = sd[k]
            if how == "copy":
                out[target] = t
            elif how == "transpose":
                out[target] = t.t()
            else:  # qkv: collect, concatenate once all three are present
                if target not in qkv_parts:
                    out[target] = None  # reserve the position so key order follows the file
                    qkv_parts[target] = {}
                qkv_parts[target][m.group("qkv")] = t
            break
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(
            f"{source}: looks like a Hugging Face CLIP checkpoint, but {len(unknown)} key(s) have no open_clip "
            f"equivalent, e.g. {unknown[:3]}. Only CLIP ViT vision/text towers are supported."
        )
    for target, parts in qkv_parts.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: {target} needs q, k and v projections, but {missing} are missing")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf_names(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of from_hf_names: open_clip names -> HF CLIP names (``vision_model.``/``text_model.`` roots).

    A visual-only state dict becomes a ``CLIPVisionModelWithProjection`` state dict
    (``visual_projection.weight`` when ``visual.proj`` is present).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, t in sd.items():
        if k == "attn_mask" or k.endswith(".attn_mask"):
            continue  # causal-mask buffer of the text tower; HF builds it on the fly
        for row in _ROWS:
            m = row.oc_rx.match(k)
            if not m:
                continue
            how, hf_full, groups = row.how, row.hf, m.groupdict()
            if how == "copy":
                out[_fill(hf_full, groups)] = t
            elif how == "transpose":
                out[_fill(hf_full, groups)] = t.t()
            else:
                for name, part in zip("qkv", t.chunk(3, dim=0)):
                    out[_fill(hf_full, {**groups, "qkv": name})] = part
            break
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"cannot export to Hugging Face CLIP names: no HF equivalent for {unknown[:5]}")
    return out
