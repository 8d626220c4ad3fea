"""The PEFT modules of NTK-CL and the frozen backbone that consults them.

An adapter parallel to each block's MLP (the "channel" path), optional LoRA on the attention's
query and value projections, and a per-block prompt generator (the "patch" path), fused per
section. CPU-scale choices, and where this differs from the official code (Programmergg/NTK-CL),
each deliberate:

- The adapter reads the MLP's input (after ln_2) and is added to its output:
  mlp(x) + 0.1 * up(relu(down(x))), `up` zero-initialised, so at initialisation the model IS the
  backbone, bit for bit. No dropout in the adapter.
- The prompt generator's token mixer starts random (the official one starts at zero, which with
  its zero LayerNorm never receives a gradient and leaves constant prompts); its LayerNorm starts
  at zero, so prompts start as zero tokens.
- The official AttentionFusion attends over a single token, so its softmax is 1 and it reduces to
  c + 0.1 p + 0.5 V(c); that is what `Fusion` computes (one V shared by the sections; no dropout).
- Optional LoRA (rank `lora_rank`, off by default), merged into the frozen in_proj weight on the
  fly (zero `B`, so exact at init).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ContinualConfig


class Adapter(nn.Module):
    """Bottleneck adapter parallel to an MLP: scale * up(relu(down(x))); `up` starts at zero."""

    def __init__(self, width: int, bottleneck: int, scale: float = 0.1):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)  # torch's default init: kaiming-uniform(a=sqrt(5)), as official
        self.up = nn.Linear(bottleneck, width)
        with torch.no_grad():
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x))) * self.scale


class LoRA(nn.Module):
    """Low-rank update of an attention block's query and value projections (`B` starts at zero)."""

    def __init__(self, width: int, rank: int, alpha: float = 1.0):
        super().__init__()
        self.scale = alpha / rank
        self.a_q = nn.Parameter(torch.empty(rank, width))
        self.a_v = nn.Parameter(torch.empty(rank, width))
        self.b_q = nn.Parameter(torch.zeros(width, rank))
        self.b_v = nn.Parameter(torch.zeros(width, rank))
        nn.init.kaiming_uniform_(self.a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.a_v, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """(3W, W) update of the packed in_proj weight [q; k; v] (k untouched)."""
        z = torch.zeros(self.b_q.shape[0], self.a_q.shape[1], dtype=self.a_q.dtype)
        return torch.cat([self.b_q @ self.a_q, z, self.b_v @ self.a_v]) * self.scale


class PatchPrompt(nn.Module):
    """Per-block prompt generator: `n_prompts` tokens mixed from the block's tokens, LayerNorm'd
    (the norm starts at zero, so the prompts start as zero tokens)."""

    def __init__(self, n_tokens: int, n_prompts: int, width: int):
        super().__init__()
        self.mix = nn.Linear(n_tokens, n_prompts)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        with torch.no_grad():
            self.norm.weight.zero_()
            self.norm.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, W) -> (B, P, W)
        return self.norm(self.mix(x.transpose(1, 2)).transpose(1, 2))


class Fusion(nn.Module):
    """Fuses the channel and patch features of each section: c + 0.1 p + 0.5 V(c)
    (the official single-token AttentionFusion, whose softmax is identically 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.value = nn.Linear(dim, dim)

    def forward(self, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return c + 0.1 * p + 0.5 * self.value(c)


class PEFTSet(nn.Module):
    """One copy of the per-block PEFT modules: adapters (+ LoRA) for the channel path,
    prompt generators for the patch path (with expansion)."""

    def __init__(self, width: int, n_blocks: int, n_tokens: int, cfg: ContinualConfig):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(width, cfg.bottleneck, cfg.adapter_scale) for _ in range(n_blocks))
        self.lora = (
            nn.ModuleList(LoRA(width, cfg.lora_rank, cfg.lora_alpha) for _ in range(n_blocks))
            if cfg.lora_rank
            else None
        )
        self.prompts = (
            nn.ModuleList(PatchPrompt(n_tokens, cfg.n_prompts, width) for _ in range(n_blocks))
            if cfg.expansion
            else None
        )


def visual_tower(source) -> nn.Module:
    """The open_clip visual tower of a ModelSet (its base), a CLIP model or the tower itself."""
    if hasattr(source, "transformer") and hasattr(source, "conv1"):
        return source
    if hasattr(source, "visual"):
        return source.visual
    if hasattr(source, "base") and hasattr(source, "fingerprint"):
        from core.models import build_model

        return build_model(source.base()).visual
    raise TypeError(f"expected a ModelSet, an open_clip CLIP or its visual tower, got {type(source).__name__}")


class PEFTBackbone(nn.Module):
    """A frozen open_clip VisionTransformer whose blocks consult the *active* PEFT modules.

    Forward hooks add the active adapter to each block's MLP output; a pre-hook on each
    block inserts/refreshes prompt tokens after the class token; LoRA (when active) runs the
    attention with in_proj + delta. Nothing is active outside `encode`, so `self.visual(x)`
    is the untouched backbone. The backbone's parameters never require grad.
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError(
                "PEFTBackbone needs an open_clip VisionTransformer with batch_first blocks (open_clip >= 2.24)"
            )
        self.visual = visual.eval().requires_grad_(False)
        self._active: dict = {}  # a plain dict: modules put here are not registered as children
        blocks = visual.transformer.resblocks
        self.n_blocks = len(blocks)
        self.width = visual.conv1.out_channels
        self.n_tokens = int(visual.positional_embedding.shape[0])
        self.out_dim = int(visual.output_dim)
        for i, blk in enumerate(blocks):
            blk.mlp.register_forward_hook(functools.partial(self._mlp_hook, i))
            blk.register_forward_pre_hook(functools.partial(self._prompt_hook, i), with_kwargs=True)
            blk.attention = functools.partial(self._attention, i, blk, blk.attention)

    def train(self, mode: bool = True):  # the backbone stays in eval mode
        return self

    def encode(self, x: torch.Tensor, peft: PEFTSet | None, path: str = "channel") -> torch.Tensor:
        """Image features (B, out_dim) with `peft`'s modules of `path` ("channel" or "patch") active."""
        if peft is None:
            active = {}
        elif path == "channel":
            active = {"adapters": peft.adapters, "lora": peft.lora}
        elif path == "patch":
            active = {"prompts": peft.prompts}
        else:
            raise ValueError(f"unknown path {path!r} (channel or patch)")
        self._active = active
        try:
            return self.visual(x)
        finally:
            self._active = {}

    # -- hooks
    def _mlp_hook(self, i, module, inputs, output):
        adapters = self._active.get("adapters")
        return None if adapters is None else output + adapters[i](inputs[0])

    def _prompt_hook(self, i, block, args, kwargs):
        prompts = self._active.get("prompts")
        if prompts is None:
            return None
        x = args[0]
        p = prompts[i].mix.out_features
        residual = None
        if x.shape[1] == self.n_tokens + p:  # prompts of the previous block: take them out
            residual = x[:, 1 : 1 + p]
            x = torch.cat([x[:, :1], x[:, 1 + p :]], dim=1)
        new = prompts[i](x)
        if residual is not None:
            new = new + 0.1 * residual
        return (torch.cat([x[:, :1], new, x[:, 1:]], dim=1), *args[1:]), kwargs

    def _attention(self, i, block, original, q_x, k_x=None, v_x=None, attn_mask=None):
        lora = self._active.get("lora")
        if lora is None:
            return original(q_x=q_x, k_x=k_x, v_x=v_x, attn_mask=attn_mask)
        mha = block.attn
        x = q_x.transpose(0, 1)
        out, _ = F.multi_head_attention_forward(
            x,
            x,
            x,
            mha.embed_dim,
            mha.num_heads,
            in_proj_weight=mha.in_proj_weight + lora[i].delta(),
            in_proj_bias=mha.in_proj_bias,
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=mha.out_proj.weight,
            out_proj_bias=mha.out_proj.bias,
            training=False,
            need_weights=False,
            attn_mask=attn_mask,
        )
        return out.transpose(0, 1)
