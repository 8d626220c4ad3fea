"""The demo zoo: a small open_clip CLIP "pretrained" here, one fine-tuned visual tower per task.

    python -m core zoo build [--micro] [--force] [--cache DIR] [--set key=value ...]
    python -m core zoo pretrain [--out DIR] [--set key=value ...]
    python -m core zoo info [--micro]

Pretraining is contrastive on captioned scenes from the same generator as the
tasks (core.data), with two supervised aids that real CLIP does not have and
the zoo documents as such (shared/ZOO-NOTES.md, third round): half of each batch
is minimal pairs (one scene re-rendered with one attribute changed, the caption
naming it), and auxiliary linear attribute heads are trained on both the image
and the text embeddings. The positional embedding starts x`pos_embed_scale` so
position survives the patch tokens. Fine-tuning follows task arithmetic: the
visual tower only, the zero-shot head frozen, AdamW, warmup + cosine.

The zoo lives in a per-user cache (`cache_dir()`), never in the repo:
base.safetensors (full CLIP), finetuned/<task>.safetensors (``visual.*`` only),
manifest.json (tasks, recipe, seeds, accuracies, timings, versions). A base
shipped in core/assets/zoo-base/ (fp16, made by `zoo pretrain`, sha256 recorded)
replaces the pretraining stage when its recipe matches.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .models import (
    ZOO_CONFIGS,
    build_model,
    preprocess,
    tokenize,
    zero_shot_head,
)

Progress = Callable[[str, int, int], None]
ASSETS = Path(__file__).resolve().parent / "assets" / "zoo-base"  # the shipped base (package data)
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a zoo (the manifest records it; its hash names the build)."""

    kind: str
    arch: str
    tasks: tuple[str, ...]
    seed: int = 0
    # pretraining
    pretrain_steps: int = 5000
    pretrain_batch: int = 128
    pair_fraction: float = 0.5  # share of each batch made of minimal pairs
    mention_prob: float = 0.5  # chance that a caption names each attribute of its scene
    lr_visual: float = 1e-3
    lr_text: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    aux_weight: float = 0.5
    pos_embed_scale: float = 6.0
    # fine-tuning (task arithmetic's recipe, scaled down)
    ft_steps: int = 300
    ft_batch: int = 64
    ft_lr: float = 2.5e-4
    ft_weight_decay: float = 0.1
    ft_warmup: float = 0.1
    n_train: int = 19200  # = ft_steps x ft_batch: every fine-tuning step sees fresh images (no overfitting)
    workers: int = 2

    def pretrain_part(self) -> dict:
        keep = ("arch", "seed", "pretrain_steps", "pretrain_batch", "pair_fraction", "lr_visual", "lr_text",
                "weight_decay", "warmup", "aux_weight", "pos_embed_scale")  # fmt: skip
        part = {k: getattr(self, k) for k in keep}
        for k, v in _HASH_OMITS_DEFAULT.items():  # recorded only when changed: older bases still match
            if getattr(self, k) != v:
                part[k] = getattr(self, k)
        return part | {"generator": generator_signature()}

    def pretrain_hash(self) -> str:
        return _hash(self.pretrain_part())

    def hash(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("workers")
        for k, v in _HASH_OMITS_DEFAULT.items():  # fields added later: at their default, old hashes hold
            if d[k] == v:
                d.pop(k)
        return _hash(d | {"generator": generator_signature()})


_HASH_OMITS_DEFAULT = {"mention_prob": 0.5}


def generator_signature() -> dict:
    """What of core.data's image generator a zoo depends on (part of every recipe hash)."""
    return {
        "version": D.GENERATOR_VERSION,
        "main_object_size": list(D.MAIN_OBJECT_SIZE),
        "group_object_size": list(D.GROUP_OBJECT_SIZE),
    }


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


RECIPES: dict[str, Recipe] = {
    "demo": Recipe(kind="demo", arch="mergescope-zoo", tasks=tuple(D.TASK_NAMES)),
    # Plumbing only: a few gentle pretraining steps keep the random text tower's class
    # embeddings apart (longer short runs collapse them first), then quick fine-tunes.
    "micro": Recipe(
        kind="micro",
        arch="mergescope-micro",
        tasks=("colors", "shapes", "position", "patterns"),  # the least collinear random-init heads
        pretrain_steps=30,
        pretrain_batch=32,
        lr_visual=1e-4,
        lr_text=1e-4,
        ft_steps=120,
        ft_batch=32,
        ft_lr=3e-3,
        n_train=400,
        workers=1,
    ),
}


def recipe_for(kind: str, overrides: dict | None = None) -> Recipe:
    if kind not in RECIPES:
        raise ValueError(f"unknown zoo kind {kind!r}; choose from {list(RECIPES)}")
    r = RECIPES[kind]
    if overrides:
        fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise ValueError(f"unknown recipe fields {bad}; known: {sorted(fields)}")
        vals = {}
        for k, v in overrides.items():
            cur = getattr(r, k)
            if isinstance(cur, tuple):
                vals[k] = tuple(v.split(",")) if isinstance(v, str) else tuple(v)
            else:
                vals[k] = type(cur)(v)
        r = dataclasses.replace(r, **vals)
    return r


# ---------------------------------------------------------------------------
# Paths.
def cache_dir() -> Path:
    """$MERGESCOPE_CACHE or ~/.cache/mergescope."""
    env = os.environ.get("MERGESCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergescope"


def zoo_dir(kind: str = "demo", cache: str | Path | None = None) -> Path:
    return Path(cache) if cache is not None else cache_dir()


def _zoo_path(kind: str, cache: str | Path | None) -> Path:
    return zoo_dir(kind, cache) / f"zoo-{kind}"


def is_built(kind: str = "demo", cache: str | Path | None = None) -> bool:
    """True when a complete zoo of `kind` built with the current recipe is in the cache."""
    m = _zoo_path(kind, cache) / "manifest.json"
    if not m.exists():
        return False
    try:
        man = json.loads(m.read_text())
    except json.JSONDecodeError:
        return False
    return man.get("complete") is True and man.get("recipe_hash") == RECIPES[kind].hash()


def load_model_set(kind: str = "demo", cache: str | Path | None = None):
    """The built zoo as a `core.modelset.ModelSet` (base + one fine-tuned visual tower per task)."""
    from .modelset import ModelSet

    d = _zoo_path(kind, cache)
    m = d / "manifest.json"
    if not m.exists():
        raise FileNotFoundError(
            f"no {kind} zoo in {d}; build it with `python -m core zoo build{' --micro' if kind == 'micro' else ''}`"
        )
    man = json.loads(m.read_text())
    tasks = list(man["tasks"])
    return ModelSet(
        name=f"{kind} zoo",
        base_path=d / "base.safetensors",
        finetuned_paths={t: d / "finetuned" / f"{t}.safetensors" for t in tasks},
        eval_tasks=tasks,
        zoo_dir=d,
    )


def manifest(kind: str = "demo", cache: str | Path | None = None) -> dict:
    return json.loads((_zoo_path(kind, cache) / "manifest.json").read_text())


def _save(sd: dict, path: Path, **meta) -> None:
    from .checkpoints import save_state_dict

    save_state_dict(sd, path, metadata=meta or None)


def _load(path: Path) -> dict:
    from .checkpoints import load_state_dict

    return load_state_dict(path)


# ---------------------------------------------------------------------------
# Pretraining data: captioned scenes and minimal pairs.
_PAIR_ATTRS = {
    "shape": ("shape", "colour", "pattern", "position"),
    "digit": ("digit", "colour", "position"),
    "letter": ("letter", "colour", "position"),
    "arrow": ("direction", "colour", "position"),
    "group": ("count", "shape", "colour"),
}
_KIND_PROBS = {"shape": 0.3, "digit": 0.17, "letter": 0.17, "arrow": 0.18, "group": 0.18}


def caption(scene: dict, mention: set[str], prefix: str = "") -> str:
    """A caption naming the attributes in `mention` (the object's kind is always named)."""
    a, kind = scene["attrs"], scene["kind"]
    col = D.COLOUR_NAMES[a["colour"]] + " " if "colour" in mention else ""
    pos = f" in the {D.POSITION_NAMES[a['position']]}" if "position" in mention and "position" in a else ""
    if kind == "shape":
        pat = D.PATTERNS[a["pattern"]] + " " if "pattern" in mention else ""
        noun = D.SHAPES[a["shape"]] if "shape" in mention else "shape"
        body = f"a {pat}{col}{noun}"
    elif kind == "digit":
        body = f"the {col}digit {a['digit']}" if "digit" in mention else f"a {col}digit"
    elif kind == "letter":
        body = f"the {col}letter {D.LETTERS[a['letter']]}" if "letter" in mention else f"a {col}letter"
    elif kind == "arrow":
        body = f"a {col}arrow" + (f" pointing {D.DIRECTIONS[a['direction']]}" if "direction" in mention else "")
    else:  # group
        n = a["count"] + 1
        noun = (
            (D.SHAPES[a["shape"]] + ("s" if n > 1 else ""))
            if "shape" in mention
            else ("object" if n == 1 else "objects")
        )
        cnt = D.COUNTS[a["count"]] if "count" in mention else "some"
        body = f"{cnt} {col}{noun}"
    return prefix + body + pos


def _draw_attrs(rng: np.random.Generator, kind: str) -> dict:
    """Explicit attribute values for a pretraining scene (held-out shape-colour pairs excluded)."""
    while True:
        attrs = {"colour": int(rng.integers(len(D.COLOURS)))}
        if kind == "group":
            attrs.update(count=int(rng.integers(5)), shape=int(rng.integers(len(D.SHAPES))))
        else:
            attrs["position"] = int(rng.integers(len(D.POSITIONS)))
        if kind == "shape":
            attrs.update(shape=int(rng.integers(len(D.SHAPES))), pattern=int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])))
        elif kind == "digit":
            attrs["digit"] = int(rng.integers(10))
        elif kind == "letter":
            attrs["letter"] = int(rng.integers(len(D.LETTERS)))
        elif kind == "arrow":
            attrs["direction"] = int(rng.integers(len(D.DIRECTIONS)))
        if "shape" not in attrs or (attrs["shape"], attrs["colour"]) not in D.HELD_OUT_PAIRS:
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
    kinds, probs = list(_KIND_PROBS), list(_KIND_PROBS.values())
    scenes, mentions = [], []
    n_pairs = int(batch * pair_fraction) // 2
    for _ in range(n_pairs):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        attrs = _draw_attrs(rng, kind)
        changed = _PAIR_ATTRS[kind][int(rng.integers(len(_PAIR_ATTRS[kind])))]
        vocab = len(D.ATTRIBUTES[changed])
        other = dict(attrs)
        other[changed] = (attrs[changed] + 1 + int(rng.integers(vocab - 1))) % vocab
        if "shape" in other and (other["shape"], other["colour"]) in D.HELD_OUT_PAIRS:
            other[changed] = attrs[changed]  # degenerate pair rather than a held-out combination
        state = rng.bit_generator.state
        s1 = D.make_scene(rng, "train", kind, **attrs)
        rng.bit_generator.state = state
        s2 = D.make_scene(rng, "train", kind, **other)
        m = _mention(rng, s1, changed, mention_prob)
        scenes += [s1, s2]
        mentions += [m, set(m)]
    while len(scenes) < batch:
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        s = D.make_scene(rng, "train", kind, **_draw_attrs(rng, kind))
        scenes.append(s)
        mentions.append(_mention(rng, s, prob=mention_prob))
    prefixes = ["", "a photo of "]
    captions = [caption(s, m, prefixes[int(rng.integers(2))]) for s, m in zip(scenes, mentions)]
    images = np.stack([D.render(s) for s in scenes])
    return images, captions, scenes, mentions


def _attr_targets(scenes: list[dict], mentions: list[set] | None) -> dict[str, torch.Tensor]:
    out = {}
    for a in D.ATTRIBUTES:
        vals = [
            s["attrs"].get(a, -1) if (mentions is None or a in m) else -1 for s, m in zip(scenes, mentions or scenes)
        ]
        out[a] = torch.tensor(vals, dtype=torch.long)
    return out


def _cosine_schedule(step: int, total: int, warmup: float) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _set_threads(n: int) -> None:
    torch.set_num_threads(max(1, n))
    torch.set_flush_denormal(True)


def default_threads() -> int:
    """2 threads on an idle 2+-core machine, else 1.

    On a busy machine a 2-thread OpenMP process waits at every barrier for its
    descheduled twin: measured here, a micro fine-tune ran >10x slower than with
    one thread. Single-thread processes are the stable choice (ZOO-NOTES).
    """
    cpus = os.cpu_count() or 1
    busy = os.getloadavg()[0] > max(0.5, cpus - 1.5)
    return 1 if busy or cpus < 2 else 2


def pretrain(recipe: Recipe, progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Contrastive pretraining from scratch; returns the full CLIP state dict and statistics."""
    torch.manual_seed(recipe.seed)
    model = build_model(arch=recipe.arch)
    model.train()
    with torch.no_grad():
        model.visual.positional_embedding.mul_(recipe.pos_embed_scale)
    embed = ZOO_CONFIGS[recipe.arch]["embed_dim"]
    aux = torch.nn.ModuleDict({a: torch.nn.Linear(embed, len(v)) for a, v in D.ATTRIBUTES.items()})

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
    opt = torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)
    base_lrs = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng([recipe.seed, 7])
    losses = []
    t0 = time.perf_counter()
    for step in range(recipe.pretrain_steps):
        f = _cosine_schedule(step, recipe.pretrain_steps, recipe.warmup)
        for g, b in zip(opt.param_groups, base_lrs):
            g["lr"] = b * f
        images, captions, scenes, mentions = pretrain_batch(
            rng, recipe.pretrain_batch, recipe.pair_fraction, recipe.mention_prob
        )
        x = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
        tokens = tokenize(model, captions)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        cid = torch.tensor([ids[c] for c in captions])
        pos = (cid[:, None] == cid[None, :]).float()
        target = pos / pos.sum(1, keepdim=True)
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
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if progress and (step % 10 == 9 or step == recipe.pretrain_steps - 1):
            progress("pretrain", step + 1, recipe.pretrain_steps)
    model.eval()
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
        spec = D.get_task(t)
        h = F.normalize(zero_shot_head(model, spec.classnames, spec.templates), dim=-1)
        c = h @ h.T
        c.fill_diagonal_(-1)
        out[t] = round(float(c.max()), 4)
    return out


# ---------------------------------------------------------------------------
# Fine-tuning (one task, visual tower only, frozen zero-shot head).
def finetune(base_sd: dict, task: str, head: torch.Tensor, recipe: Recipe) -> tuple[dict[str, torch.Tensor], dict]:
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed * 1000 + D.TASK_NAMES.index(task) if task in D.TASK_NAMES else recipe.seed)
    model = build_model(base_sd)
    x, y = D.load_split(task, "train", seed=recipe.seed, n=recipe.n_train)
    xp = preprocess(x)
    params = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    opt = torch.optim.AdamW(params, lr=recipe.ft_lr, weight_decay=recipe.ft_weight_decay)
    g = torch.Generator().manual_seed(recipe.seed + 17)
    model.train()
    order = torch.randperm(len(y), generator=g)
    pos = 0
    losses = []
    for step in range(recipe.ft_steps):
        for grp in opt.param_groups:
            grp["lr"] = recipe.ft_lr * _cosine_schedule(step, recipe.ft_steps, recipe.ft_warmup)
        if pos + recipe.ft_batch > len(order):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos : pos + recipe.ft_batch]
        pos += recipe.ft_batch
        feats = F.normalize(model.encode_image(xp[idx]), dim=-1)
        loss = F.cross_entropy(feats @ head.T, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("visual.")}
    return sd, {
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_first_20": float(np.mean(losses[:20])),
        "loss_last_20": float(np.mean(losses[-20:])),
    }


def _finetune_worker(args) -> tuple[str, dict]:
    base_path, task, head, recipe, out_path = args
    _set_threads(1)
    sd, stats = finetune(_load(Path(base_path)), task, head, recipe)
    _save(sd, Path(out_path), task=task)
    return task, stats


# ---------------------------------------------------------------------------
# Shipped base.
def shipped_base(recipe: Recipe) -> Path | None:
    """The shipped fp16 base when it exists, its hash verifies and it was made with this recipe's pretraining part."""
    f, meta = ASSETS / "base.safetensors", ASSETS / "recipe.json"
    if not (f.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    if info.get("pretrain_hash") != recipe.pretrain_hash():
        return None
    if _sha256(f) != info.get("sha256"):
        raise RuntimeError(
            f"{f}: sha256 does not match {meta}; the shipped base is corrupt (re-run `python -m core zoo pretrain`)"
        )
    return f


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shipped_base(sd: dict, recipe: Recipe, stats: dict, out: Path = ASSETS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    f = out / "base.safetensors"
    _save({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, f, recipe=recipe.pretrain_part())
    info = {
        "what": "MergeScope demo zoo base: open_clip CLIP pretrained by `python -m core zoo pretrain` (fp16)",
        "pretrain_recipe": recipe.pretrain_part(),
        "pretrain_hash": recipe.pretrain_hash(),
        "seed": recipe.seed,
        "sha256": _sha256(f),
        "bytes": f.stat().st_size,
        "stats": stats,
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "recipe.json").write_text(json.dumps(info, indent=2) + "\n")
    return f


def _versions() -> dict:
    import open_clip

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------------------
# Build.
def build_zoo(
    kind: str = "demo",
    progress: Progress | None = None,
    force: bool = False,
    cache: str | Path | None = None,
    recipe: Recipe | None = None,
) -> Path:
    """Build (or reuse) the zoo of `kind` in the cache; returns its directory.

    Stages, each reported through `progress(stage, done, total)`: data, pretrain
    (skipped with a matching shipped base), heads, finetune, evaluate. Deterministic
    for a given recipe and thread count. Reuses a complete build with the same recipe
    unless `force`.
    """
    recipe = recipe or RECIPES[kind]
    final = _zoo_path(kind, cache)
    if not force and recipe == RECIPES[kind] and is_built(kind, cache):
        return final
    progress = progress or (lambda *a: None)
    work = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "finetuned").mkdir(parents=True)
    _set_threads(1 if recipe.workers == 1 and kind == "micro" else default_threads())
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # data
    t = time.perf_counter()
    for i, task in enumerate(recipe.tasks):
        D.load_split(task, "val")
        D.load_split(task, "test")
        progress("data", i + 1, len(recipe.tasks))
    timings["data"] = round(time.perf_counter() - t, 1)

    # pretrain (or the shipped base)
    t = time.perf_counter()
    shipped = shipped_base(recipe) if kind == "demo" else None
    if shipped is not None:
        base = {k: (v.float() if v.is_floating_point() else v) for k, v in _load(shipped).items()}
        pre_stats = {"source": str(shipped.relative_to(ASSETS.parents[2])), "sha256": _sha256(shipped)}
        progress("pretrain", 1, 1)
    else:
        base, pre_stats = pretrain(recipe, progress)
        pre_stats["source"] = "pretrained in this build"
    _save(base, work / "base.safetensors")
    timings["pretrain"] = round(time.perf_counter() - t, 1)

    # heads
    t = time.perf_counter()
    model = build_model(base)
    heads = {}
    for i, task in enumerate(recipe.tasks):
        spec = D.get_task(task)
        heads[task] = zero_shot_head(model, spec.classnames, spec.templates)
        progress("heads", i + 1, len(recipe.tasks))
    diag = head_diagnostics(model, recipe.tasks)
    timings["heads"] = round(time.perf_counter() - t, 1)

    # fine-tune
    t = time.perf_counter()
    ft_stats: dict[str, dict] = {}
    jobs = [
        (str(work / "base.safetensors"), task, heads[task], recipe, str(work / "finetuned" / f"{task}.safetensors"))
        for task in recipe.tasks
    ]
    workers = max(1, min(recipe.workers, os.cpu_count() or 1, len(jobs)))
    progress("finetune", 0, len(jobs))
    if workers == 1:
        for i, job in enumerate(jobs):
            sd, stats = finetune(base, job[1], job[2], recipe)
            _save(sd, Path(job[4]), task=job[1])
            ft_stats[job[1]] = stats
            progress("finetune", i + 1, len(jobs))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for i, (task, stats) in enumerate(pool.imap_unordered(_finetune_worker, jobs)):
                ft_stats[task] = stats
                progress("finetune", i + 1, len(jobs))
    timings["finetune"] = round(time.perf_counter() - t, 1)

    # evaluate: zero-shot, every fine-tuned model on every task (val and test)
    t = time.perf_counter()
    results = evaluate_zoo(work, recipe.tasks, progress)
    timings["evaluate"] = round(time.perf_counter() - t, 1)
    timings["total"] = round(time.perf_counter() - t_all, 1)

    man = {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "tasks": list(recipe.tasks),
        "recipe": dataclasses.asdict(recipe),
        "recipe_hash": recipe.hash(),
        "seeds": {
            "recipe": recipe.seed,
            "data": "core.data.load_split(task, split, seed=0)",
            "train_split_seed": recipe.seed,
        },
        "base": pre_stats,
        "head_max_cosine": diag,
        "finetune": ft_stats,
        **results,
        "timings_seconds": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "workers": workers,
            "load_avg": os.getloadavg(),
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    (work / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


def evaluate_zoo(zdir: Path, tasks, progress: Progress | None = None) -> dict:
    """Zero-shot / fine-tuned / cross accuracies on val and test, control accuracy and forgetting."""
    from .evaluate import Evaluator
    from .modelset import ModelSet
    from .select import control_accuracy, mean_accuracy

    ms = ModelSet(
        "zoo", zdir / "base.safetensors", {t: zdir / "finetuned" / f"{t}.safetensors" for t in tasks}, list(tasks), zdir
    )
    out: dict = {"accuracy": {}}
    n = 2 * (len(tasks) + 1)
    done = 0
    for split in ("val", "test"):
        ev = Evaluator.for_model_set(ms, split)
        zs = ev.accuracy(None)
        cross = {}
        for t in tasks:
            cross[t] = ev.accuracy(ms.finetuned(t))
            done += 1
            if progress:
                progress("evaluate", done, n)
        done += 1
        ft = {t: cross[t][t] for t in tasks}
        control = {t: control_accuracy(cross[t], t, zs) for t in tasks}
        drop = [zs[o] - cross[t][o] for t in tasks for o in tasks if o != t]
        out["accuracy"][split] = {
            "zero_shot": zs,
            "finetuned": ft,
            "cross": cross,
            "control": control,
            "mean_zero_shot": mean_accuracy(zs),
            "mean_finetuned": mean_accuracy(ft),
            "mean_forgetting": float(np.mean(drop)) if drop else 0.0,
        }
        Evaluator.evict(ev)
    return out


# ---------------------------------------------------------------------------
# CLI.
class TqdmProgress:
    """progress(stage, done, total) drawing one tqdm bar per stage."""

    def __init__(self):
        self.stage, self.bar = None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage, self.bar = (
                stage,
                tqdm(total=total, desc=f"{stage:<9}", unit="step" if stage == "pretrain" else "it", file=sys.stderr),
            )
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core zoo", description="Build or inspect the demo zoo.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the zoo into the cache (reused when already built)")
    b.add_argument("--micro", action="store_true", help="the tiny zoo used by the tests")
    b.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    b.add_argument("--cache", default=None, help="cache directory (default $MERGESCOPE_CACHE or ~/.cache/mergescope)")
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields (experiments)")
    p = sub.add_parser("pretrain", help="pretrain the demo base and write it (fp16) with recipe and sha256")
    p.add_argument("--out", default=str(ASSETS))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    i = sub.add_parser("info", help="print the manifest summary")
    i.add_argument("--micro", action="store_true")
    i.add_argument("--cache", default=None)
    args = ap.parse_args(argv)

    if args.cmd == "build":
        kind = "micro" if args.micro else "demo"
        recipe = recipe_for(kind, _overrides(args.set))
        if not args.force and recipe == RECIPES[kind] and is_built(kind, args.cache):
            print(f"{kind} zoo already built at {_zoo_path(kind, args.cache)} (use --force to rebuild)")
            return 0
        bar = TqdmProgress()
        path = build_zoo(kind, bar, force=True, cache=args.cache, recipe=recipe)
        bar.close()
        print(f"built {kind} zoo at {path}")
        _print_summary(json.loads((path / "manifest.json").read_text()))
        return 0
    if args.cmd == "pretrain":
        recipe = recipe_for("demo", _overrides(args.set))
        _set_threads(default_threads())
        bar = TqdmProgress()
        sd, stats = pretrain(recipe, bar)
        bar.close()
        model = build_model(sd)
        stats["head_max_cosine"] = head_diagnostics(model, recipe.tasks)
        f = write_shipped_base(sd, recipe, stats, Path(args.out))
        print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB); {json.dumps(stats)}")
        return 0
    if args.cmd == "info":
        kind = "micro" if args.micro else "demo"
        try:
            man = manifest(kind, args.cache)
        except FileNotFoundError:
            print(
                f"no {kind} zoo in {_zoo_path(kind, args.cache)}; run `python -m core zoo build{' --micro' if args.micro else ''}`"
            )
            return 1
        print(
            f"{kind} zoo at {_zoo_path(kind, args.cache)} (current recipe: {'yes' if is_built(kind, args.cache) else 'NO, rebuild'})"
        )
        _print_summary(man)
        return 0
    return 2


def _print_summary(man: dict) -> None:
    for split in ("val", "test"):
        a = man["accuracy"][split]
        print(
            f"[{split}] zero-shot {a['mean_zero_shot']:.3f}  fine-tuned {a['mean_finetuned']:.3f}  forgetting {a['mean_forgetting']:.3f}"
        )
    a = man["accuracy"]["test"]
    print(f"{'task':<10} {'zero-shot':>9} {'fine-tuned':>10} {'control':>8} {'head cos':>8}")
    for t in man["tasks"]:
        print(
            f"{t:<10} {a['zero_shot'][t]:>9.3f} {a['finetuned'][t]:>10.3f} {a['control'][t]['control']:>8.3f} {man['head_max_cosine'][t]:>8.3f}"
        )
    print("timings (s):", man["timings_seconds"])
