"""open_clip models: the zoo's architectures, building a model for a state dict,
zero-shot heads, and loading a (merged) visual tower into a model in place.

Architectures are data: `ZOO_CONFIGS` holds the zoo's open_clip configs
(``{embed_dim, vision_cfg, text_cfg}``), registered with open_clip by
`register_zoo_configs` so ``open_clip.create_model("mergescope-zoo")`` works.
For any other checkpoint the architecture is read off the tensor shapes
(`infer_arch`): width, blocks, patch and image size, embedding size, text tower.
Attention heads are not visible in shapes; they follow open_clip's convention
(head width 64), which the zoo configs follow too.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from .layers import num_blocks

# The zoo's architectures. "mergescope-zoo": 32x32 images, patch 8 (16 tokens + class),
# width 64, 8 blocks of 2 heads; text tower width 64, 3 blocks, context 16 (open_clip's
# BPE vocabulary). Width 64 keeps 8 fine-tunes within ~2 min and one evaluation of all
# test sets within ~0.3 s on 2 idle cores (docs/methods/zoo.md); "mergescope-zoo-w96" is the
# wider variant. "mergescope-micro": the same shape of thing, tiny, for tests.
ZOO_CONFIGS: dict[str, dict] = {
    "mergescope-zoo": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 8, "head_width": 32, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
    },
    "mergescope-zoo-w96": {
        "embed_dim": 96,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 96, "layers": 8, "head_width": 32, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 3},
    },
    "mergescope-micro": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 64, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    },
}
# Name used by the first experimental builds (same shapes as "mergescope-zoo").
ZOO_CONFIGS["mergescope-zoo-w64"] = ZOO_CONFIGS["mergescope-zoo"]

# Image normalization (OpenAI CLIP's constants; the zoo uses them too).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_registered = False


def register_zoo_configs() -> None:
    """Register the zoo's configs with open_clip (idempotent)."""
    global _registered
    if _registered:
        return
    # open_clip reads the files when the folder is added (and a later rescan skips a folder that is gone),
    # so the folder is removed right away: one left per process filled /tmp with ~1,100 folders of tests and
    # CLI runs
    with tempfile.TemporaryDirectory(prefix="mergescope-configs-") as tmp:
        d = Path(tmp)
        for name, cfg in ZOO_CONFIGS.items():
            (d / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(d)
    _registered = True


# ---------------------------------------------------------------------------
# Architecture inference.
def _blocks(keys: Sequence[str], prefix: str) -> int:
    """Blocks under one tower's block container `prefix` (e.g. "visual.transformer.resblocks."), by core.layers."""
    return num_blocks(keys, prefix=prefix)


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Architecture of a CLIP state dict from its tensor shapes (open_clip or HF CLIP names).

    Returns ``{"format", "embed_dim", "width", "layers", "patch_size", "image_size",
    "mlp_ratio", "heads", "text"}`` where ``text`` is None for a visual-only dict or
    ``{"width", "layers", "heads", "context_length", "vocab_size", "mlp_ratio"}``, plus
    ``"open_clip_cfg"``: the ``{embed_dim, vision_cfg, text_cfg}`` dict open_clip builds from.
    """
    sd = state_dict
    keys = list(sd)
    if "visual.conv1.weight" in sd:
        fmt = "open_clip"
        conv = sd["visual.conv1.weight"]
        pos = sd["visual.positional_embedding"]
        layers = _blocks(keys, "visual.transformer.resblocks.")
        mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        proj = sd.get("visual.proj")
        text = None
        if "token_embedding.weight" in sd:
            tw = sd["token_embedding.weight"].shape[1]
            text = {
                "width": tw,
                "layers": _blocks(keys, "transformer.resblocks."),
                "heads": max(1, tw // 64),
                "context_length": sd["positional_embedding"].shape[0],
                "vocab_size": sd["token_embedding.weight"].shape[0],
                "mlp_ratio": sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / tw,
            }
        embed = proj.shape[1] if proj is not None else sd["text_projection"].shape[1]
    elif "vision_model.embeddings.patch_embedding.weight" in sd:
        fmt = "hf_clip"
        conv = sd["vision_model.embeddings.patch_embedding.weight"]
        pos = sd["vision_model.embeddings.position_embedding.weight"]
        layers = _blocks(keys, "vision_model.encoder.layers.")
        mlp = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        text = None
        if "text_model.embeddings.token_embedding.weight" in sd:
            tok = sd["text_model.embeddings.token_embedding.weight"]
            tw = tok.shape[1]
            text = {
                "width": tw,
                "layers": _blocks(keys, "text_model.encoder.layers."),
                "heads": max(1, tw // 64),
                "context_length": sd["text_model.embeddings.position_embedding.weight"].shape[0],
                "vocab_size": tok.shape[0],
                "mlp_ratio": sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0] / tw,
            }
        if "visual_projection.weight" in sd:
            embed = sd["visual_projection.weight"].shape[0]
        elif "text_projection.weight" in sd:
            embed = sd["text_projection.weight"].shape[0]
        else:
            embed = conv.shape[0]
    else:
        raise ValueError(
            "cannot infer a CLIP architecture: expected 'visual.conv1.weight' (open_clip) or "
            f"'vision_model.embeddings.patch_embedding.weight' (HF CLIP); first keys: {keys[:5]}"
        )
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(pos.shape[0] - 1)
    arch = {
        "format": fmt,
        "embed_dim": int(embed),
        "width": int(width),
        "layers": int(layers),
        "patch_size": int(patch),
        "image_size": int(grid * patch),
        "mlp_ratio": float(mlp / width),
        "heads": max(1, int(width) // 64),
        "text": {k: (float(v) if k == "mlp_ratio" else int(v)) for k, v in text.items()} if text else None,
    }
    zoo = _matching_zoo_config(arch)
    if zoo is not None:  # heads are invisible in shapes: take them from the zoo's own config
        arch["heads"] = arch["width"] // zoo["vision_cfg"]["head_width"]
        if arch["text"]:
            arch["text"]["heads"] = zoo["text_cfg"]["heads"]
    arch["open_clip_cfg"] = _open_clip_cfg(arch)
    return arch


def _matching_zoo_config(arch: dict) -> dict | None:
    for cfg in ZOO_CONFIGS.values():
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        same_vision = (arch["embed_dim"], arch["width"], arch["layers"], arch["patch_size"], arch["image_size"]) == (
            cfg["embed_dim"], v["width"], v["layers"], v["patch_size"], v["image_size"])  # fmt: skip
        same_text = arch["text"] is None or (arch["text"]["width"], arch["text"]["layers"]) == (t["width"], t["layers"])
        if same_vision and same_text and abs(arch["mlp_ratio"] - v["mlp_ratio"]) < 1e-6:
            return cfg
    return None


def _open_clip_cfg(arch: dict) -> dict:
    vision = {
        "image_size": arch["image_size"],
        "patch_size": arch["patch_size"],
        "width": arch["width"],
        "layers": arch["layers"],
        "head_width": arch["width"] // arch["heads"],
        "mlp_ratio": arch["mlp_ratio"],
    }
    t = arch.get("text") or {"width": 64, "layers": 1, "heads": 1, "context_length": 16, "vocab_size": 49408}
    text = {k: t[k] for k in ("context_length", "vocab_size", "width", "heads", "layers")}
    text["mlp_ratio"] = t.get("mlp_ratio", 4.0)
    return {"embed_dim": arch["embed_dim"], "vision_cfg": vision, "text_cfg": text}


def _hf_config_to_open_clip(cfg: dict) -> dict:
    """A HF ``CLIPConfig`` dict (config.json) -> open_clip model config."""
    v, t = cfg["vision_config"], cfg.get("text_config") or {}
    vw = v.get("hidden_size", 768)
    tw = t.get("hidden_size", 512)
    return {
        "embed_dim": cfg.get("projection_dim", 512),
        "quick_gelu": v.get("hidden_act", "quick_gelu") == "quick_gelu",
        "vision_cfg": {
            "image_size": v.get("image_size", 224),
            "patch_size": v.get("patch_size", 32),
            "width": vw,
            "layers": v.get("num_hidden_layers", 12),
            "head_width": vw // v.get("num_attention_heads", max(1, vw // 64)),
            "mlp_ratio": v.get("intermediate_size", 4 * vw) / vw,
        },
        "text_cfg": {
            "context_length": t.get("max_position_embeddings", 77),
            "vocab_size": t.get("vocab_size", 49408),
            "width": tw,
            "heads": t.get("num_attention_heads", max(1, tw // 64)),
            "layers": t.get("num_hidden_layers", 12),
            "mlp_ratio": t.get("intermediate_size", 4 * tw) / tw,
        },
    }


def build_model(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    arch: str | dict | None = None,
    *,
    quick_gelu: bool | None = None,
) -> open_clip.CLIP:
    """An open_clip CLIP in eval mode, with `state_dict` loaded when given.

    `arch`: an open_clip model name (the zoo's configs are registered first, e.g.
    "mergescope-zoo", "ViT-B-32", "ViT-B-32-quickgelu"), an open_clip config dict
    ``{embed_dim, vision_cfg, text_cfg}``, a HF ``CLIPConfig`` dict (has
    "vision_config"), an `infer_arch` result, or None to infer it from the state
    dict's shapes. HF-named state dicts are translated to open_clip names first.
    Activation (GELU vs OpenAI's QuickGELU) is not visible in shapes: pass
    `quick_gelu=True` for OpenAI-trained weights when inferring.
    A state dict without the text tower (a fine-tuned visual encoder) loads into
    the visual tower only; the text tower keeps its random init.
    """
    register_zoo_configs()
    sd = dict(state_dict) if state_dict is not None else None
    if sd is not None and any(k.startswith(("vision_model.", "text_model.")) for k in sd):
        from .checkpoints import from_hf_names

        sd = from_hf_names(sd)
    if arch is None:
        if sd is None:
            raise ValueError("build_model needs a state dict or an architecture")
        arch = infer_arch(sd)
    if isinstance(arch, str):
        if arch not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip architecture {arch!r}; known: zoo configs {list(ZOO_CONFIGS)} and open_clip's"
            )
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
    else:
        cfg = dict(arch)
        if "vision_config" in cfg:
            cfg = _hf_config_to_open_clip(cfg)
        elif "open_clip_cfg" in cfg:
            cfg = dict(cfg["open_clip_cfg"])
        qg = cfg.pop("quick_gelu", False) if quick_gelu is None else quick_gelu
        cfg.pop("quick_gelu", None)
        model = open_clip.CLIP(**cfg, quick_gelu=qg)
    model.eval()
    if sd is not None:
        own = model.state_dict()
        mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            k = mismatched[0]
            raise ValueError(
                f"state dict does not fit the architecture: {k} is {tuple(sd[k].shape)}, model expects {tuple(own[k].shape)}"
            )
        missing = model.load_state_dict(sd, strict=False).missing_keys
        visual_missing = [k for k in missing if k.startswith("visual.")]
        if visual_missing:
            raise ValueError(f"state dict lacks visual parameters, e.g. {visual_missing[:3]}")
    return model


# ---------------------------------------------------------------------------
# Preprocessing, features and zero-shot heads.
def preprocess(
    images: torch.Tensor,
    image_size: int | None = None,
    *,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalized with `mean`/`std` (CLIP's by default), resized to
    `image_size` if needed. The evaluator calls it per batch: callers never hold a split as float32."""
    x = images.float().div_(255)
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def image_size_of(model: open_clip.CLIP) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def tokenize(model: open_clip.CLIP, texts: list[str]) -> torch.Tensor:
    return open_clip.tokenize(texts, context_length=model.context_length)


def _text_fingerprint(model: open_clip.CLIP) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not name.startswith("visual."):
            d = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{float(d.sum()):.10e}{float(d.abs().sum()):.10e}".encode())
    return h.hexdigest()


_HEAD_CACHE: dict[tuple, torch.Tensor] = {}


@torch.no_grad()
def zero_shot_head(
    model: open_clip.CLIP,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    *,
    cache: bool = True,
) -> torch.Tensor:
    """Zero-shot classification head (C, D), as in task arithmetic (mlfoundations/task_vectors; docs/methods/steering.md).

    For each class every template is encoded by the text tower and L2-normalized;
    their mean is normalized again; rows are multiplied by exp(logit_scale).
    Logits = normalize(image_feature) @ head.T (bias 0). Cached by text-tower
    weights, class names and templates.
    """
    prompts_of = [[t(c) if callable(t) else t.format(c=c) for t in templates] for c in classnames]
    key = (_text_fingerprint(model), tuple(map(tuple, prompts_of))) if cache else None
    if key is not None and key in _HEAD_CACHE:
        return _HEAD_CACHE[key].clone()
    flat = [p for ps in prompts_of for p in ps]
    emb = F.normalize(model.encode_text(tokenize(model, flat)).float(), dim=-1)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    head = F.normalize(emb, dim=-1) * model.logit_scale.exp().float()
    if key is not None:
        _HEAD_CACHE[key] = head.clone()
    return head


def image_features(model: open_clip.CLIP, x: torch.Tensor, batch_size: int = 1024, bf16: bool = False) -> torch.Tensor:
    """L2-normalized image features (N, D) of preprocessed images (float32 result)."""
    outs = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), batch_size):
            outs.append(model.encode_image(x[i : i + batch_size]).float())
    if not outs:
        return torch.zeros(0, model.visual.output_dim)
    return F.normalize(torch.cat(outs), dim=-1)


# ---------------------------------------------------------------------------
# Loading weights in place.
@torch.no_grad()
def load_visual(model: open_clip.CLIP, state_dict: Mapping[str, torch.Tensor], *, visual_only: bool = True) -> None:
    """Copy the ``visual.*`` entries of `state_dict` (all entries if `visual_only=False`) into `model` in place.

    No rebuild, no re-allocation: each tensor is copied into the existing
    parameter (dtype converted). Keys the model does not have raise; visual keys
    absent from `state_dict` keep their current values.
    """
    own = model.state_dict(keep_vars=True)
    n = 0
    for k, v in state_dict.items():
        if visual_only and not k.startswith("visual."):
            continue
        target = own.get(k)
        if target is None:
            raise KeyError(f"the model has no parameter {k!r} (is the state dict for another architecture?)")
        if target.shape != v.shape:
            raise ValueError(f"{k}: state dict has shape {tuple(v.shape)}, model expects {tuple(target.shape)}")
        target.data.copy_(v)
        n += 1
    if n == 0:
        raise ValueError("no visual.* parameters in the state dict")
