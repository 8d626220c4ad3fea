"""`python -m core export`: a built zoo as a self-contained model-set folder.

    python -m core export --zoo demo|styled|micro --out DIR [--cache C] [--force]

writes, with paths in modelset.json relative to it::

    DIR/base.safetensors                      the full open_clip base (visual and text towers)
    DIR/finetuned/<task>.safetensors          the fine-tuned visual towers (``visual.*``)
    DIR/data/<task>/{val,test}/<class>/<index>.png
                                              the zoo's val and test images, lossless RGB PNG;
                                              <class> = the class name with spaces as underscores,
                                              <index> = the image's position in the zoo's split,
                                              zero-padded to five digits (00000.png, 00001.png, ...)
    DIR/heads/<task>.safetensors              one float32 tensor "head" (classes, embed_dim)
    DIR/modelset.json                         {"base", "finetuned", "tasks": {task: {"data", "head",
                                              "classnames", "templates"}}, "arch": null}

The head is exactly the zoo's zero-shot head (`core.zoo.build.heads_of`, the tensor
`core.evaluate.Evaluator` classifies with): per class, the mean of the L2-normalized text
embeddings of the class's prompts, L2-normalized again, times exp(logit_scale) of the base
(CLIP's learned temperature, folded in). Logits are normalize(image_features) @ head.T; the
scale changes no argmax, only the softmax temperature. Each head file's metadata records
``logit_scale_folded`` and the scale's value.

Deterministic: the same built zoo gives byte-identical files (weights copied byte for byte,
images rendered by the seeded generator and written by Pillow's PNG encoder without
timestamps, JSON with fixed key order). The folder is written next to DIR and moved into place
when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ..checkpoints import save_state_dict
from ..cli.options import UserError, add_zoo_options, guarded
from ..models import build_model
from .build import build_command, heads_of, is_built, load_model_set
from .data import get_task, load_split

EXPORT_SPLITS = ("val", "test")
INDEX_DIGITS = 5


def class_folder(classname: str) -> str:
    """Folder name of a class: the class name with spaces as underscores."""
    return classname.replace(" ", "_")


def _templates(task: str) -> list[str]:
    spec = get_task(task)
    if not all(isinstance(t, str) for t in spec.templates):
        raise UserError(f"task {task!r} has callable prompt templates; modelset.json can hold only strings")
    return list(spec.templates)


def _write_png(img: torch.Tensor, path: Path) -> None:
    """(3, H, W) uint8 -> RGB PNG (lossless, no metadata)."""
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(path, format="PNG")


def export_zoo(
    kind: str,
    out: str | Path,
    cache: str | Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the built zoo of `kind` to `out` in the model-set folder layout above; returns `out`.

    `out` must not exist or be empty, unless `force` and it holds a modelset.json (a previous
    export, which is replaced). `progress(done, total)` counts files written.
    """
    if not is_built(kind, cache):
        raise UserError(f"the {kind} zoo is not built with the current recipe; build it with `{build_command(kind)}`")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (force and (out / "modelset.json").is_file()):
            hint = " (use --force to replace a previous export)" if (out / "modelset.json").is_file() else ""
            raise UserError(f"{out} exists and is not an empty folder{hint}")
    ms = load_model_set(kind, cache)
    tasks = list(ms.tasks)
    splits = {(t, s): load_split(t, s) for t in tasks for s in EXPORT_SPLITS}
    total = 2 + 2 * len(tasks) + sum(len(y) for _, y in splits.values())
    done = 0

    def step(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    work = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "finetuned").mkdir(parents=True)
        (work / "heads").mkdir()
        shutil.copyfile(ms.base_path, work / "base.safetensors")
        step()
        for t in tasks:
            shutil.copyfile(ms.finetuned_paths[t], work / "finetuned" / f"{t}.safetensors")
            step()
        model = build_model(ms.base())
        scale = float(model.logit_scale.detach().exp())
        for t, head in heads_of(model, tasks).items():
            meta = {"task": t, "logit_scale_folded": "true", "logit_scale": repr(scale)}
            save_state_dict(
                {"head": head.detach().float().contiguous()}, work / "heads" / f"{t}.safetensors", metadata=meta
            )
            step()
        for (t, s), (x, y) in splits.items():
            classnames = get_task(t).classnames
            folders = [work / "data" / t / s / class_folder(c) for c in classnames]
            for d in folders:
                d.mkdir(parents=True)
            for i, (img, label) in enumerate(zip(x, y.tolist())):
                _write_png(img, folders[label] / f"{i:0{INDEX_DIGITS}d}.png")
                step()
        doc = {
            "base": "base.safetensors",
            "finetuned": {t: f"finetuned/{t}.safetensors" for t in tasks},
            "tasks": {
                t: {
                    "data": f"data/{t}",
                    "head": f"heads/{t}.safetensors",
                    "classnames": list(get_task(t).classnames),
                    "templates": _templates(t),
                }
                for t in tasks
            },
            "arch": None,
        }
        (work / "modelset.json").write_text(json.dumps(doc, indent=2) + "\n")
        step()
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m core export",
        description="Write a built demo zoo as a self-contained model-set folder (weights, heads, PNG data, "
        "modelset.json).",
    )
    add_zoo_options(ap)
    ap.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    ap.add_argument("--force", action="store_true", help="replace a previous export in --out")

    def run(args) -> int:
        from tqdm import tqdm

        with tqdm(desc="export", unit="file", file=sys.stderr) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            path = export_zoo(args.zoo, args.out, args.cache, force=args.force, progress=progress)
        print(f"exported the {args.zoo} zoo to {path} (modelset.json)")
        return 0

    return guarded(lambda: run(ap.parse_args(argv)))
