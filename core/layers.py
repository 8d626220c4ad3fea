"""The one layer map: parameter name -> residual-block index.

Every module that needs "which block does this parameter live in" calls
`layer_index`; nothing else parses parameter names for depth.

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
    "hf_clip": r"(?:^|\.)encoder\.layers\.(\d+)\.",  # vision_model.encoder.layers.{i}.
    "timm": r"(?:^|\.)blocks\.(\d+)\.",  # blocks.{i}.
    "gpt2": r"(?:^|\.)h\.(\d+)\.",  # transformer.h.{i}.
    "llama": r"(?:^|\.)layers\.(\d+)\.",  # model.layers.{i}.
    "t5": r"(?:^|\.)block\.(\d+)\.",  # encoder.block.{i}. (before "bert": T5 blocks hold layer.{j}.)
    "bert": r"(?:^|\.)layer\.(\d+)\.",  # BERT/RoBERTa/HF ViT: encoder.layer.{i}.
}
_COMPILED = [(arch, re.compile(p)) for arch, p in BLOCK_PATTERNS.items()]

# Parameters that sit at the output end of a tower (after the last block).
# Official LiNeS gives them alpha like every non-block parameter; the option
# ``output_as_last_block`` in core.lines treats them as block L-1 instead.
OUTPUT_PATTERNS = (
    r"(?:^|\.)ln_post\.",
    r"(?:^|\.)proj$",
    r"post_layernorm\.",
    r"(?:^|\.)norm\.",
    r"final_layer_norm\.",
)
_OUTPUT = [re.compile(p) for p in OUTPUT_PATTERNS]


def block_match(name: str) -> tuple[str, int] | None:
    """(architecture, block index) for a parameter inside a residual block, else None."""
    for arch, rx in _COMPILED:
        m = rx.search(name)
        if m:
            return arch, int(m.group(1))
    return None


def layer_index(name: str, num_blocks: int | None = None) -> int | None:
    """Block index 0..L-1 of parameter `name`, or None outside the blocks.

    With `num_blocks` given, an index outside 0..num_blocks-1 raises, which
    catches a wrong architecture early instead of scaling the wrong layer.
    """
    hit = block_match(name)
    if hit is None:
        return None
    idx = hit[1]
    if num_blocks is not None and not 0 <= idx < num_blocks:
        raise ValueError(f"parameter {name!r} is in block {idx}, but the model has {num_blocks} blocks")
    return idx


def is_output_param(name: str) -> bool:
    """True for output-side parameters outside the blocks (ln_post, proj, final norms)."""
    return layer_index(name) is None and any(rx.search(name) for rx in _OUTPUT)


def num_blocks(names: Iterable[str] | Mapping[str, object], prefix: str | None = None) -> int:
    """Number of residual blocks: 1 + the largest block index among `names`.

    `prefix` restricts the count to one tower (e.g. "visual." so the text
    tower's blocks of a full CLIP state dict are not counted).
    """
    keys = names.keys() if isinstance(names, Mapping) else names
    best = -1
    for k in keys:
        if prefix is not None and not k.startswith(prefix):
            continue
        i = layer_index(k)
        if i is not None:
            best = max(best, i)
    return best + 1


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
