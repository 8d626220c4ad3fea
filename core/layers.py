"""The one layer map: parameter name -> (tower, residual-block index).

Every module that needs "which block does this parameter live in" calls this
module; nothing else parses parameter names for depth.

Depth is counted per *tower*. A full CLIP checkpoint holds two stacks of blocks:
the image tower (open_clip ``visual.transformer.resblocks.{i}.``, HF
``vision_model.encoder.layers.{i}.``) and the text tower (open_clip
``transformer.resblocks.{i}.`` with no root, HF ``text_model.encoder.layers.{i}.``).
`layer_index` gives the depth of a parameter inside its own tower and
`tower_of` says which tower that is, so block 3 of the text tower is never
pooled with block 3 of the image tower. Parameters of neither tower
(``logit_scale``, ``logit_bias``) belong to no tower. A model with a single,
unnamed stack (timm ViT, GPT-2, BERT, ...) has no tower names; it is treated as
its "visual" (default) tower, so per-tower code works on it unchanged.

Block containers are matched by their own pattern (``resblocks.{i}.``,
``encoder.layers.{i}.``, ...). A bare ``.{i}.`` match would mis-assign other
numbered keys (e.g. ``attn.heads.3.``), which is the mistake the LiNeS
reference avoids by naming the container explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# Architecture -> regex with one group capturing the block index. Order matters:
# the first pattern that matches wins, so more specific containers come first.
BLOCK_PATTERNS: dict[str, str] = {
    "open_clip": r"(?:^|\.)resblocks\.(\d+)\.",  # visual.transformer.resblocks.{i}. / transformer.resblocks.{i}.
    "hf_clip": r"(?:^|\.)encoder\.layers\.(\d+)\.",  # vision_model.encoder.layers.{i}. / text_model.encoder.layers.{i}.
    "timm": r"(?:^|\.)blocks\.(\d+)\.",  # blocks.{i}.
    "gpt2": r"(?:^|\.)h\.(\d+)\.",  # transformer.h.{i}.
    "llama": r"(?:^|\.)layers\.(\d+)\.",  # model.layers.{i}.
    "t5": r"(?:^|\.)block\.(\d+)\.",  # encoder.block.{i}. (before "bert": T5 blocks hold layer.{j}.)
    "bert": r"(?:^|\.)layer\.(\d+)\.",  # BERT/RoBERTa/HF ViT: encoder.layer.{i}.
}
_COMPILED = [(arch, re.compile(p)) for arch, p in BLOCK_PATTERNS.items()]

# The towers, in display order (the first is the default everywhere).
TOWERS = ("visual", "text")
TOWER_LABELS = {"visual": "image tower", "text": "text tower"}
# Tower -> name patterns (open_clip names as core.checkpoints loads them, and raw HF CLIP names).
TOWER_PATTERNS: dict[str, tuple[str, ...]] = {
    "visual": (
        r"^visual\.",  # open_clip image tower (blocks, conv1, embeddings, ln_pre/ln_post, proj)
        r"^vision_model\.",  # HF CLIPModel / CLIPVisionModel
        r"^visual_projection\.",  # HF image projection (open_clip: visual.proj)
    ),
    "text": (
        r"^transformer\.resblocks\.\d+\.",  # open_clip text blocks (no root)
        r"^token_embedding\.",
        r"^positional_embedding$",  # the text tower's (the image tower's is visual.positional_embedding)
        r"^ln_final\.",
        r"^text_projection(?:\.|$)",  # open_clip text_projection / HF text_projection.weight
        r"^text_model\.",  # HF CLIPModel / CLIPTextModel
    ),
}
_TOWER_RX = [(t, re.compile("|".join(ps))) for t, ps in TOWER_PATTERNS.items()]

# Parameters that sit at the output end of a tower (after the last block).
# Official LiNeS gives them alpha like every non-block parameter; the option
# ``output_as_last_block`` in core.lines treats them as block L-1 of their tower instead.
OUTPUT_PATTERNS = (
    r"(?:^|\.)ln_post\.",
    r"(?:^|\.)proj$",
    r"post_layernorm\.",
    r"(?:^|\.)norm\.",
    r"final_layer_norm\.",
    r"^ln_final\.",  # open_clip text tower
    r"^text_projection(?:\.weight)?$",  # open_clip / HF text projection
    r"^visual_projection\.weight$",  # HF image projection
)
_OUTPUT = [re.compile(p) for p in OUTPUT_PATTERNS]


def block_match(name: str) -> tuple[str, int] | None:
    """(architecture, block index) for a parameter inside a residual block, else None."""
    for arch, rx in _COMPILED:
        m = rx.search(name)
        if m:
            return arch, int(m.group(1))
    return None


def block_parts(name: str) -> tuple[str, int, str] | None:
    """(container, block index, rest) of a block parameter, else None.

    'visual.transformer.resblocks.3.attn.in_proj_weight' -> ('visual.transformer.resblocks.', 3, 'attn.in_proj_weight').
    """
    for _, rx in _COMPILED:
        m = rx.search(name)
        if m:
            return name[: m.start(1)], int(m.group(1)), name[m.end() :]
    return None


def tower_of(name: str) -> str | None:
    """ "visual", "text", or None for a parameter of neither tower (logit_scale) or of an unnamed stack."""
    for tower, rx in _TOWER_RX:
        if rx.search(name):
            return tower
    return None


def layer_index(name: str, num_blocks: int | None = None) -> int | None:
    """Block index 0..L-1 of parameter `name` inside its own tower (`tower_of`), or None outside the blocks.

    With `num_blocks` given (the depth of the parameter's tower), an index outside
    0..num_blocks-1 raises, which catches a wrong architecture early instead of
    scaling the wrong layer.
    """
    hit = block_match(name)
    if hit is None:
        return None
    idx = hit[1]
    if num_blocks is not None and not 0 <= idx < num_blocks:
        raise ValueError(f"parameter {name!r} is in block {idx}, but the model has {num_blocks} blocks")
    return idx


def is_output_param(name: str) -> bool:
    """True for output-side parameters outside the blocks (ln_post, proj, ln_final, text_projection, final norms)."""
    return layer_index(name) is None and any(rx.search(name) for rx in _OUTPUT)


def _keys(names: Iterable[str] | Mapping[str, object]) -> list[str]:
    return list(names.keys() if isinstance(names, Mapping) else names)


def _check_tower(tower: str) -> None:
    if tower not in TOWERS:
        raise ValueError(f"tower must be one of {list(TOWERS)}, got {tower!r}")


def towers(names: Iterable[str] | Mapping[str, object]) -> tuple[str, ...]:
    """The towers the names belong to, in TOWERS order; () for a model without tower names."""
    found = {tower_of(k) for k in _keys(names)}
    return tuple(t for t in TOWERS if t in found)


def in_tower(names: Iterable[str] | Mapping[str, object], tower: str) -> list[str]:
    """The names of `tower`, in their order; [] when the model has no such tower.

    A model without tower names is one stack: all its names are the "visual" (default) tower.
    Names of no tower (logit_scale, a head) go with the tower of a one-tower model, and with
    neither tower of a two-tower model.
    """
    _check_tower(tower)
    keys = _keys(names)
    tags = [tower_of(k) for k in keys]
    have = set(tags) - {None}
    if have <= {tower} and (have or tower == TOWERS[0]):
        return keys
    return [k for k, t in zip(keys, tags) if t == tower]


def default_tower(names: Iterable[str] | Mapping[str, object]) -> str:
    """The tower analyses show unless told otherwise: "visual", or the only tower a model has (a text tower)."""
    have = towers(names)
    return have[0] if have and TOWERS[0] not in have else TOWERS[0]


def select_tower(names: Iterable[str] | Mapping[str, object], tower: str | None = None) -> list[str]:
    """Like `in_tower`, but a tower the model does not have raises ValueError naming the towers it has.

    tower=None selects `default_tower(names)`.
    """
    keys = _keys(names)
    if tower is None:
        tower = default_tower(keys)
    out = in_tower(keys, tower)
    if keys and not out:
        have = towers(keys) or ("visual",)
        raise ValueError(f"the model has no {tower} tower (its towers: {', '.join(have)})")
    return out


def num_blocks(
    names: Iterable[str] | Mapping[str, object], prefix: str | None = None, *, tower: str | None = None
) -> int:
    """Number of residual blocks: 1 + the largest block index among `names`.

    `tower` ("visual" or "text") counts one tower's depth (0 when the model has no such tower);
    `prefix` restricts the count to names starting with it (e.g. "visual."). Without
    either, every name counts (for a two-tower dict: the deeper tower's depth).
    """
    keys = _keys(names)
    if tower is not None:
        keys = in_tower(keys, tower)
    best = -1
    for k in keys:
        if prefix is not None and not k.startswith(prefix):
            continue
        i = layer_index(k)
        if i is not None:
            best = max(best, i)
    return best + 1


def tower_depths(names: Iterable[str] | Mapping[str, object]) -> dict[str, int]:
    """{tower: number of blocks} for every tower with blocks (an unnamed stack counts as "visual")."""
    keys = _keys(names)
    out = {t: num_blocks(keys, tower=t) for t in TOWERS}
    return {t: n for t, n in out.items() if n > 0}


def param_kind(name: str) -> str:
    """Coarse parameter type for per-type views: attention, mlp, norm, embedding or other."""
    n = name.lower()
    if any(s in n for s in ("attn", "attention", "self_attn", "q_proj", "k_proj", "v_proj", "in_proj", "out_proj")):
        return "attention"
    if any(s in n for s in ("mlp", "c_fc", "c_proj", "fc1", "fc2", "ffn", "feed_forward")):
        return "mlp"
    if any(s in n for s in ("ln_", "norm", "layernorm", "layer_norm")):
        return "norm"
    if any(s in n for s in ("embed", "conv1", "class_embedding", "positional", "patch")):
        return "embedding"
    return "other"
