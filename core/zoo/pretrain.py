"""Pretraining the zoo's base: contrastive CLIP training from scratch on captioned scenes.

The batches come from the same generator as the tasks (`core.zoo.scenes`), with two supervised
aids that real CLIP does not have, documented as such in docs/methods/zoo.md:

- minimal pairs: `pair_fraction` of each batch is pairs of one scene rendered twice with one
  attribute changed (same background, noise and placement), the shared caption naming that
  attribute, so the contrastive loss has to tell them apart;
- auxiliary linear attribute heads (one per `scenes.ATTRIBUTES` entry) trained on both the image
  and the text embeddings (text targets only for the attributes its caption names).

Captions name each attribute with probability `mention_prob` (the object's kind always). The
visual positional embedding starts multiplied by `pos_embed_scale` so position survives the patch
tokens. Held-out shape-colour pairs (`scenes.HELD_OUT_PAIRS`) never appear. The loop is
`core.train.train_loop` with the zoo's `warmup_cosine` schedule and CLIP's logit scale clamped to
[0, ln 100] after every step (an `after_step` hook).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..models import ZOO_CONFIGS, build_model, preprocess, tokenize, zero_shot_head
from ..train import TrainConfig, train_loop, warmup_cosine
from . import scenes as S
from .data import get_task
from .recipe import Recipe

Progress = Callable[[str, int, int], None]

# Which attributes a minimal pair may change, per scene kind; and how often each kind is drawn.
PAIR_ATTRS = {
    "shape": ("shape", "colour", "pattern", "position"),
    "digit": ("digit", "colour", "position"),
    "letter": ("letter", "colour", "position"),
    "arrow": ("direction", "colour", "position"),
    "group": ("count", "shape", "colour"),
}
KIND_PROBS = {"shape": 0.3, "digit": 0.17, "letter": 0.17, "arrow": 0.18, "group": 0.18}


def caption(scene: dict, mention: set[str], prefix: str = "") -> str:
    """A caption naming the attributes in `mention` (the object's kind is always named)."""
    a, kind = scene["attrs"], scene["kind"]
    col = S.COLOUR_NAMES[a["colour"]] + " " if "colour" in mention else ""
    pos = f" in the {S.POSITION_NAMES[a['position']]}" if "position" in mention and "position" in a else ""
    if kind == "shape":
        pat = S.PATTERNS[a["pattern"]] + " " if "pattern" in mention else ""
        noun = S.SHAPES[a["shape"]] if "shape" in mention else "shape"
        body = f"a {pat}{col}{noun}"
    elif kind == "digit":
        body = f"the {col}digit {a['digit']}" if "digit" in mention else f"a {col}digit"
    elif kind == "letter":
        body = f"the {col}letter {S.LETTERS[a['letter']]}" if "letter" in mention else f"a {col}letter"
    elif kind == "arrow":
        body = f"a {col}arrow" + (f" pointing {S.DIRECTIONS[a['direction']]}" if "direction" in mention else "")
    elif kind == "group":
        n = a["count"] + 1
        noun = (
            (S.SHAPES[a["shape"]] + ("s" if n > 1 else ""))
            if "shape" in mention
            else ("object" if n == 1 else "objects")
        )
        cnt = S.COUNTS[a["count"]] if "count" in mention else "some"
        body = f"{cnt} {col}{noun}"
    else:
        raise ValueError(f"unknown scene kind {kind!r}; kinds are {S.KINDS}")
    return prefix + body + pos


def _draw_attrs(rng: np.random.Generator, kind: str) -> dict:
    """Explicit attribute values for a pretraining scene (held-out shape-colour pairs excluded)."""
    while True:
        attrs = {"colour": int(rng.integers(len(S.COLOURS)))}
        if kind == "group":
            attrs.update(count=int(rng.integers(5)), shape=int(rng.integers(len(S.SHAPES))))
        else:
            attrs["position"] = int(rng.integers(len(S.POSITIONS)))
        if kind == "shape":
            attrs.update(shape=int(rng.integers(len(S.SHAPES))), pattern=int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])))
        elif kind == "digit":
            attrs["digit"] = int(rng.integers(10))
        elif kind == "letter":
            attrs["letter"] = int(rng.integers(len(S.LETTERS)))
        elif kind == "arrow":
            attrs["direction"] = int(rng.integers(len(S.DIRECTIONS)))
        if "shape" not in attrs or (attrs["shape"], attrs["colour"]) not in S.HELD_OUT_PAIRS:
            return attrs


def _mention(rng: np.random.Generator, scene: dict, must: str | None = None, prob: float = 0.5) -> set[str]:
    m = {a for a in scene["attrs"] if rng.random() < prob}
    if must:
        m.add(must)
    return m


def pretrain_batch(
    rng: np.random.Generator, batch: int, pair_fraction: float, mention_prob: float = 0.5
) -> tuple[np.ndarray, list[str], list[dict], list[set]]:
    """Images (B, 32, 32, 3) uint8, captions, scenes and mentioned attributes for one pretraining step."""
    kinds, probs = list(KIND_PROBS), list(KIND_PROBS.values())
    scenes, mentions = [], []
    n_pairs = int(batch * pair_fraction) // 2
    for _ in range(n_pairs):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        attrs = _draw_attrs(rng, kind)
        changed = PAIR_ATTRS[kind][int(rng.integers(len(PAIR_ATTRS[kind])))]
        vocab = len(S.ATTRIBUTES[changed])
        other = dict(attrs)
        other[changed] = (attrs[changed] + 1 + int(rng.integers(vocab - 1))) % vocab
        if "shape" in other and (other["shape"], other["colour"]) in S.HELD_OUT_PAIRS:
            other[changed] = attrs[changed]  # degenerate pair rather than a held-out combination
        state = rng.bit_generator.state
        s1 = S.make_scene(rng, "train", kind, **attrs)
        rng.bit_generator.state = state
        s2 = S.make_scene(rng, "train", kind, **other)
        m = _mention(rng, s1, changed, mention_prob)
        scenes += [s1, s2]
        mentions += [m, set(m)]
    while len(scenes) < batch:
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        s = S.make_scene(rng, "train", kind, **_draw_attrs(rng, kind))
        scenes.append(s)
        mentions.append(_mention(rng, s, prob=mention_prob))
    prefixes = ["", "a photo of "]
    captions = [caption(s, m, prefixes[int(rng.integers(2))]) for s, m in zip(scenes, mentions)]
    images = np.stack([S.render(s) for s in scenes])
    return images, captions, scenes, mentions


def _attr_targets(scenes: list[dict], mentions: list[set] | None) -> dict[str, torch.Tensor]:
    out = {}
    for a in S.ATTRIBUTES:
        vals = [
            s["attrs"].get(a, -1) if (mentions is None or a in m) else -1 for s, m in zip(scenes, mentions or scenes)
        ]
        out[a] = torch.tensor(vals, dtype=torch.long)
    return out


class _ClampLogitScale:
    """`train_loop` hook: keep CLIP's temperature in [0, ln 100] after every optimizer step."""

    def __init__(self, model):
        self.model = model

    def after_step(self, step: int, optimizer) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))


def _optimizer(model, aux: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW over (tower, decay) groups: the visual tower at lr_visual, text tower and aux heads at lr_text;
    no weight decay on 1-D parameters and embeddings (nor on the aux heads)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        tower = "visual" if name.startswith("visual.") else "text"
        decay = p.ndim >= 2 and "embedding" not in name
        groups.setdefault((tower, decay), []).append(p)
    lr = {"visual": recipe.lr_visual, "text": recipe.lr_text}
    param_groups = [
        {"params": ps, "lr": lr[tower], "weight_decay": recipe.weight_decay if decay else 0.0}
        for (tower, decay), ps in groups.items()
    ]
    param_groups.append({"params": list(aux.parameters()), "lr": recipe.lr_text, "weight_decay": 0.0})
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)


def pretrain(recipe: Recipe, progress: Progress | None = None, cancel=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Contrastive pretraining from scratch; returns the full CLIP state dict and statistics.

    Deterministic for a recipe and a thread count. Raises `core.errors.Cancelled` when `cancel`
    (anything with ``is_set()``) is set.
    """
    from ..errors import Cancelled

    torch.manual_seed(recipe.seed)
    model = build_model(arch=recipe.arch)
    model.train()
    with torch.no_grad():
        model.visual.positional_embedding.mul_(recipe.pos_embed_scale)
    embed = ZOO_CONFIGS[recipe.arch]["embed_dim"]
    aux = torch.nn.ModuleDict({a: torch.nn.Linear(embed, len(v)) for a, v in S.ATTRIBUTES.items()})
    opt = _optimizer(model, aux, recipe)
    rng = np.random.default_rng([recipe.seed, 7])

    def batches() -> Iterator:
        while True:
            yield pretrain_batch(rng, recipe.pretrain_batch, recipe.pair_fraction, recipe.mention_prob)

    def loss_fn(batch) -> tuple[torch.Tensor, dict]:
        images, captions, scenes, mentions = batch
        x = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
        tokens = tokenize(model, captions)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        cid = torch.tensor([ids[c] for c in captions])
        pos = (cid[:, None] == cid[None, :]).float()
        target = pos / pos.sum(1, keepdim=True)  # identical captions are all positives
        loss = 0.5 * (
            torch.sum(-target * logits.log_softmax(1), 1).mean()
            + torch.sum(-target * logits.T.log_softmax(1), 1).mean()
        )
        if recipe.aux_weight > 0:
            aux_losses = []
            for emb, ment in ((img, None), (txt, mentions)):
                targets = _attr_targets(scenes, ment)
                for a, head in aux.items():
                    t = targets[a]
                    if (t >= 0).any():
                        aux_losses.append(F.cross_entropy(head(emb * 10), t, ignore_index=-1))
            loss = loss + recipe.aux_weight * torch.stack(aux_losses).mean()
        return loss, {}

    def report(done: int, total: int, row: dict) -> None:
        if progress and (done % 10 == 0 or done == total):
            progress("pretrain", done, total)

    cfg = TrainConfig(
        steps=recipe.pretrain_steps,
        lr=recipe.lr_visual,
        weight_decay=recipe.weight_decay,
        warmup=recipe.warmup,
        grad_clip=None,
        seed=recipe.seed,
        log_every=1,
    )
    t0 = time.perf_counter()
    res = train_loop(
        opt,
        loss_fn,
        batches(),
        cfg,
        hooks=[_ClampLogitScale(model)],
        progress=report,
        cancel=cancel,
        lr_schedule=functools.partial(warmup_cosine, steps=recipe.pretrain_steps, warmup=recipe.warmup),
    )
    if res.cancelled:
        raise Cancelled(f"pretraining cancelled after {res.steps_done} of {recipe.pretrain_steps} steps")
    model.eval()
    losses = [row["loss"] for row in res.history]
    stats = {
        "pretrain_seconds": round(time.perf_counter() - t0, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
    }
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats


def head_diagnostics(model, tasks) -> dict[str, float]:
    """Max off-diagonal cosine between class text embeddings, per task (collapse check; want <= 0.9)."""
    out = {}
    for t in tasks:
        spec = get_task(t)
        h = F.normalize(zero_shot_head(model, spec.classnames, spec.templates), dim=-1)
        c = h @ h.T
        c.fill_diagonal_(-1)
        out[t] = round(float(c.max()), 4)
    return out
