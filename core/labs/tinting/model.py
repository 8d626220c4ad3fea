"""The trainable model of Model Tinting and layer-wise AdaMerging, and the losses they train with.

`TintedMerge` holds the layer-wise merging coefficients λ(j, t) (one per visual parameter tensor j
and task t, clamped to [0, 1] in the forward pass) and, for Tinting, one *tinted* layer per task:

    θ_j = θ0_j + Σ_t clamp(λ(j, t), 0, 1) τ_t,j

With ``layer=None`` there is no tinted layer: λ is all that trains and every task uses its frozen
zero-shot head - layer-wise AdaMerging. Losses: `pseudo_label_loss` (Tinting: cross-entropy against
the expert's hard labels with the confidence filter `keep_mask`) and `entropy_loss` (AdaMerging:
Shannon entropy of the merged model's predictions). Method notes: docs/methods/tinting.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ...layers import is_output_param, layer_index, num_blocks, param_kind

HEAD = "head"


# --------------------------------------------------------------------------- layers that can be tinted
def layer_group(key: str) -> str:
    """The layer a parameter belongs to: `<block container>.<i>.<module>` inside a block
    (e.g. visual.transformer.resblocks.7.mlp), the module path outside (visual.ln_post, visual.proj).
    The block container is found with `core.layers.layer_index` (the one layer map)."""
    idx = layer_index(key)
    parts = key.split(".")
    if idx is not None:
        for p in range(len(parts) - 1):
            if parts[p] == str(idx) and layer_index(".".join(parts[: p + 1]) + ".") == idx:
                return ".".join(parts[: p + 2]) if p + 1 < len(parts) - 1 else ".".join(parts[: p + 1])
    return key.rsplit(".", 1)[0] if key.endswith((".weight", ".bias")) else key


def tint_layer_choices(keys: Sequence[str]) -> list[str]:
    """Layers that can be tinted: "head", then the encoder's layers from the output end
    (proj, ln_post, each block's attn / mlp / norms from the last block down, then the stem)."""
    groups: dict[str, str] = {}
    for k in keys:
        if k.startswith("visual."):
            groups.setdefault(layer_group(k), k)

    def order(item: tuple[str, str]):
        g, key = item
        i = layer_index(key)
        if i is not None:
            return (1, -i, g)
        return (0 if is_output_param(key) else 2, 0, g)

    return [HEAD] + [g for g, _ in sorted(groups.items(), key=order)]


def layer_keys(layer: str, keys: Sequence[str]) -> list[str]:
    """The parameter keys forming `layer` ([] for "head"). Aliases: "last_mlp", "last_attn"
    (the last visual block's MLP / attention), "ln_post", "proj"; otherwise a layer name
    from `tint_layer_choices` or any parameter-name prefix."""
    if layer == HEAD:
        return []
    prefix = layer
    if layer in ("last_mlp", "last_attn"):
        last = num_blocks(keys, prefix="visual.") - 1
        kind = "mlp" if layer == "last_mlp" else "attention"
        groups = dict.fromkeys(layer_group(k) for k in keys if k.startswith("visual."))
        hits = [g for g in groups if layer_index(g + ".") == last and param_kind(g.rsplit(".", 1)[-1]) == kind]
        prefix = hits[0] if hits else layer
    elif layer in ("ln_post", "proj"):
        prefix = f"visual.{layer}"
    prefix = prefix.rstrip(".")
    hit = [k for k in keys if k == prefix or k.startswith(prefix + ".")]
    if not hit:
        raise ValueError(f"no encoder parameters in layer {layer!r}; choose one of {tint_layer_choices(keys)[:8]} ...")
    return hit


# --------------------------------------------------------------------------- losses
def expert_targets(expert_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hard pseudo-label, confidence = max softmax) of the expert's logits."""
    conf, label = expert_logits.float().softmax(-1).max(-1)
    return label, conf


def keep_mask(expert_label: torch.Tensor, expert_conf: torch.Tensor, merged_logits: torch.Tensor) -> torch.Tensor:
    """The confidence filter: keep where the merged model agrees with the expert, or disagrees
    while the expert is at least as confident (max softmax); drop where they disagree and the
    merged model is more confident."""
    conf, pred = merged_logits.detach().float().softmax(-1).max(-1)
    return (pred == expert_label) | (expert_conf >= conf)


def confidence_filter(expert_logits: torch.Tensor, merged_logits: torch.Tensor) -> torch.Tensor:
    """`keep_mask` from raw logits of the expert and of the merged model (both (B, C))."""
    label, conf = expert_targets(expert_logits)
    return keep_mask(label, conf, merged_logits)


def pseudo_label_loss(
    logits: torch.Tensor, expert_label: torch.Tensor, expert_conf: torch.Tensor, use_filter: bool = True
) -> tuple[torch.Tensor, dict]:
    """Cross-entropy against the expert's hard labels over the kept samples.

    Returns (loss, {"kept": fraction kept, "agreement": fraction where merged = expert}).
    When the filter drops the whole batch the loss is 0 (connected to the graph, zero gradient)."""
    agree = logits.detach().argmax(-1) == expert_label
    keep = keep_mask(expert_label, expert_conf, logits) if use_filter else torch.ones_like(agree)
    if keep.any():
        loss = F.cross_entropy(logits[keep], expert_label[keep])
    else:
        loss = logits.sum() * 0.0
    return loss, {"kept": float(keep.float().mean()), "agreement": float(agree.float().mean())}


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: -Σ p log p (AdaMerging's `softmax_entropy`)."""
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def entropy_loss(logits: torch.Tensor, expert_label: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """AdaMerging's objective on one batch: the mean prediction entropy (no labels, no filter).

    Returns (loss, {"kept": 1.0, "agreement": fraction where merged = expert (when expert labels are given),
    "entropy": the loss value}) - the same metric names as `pseudo_label_loss`, for one history table."""
    loss = softmax_entropy(logits).mean()
    agree = float((logits.detach().argmax(-1) == expert_label).float().mean()) if expert_label is not None else 0.0
    return loss, {"kept": 1.0, "agreement": agree, "entropy": float(loss.detach())}


# --------------------------------------------------------------------------- the trainable model
class TintedMerge(torch.nn.Module):
    """The layer-wise merged encoder (λ) and one tint layer per task.

    base: a CLIP state dict (open_clip names; the visual tower is used); finetuned:
    {task: state dict with the fine-tuned visual tower}; heads: {task: (C, D) zero-shot
    head}. Parameters: `lambdas_raw` (J, N) with J = len(self.keys), and the tints.
    layer: "head" (each task's classification head is its tint), an encoder layer (see
    `tint_layer_choices`; task t runs the merged layer plus its own offset δ_t, started at 0), or
    None: no tint at all (layer-wise AdaMerging: λ only, frozen zero-shot heads).
    """

    def __init__(
        self,
        base: Mapping[str, torch.Tensor],
        finetuned: Mapping[str, Mapping[str, torch.Tensor]],
        heads: Mapping[str, torch.Tensor],
        layer: str | None = HEAD,
        lambda_init: float = 0.3,
        arch: str | dict | None = None,
    ):
        super().__init__()
        from ...models import build_model

        self.tasks = list(finetuned)
        if not self.tasks:
            raise ValueError("Tinting needs at least one fine-tuned model")
        missing = [t for t in self.tasks if t not in heads]
        if missing:
            raise ValueError(f"no classification head for task(s) {missing}")
        first = finetuned[self.tasks[0]]
        self.keys = sorted(k for k in first if k.startswith("visual.") and torch.is_floating_point(first[k]))
        if not self.keys:
            raise ValueError("the fine-tuned checkpoints hold no visual.* parameters")
        visual_base = {k: v for k, v in base.items() if k.startswith("visual.")}
        self.visual = build_model(base, arch).visual
        for p in self.visual.parameters():
            p.requires_grad_(False)
        own = dict(self.visual.named_parameters())
        unknown = [k for k in self.keys if k[len("visual.") :] not in own]
        if unknown:
            raise ValueError(f"parameters {unknown[:3]} are not in the visual tower built from the base")
        self.base = {k: visual_base[k].detach().float() for k in self.keys}
        self.tau = {}
        for k in self.keys:
            b = self.base[k]
            tv = []
            for t in self.tasks:
                if k not in finetuned[t]:
                    raise KeyError(f"fine-tuned checkpoint of {t!r} lacks {k!r}")
                tv.append(finetuned[t][k].detach().float() - b)
            self.tau[k] = torch.stack(tv)  # (N, *shape)
        self.layer = layer
        self.layer_keys = layer_keys(layer, self.keys) if layer is not None else []
        self.lambdas_raw = torch.nn.Parameter(torch.full((len(self.keys), len(self.tasks)), float(lambda_init)))
        self.heads = {t: heads[t].detach().float().clone() for t in self.tasks}
        self.tint = torch.nn.ParameterList()
        self._tint_index: dict[str, dict[str, int]] = {}
        for t in self.tasks:
            idx = {}
            if layer == HEAD:
                w = self.heads[t]
                for name, init in (("weight", w.clone()), ("bias", torch.zeros(w.shape[0]))):
                    idx[name] = len(self.tint)
                    self.tint.append(torch.nn.Parameter(init))
            else:
                for k in self.layer_keys:
                    idx[k] = len(self.tint)
                    self.tint.append(torch.nn.Parameter(torch.zeros_like(self.base[k])))
            self._tint_index[t] = idx

    # -- parameters
    @property
    def tinted(self) -> bool:
        """False for layer-wise AdaMerging (no tint layer)."""
        return self.layer is not None

    def lambdas(self) -> torch.Tensor:
        """The effective coefficients clamp(λ_raw, 0, 1), (J, N)."""
        return self.lambdas_raw.clamp(0.0, 1.0)

    def tint_params(self, task: str) -> dict[str, torch.nn.Parameter]:
        return {name: self.tint[i] for name, i in self._tint_index[task].items()}

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        out = [("lambdas", self.lambdas_raw)]
        for t in self.tasks:
            out += [(f"tint.{t}.{name}", p) for name, p in self.tint_params(t).items()]
        return out

    def num_trainable(self) -> int:
        return sum(p.numel() for _, p in self.named_trainable())

    def num_encoder_params(self) -> int:
        return sum(v.numel() for v in self.base.values())

    def merged_params(self) -> dict[str, torch.Tensor]:
        """θ_j = θ0_j + Σ_t λ(j, t) τ_t,j for every visual key (differentiable in λ)."""
        lam = self.lambdas()
        return {k: self.base[k] + torch.tensordot(lam[j], self.tau[k], dims=1) for j, k in enumerate(self.keys)}

    def task_params(self, task: str, merged: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Task `task`'s encoder: the merged one, with its tinted layer when the tint is an encoder layer."""
        out = dict(merged)
        if self.layer in (HEAD, None):
            return out
        for k, p in self.tint_params(task).items():
            out[k] = merged[k] + p
        return out

    @property
    def shared_encoder(self) -> bool:
        """True when every task runs the same encoder (head tint, or no tint)."""
        return self.layer in (HEAD, None)

    def head(self, task: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.layer == HEAD:
            tp = self.tint_params(task)
            return tp["weight"], tp["bias"]
        return self.heads[task], None

    # -- forward
    def features(self, x: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L2-normalized image features of preprocessed images under the given visual params."""
        p = {k[len("visual.") :]: v for k, v in params.items()}
        return F.normalize(functional_call(self.visual, p, (x,)), dim=-1)

    def logits_from_features(self, feats: torch.Tensor, task: str) -> torch.Tensor:
        w, b = self.head(task)
        out = feats @ w.T
        return out if b is None else out + b

    def forward(self, x: torch.Tensor, task: str, merged: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        merged = self.merged_params() if merged is None else merged
        return self.logits_from_features(self.features(x, self.task_params(task, merged)), task)

    # -- results
    @torch.no_grad()
    def visual_state_dict(self, task: str | None = None) -> dict[str, torch.Tensor]:
        """The merged visual tower (task=None), or task t's encoder with its tinted layer (detached)."""
        merged = {k: v.detach().clone() for k, v in self.merged_params().items()}
        return merged if task is None else {k: v.detach().clone() for k, v in self.task_params(task, merged).items()}

    def lambda_frame(self, by: str = "tensor") -> pd.DataFrame:
        """Effective λ(j, t): rows = parameter tensors (by="tensor") or blocks (by="block": mean
        over the block's tensors; "outside" for the rest), columns = tasks."""
        lam = self.lambdas().detach().numpy()
        df = pd.DataFrame(lam, index=self.keys, columns=self.tasks)
        if by == "tensor":
            df.index = [k[len("visual.") :] for k in self.keys]
            return df
        if by != "block":
            raise ValueError(f"by must be 'tensor' or 'block', got {by!r}")
        blocks = [layer_index(k) for k in self.keys]
        labels = [f"block {b}" if b is not None else "outside" for b in blocks]
        order = sorted(set(labels), key=lambda s: (s == "outside", int(s.split()[1]) if s != "outside" else 0))
        return df.groupby(labels).mean().loc[order]

    def state(self) -> dict[str, torch.Tensor]:
        """Trainable state (λ_raw and the tints) as a flat tensor dict."""
        return {name: p.detach().clone() for name, p in self.named_trainable()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.named_trainable():
                if name not in state:
                    raise KeyError(f"saved Tinting state lacks {name!r} (another layer or task set?)")
                p.copy_(state[name])
