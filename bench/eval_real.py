"""Evaluation at real-checkpoint scale: a ViT-B-32 (224 px) on eight JPEG image folders.

    PYTHONPATH=. python bench/eval_real.py [--quick] [--images 500] [--work DIR]

A random-init open_clip ViT-B-32 (no download) is saved as a model set's base; eight generated
JPEG folders (10 classes, photos of 240-400 px) are its tasks. In one run, on the device torch finds:

(a) the plain loop a user would write: torchvision ImageFolder + open_clip's preprocess +
    DataLoader(batch 64, 2 workers) + model, fp32, in images/s;
(b) this project's first evaluation: decode + resize + crop once into the uint8 on-disk cache,
    then one fp32 pass (the model build and zero-shot heads are one-time setup, reported apart);
(c) a repeated evaluation from the cache, fp32 and bf16 — (b) and (c) as ratios to (a);
(d) a "slider move" (a new visual state dict): time to the first numbers with 95% Wilson
    intervals (`Evaluator.rounds`), and to +-5 points on every task;
(e) peak RSS of a whole evaluation (cache build + one pass) in a fresh process for 500 vs 2,000
    images on one task (--quick: 200 vs 800): it must not grow with the number of images (the old evaluator held every
    image as float32: 0.6 MB per image at 224 px).

Targets on a 2-core CPU with AVX-512 BF16: (c) >= (a) in fp32 and >= 1.8x (a) in bf16; first
numbers <= 2 s after a move. The machine may be shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CLASSES = [f"class_{i}" for i in range(10)]
SIZES = [(320, 240), (256, 256), (300, 400), (400, 300), (240, 320)]


def make_images(root: Path, tasks: list[str], n: int) -> None:
    """n JPEGs per task (test split), 10 classes; class c tints channel c % 3 and draws a bar."""
    from PIL import Image

    for ti, t in enumerate(tasks):
        d = root / t / "test"
        have = sum(1 for _ in d.glob("*/*.jpg")) if d.exists() else 0
        if have == n:
            continue
        shutil.rmtree(root / t, ignore_errors=True)
        rng = np.random.default_rng(ti)
        for i in range(n):
            c = i % len(CLASSES)
            w, h = SIZES[i % len(SIZES)]
            a = rng.integers(0, 140, (h, w, 3), dtype=np.uint8)
            a[..., c % 3] += 100
            a[(c * h) // 12 : (c * h) // 12 + h // 10] = 255
            (d / CLASSES[c]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(d / CLASSES[c] / f"{i}.jpg", quality=90)


def write_model_set(work: Path, tasks: list[str], data: Path) -> Path:
    import open_clip

    from core.checkpoints import save_state_dict

    base = work / "base.safetensors"
    if not base.exists():
        torch.manual_seed(0)
        save_state_dict(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), base)
    doc = {"base": str(base), "arch": "ViT-B-32", "tasks": {t: {"data": str(data / t)} for t in tasks}}
    path = work / f"modelset-{len(tasks)}-{data.name}.json"
    path.write_text(json.dumps(doc))
    return path


def plain_loop(model, root: Path, tasks: list[str], heads: dict) -> tuple[float, int]:
    """(seconds, images): what a user writes without this project."""
    import open_clip
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    pre = open_clip.image_transform(224, is_train=False)
    n = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for t in tasks:
            dl = DataLoader(ImageFolder(str(root / t / "test"), transform=pre), batch_size=64, num_workers=2)
            for x, y in dl:
                f = F.normalize(model.encode_image(x), dim=-1)
                (f @ heads[t].T).argmax(1).eq(y).sum()
                n += len(y)
    return time.perf_counter() - t0, n


def rss_child(work: Path, n: int) -> None:
    """One fresh process: cache + one bf16 pass over one task of n images; prints peak RSS (MB)."""
    from core.evaluate import Evaluator
    from core.modelset import ModelSet

    data = work / f"data-rss-{n}"
    make_images(data, ["rss"], n)
    os.environ["MERGESCOPE_CACHE"] = str(work / f"cache-rss-{n}")
    shutil.rmtree(work / f"cache-rss-{n}", ignore_errors=True)
    ms = ModelSet.from_json(write_model_set(work, ["rss"], data))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ev = Evaluator.for_model_set(ms, "test", bf16=True)
    acc = ev.accuracy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "peak_rss_mb": peak, "rss_before_eval_mb": before, "acc": acc["rss"]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 images per task, RSS for 200 vs 800 images")
    p.add_argument("--images", type=int, default=None, help="test images per task (default 500)")
    p.add_argument("--work", default=None, help="work folder (default: <cache>/bench-eval-real)")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from core.runtime.paths import cache_dir

    work = Path(args.work) if args.work else cache_dir() / "bench-eval-real"
    work.mkdir(parents=True, exist_ok=True)
    if args.rss_child is not None:
        rss_child(work, args.rss_child)
        return 0

    n = args.images or (100 if args.quick else 500)
    rss_sizes = (200, 800) if args.quick else (500, 2000)
    tasks = [f"task{i}" for i in range(8)]
    data = work / f"data-{n}"
    print(f"generating {len(tasks)} x {n} JPEGs in {data} (reused across runs) ...", flush=True)
    make_images(data, tasks, n)
    ms_path = write_model_set(work, tasks, data)
    os.environ["MERGESCOPE_CACHE"] = str(work / "cache")
    shutil.rmtree(work / "cache", ignore_errors=True)

    from core.datasets import cached_images, open_dataset, transform_for
    from core.evaluate import Evaluator
    from core.models import build_model
    from core.modelset import ModelSet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch threads {torch.get_num_threads()}, load {os.getloadavg()}", flush=True)
    ms = ModelSet.from_json(ms_path)
    total = n * len(tasks)

    # one-time setup: the model and the zero-shot heads (built inside the evaluator; timed apart)
    t0 = time.perf_counter()
    model = build_model(ms.base(), ms.arch)
    t_model = time.perf_counter() - t0
    transform = transform_for(model)
    del model

    # (b) decode + cache, then the first pass
    t0 = time.perf_counter()
    for t in tasks:
        cached_images(open_dataset(data / t, name=t).split("test").paths, transform, desc=f"{t}: caching")
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = Evaluator.for_model_set(ms, "test", device=device)
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev.accuracy()
    t_first = time.perf_counter() - t0

    # (a) the plain loop, with the same model and heads
    heads = {t: ev.tasks[t].head.cpu() for t in tasks}
    plain_model = ev.model.cpu() if device == "cpu" else ev.model
    t_plain, n_plain = plain_loop(plain_model, data, tasks, heads)
    a = n_plain / t_plain

    # (c) repeated, from the cache
    t0 = time.perf_counter()
    ev.accuracy()
    t_fp32 = time.perf_counter() - t0
    bf = ev.with_settings(bf16=True)
    bf.accuracy(tasks=tasks[:1])  # autocast warm-up
    t0 = time.perf_counter()
    bf.accuracy()
    t_bf16 = time.perf_counter() - t0

    # (d) slider moves: a new visual state dict, first numbers and +-5 points on every task
    g = torch.Generator().manual_seed(1)
    moves = {}
    for name, view in (("fp32", ev), ("bf16", bf)):
        sd = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in ev.base_visual.items()}
        t0 = time.perf_counter()
        first = five = None
        for r in view.rounds(sd):  # first round sized from the measured speed (about 1 s)
            if first is None:
                first = (time.perf_counter() - t0, sum(e.n for e in r.values()))
            if all(e.half_width <= 0.05 for e in r.values()):
                five = (time.perf_counter() - t0, sum(e.n for e in r.values()))
                break
            if name == "fp32":  # fp32: first numbers only (the +-5 run would take minutes on a CPU)
                break
        moves[name] = (first, five)

    # (e) peak RSS in fresh processes
    rss = []
    for k in rss_sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(k), "--work", str(work)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", ".")},
        )
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        rss.append(json.loads(out.stdout.strip().splitlines()[-1]))

    load = os.getloadavg()
    print(f"\nViT-B-32 @224, {len(tasks)} tasks x {n} JPEG test images ({total}), device {device}")
    print(f"load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus")
    print(
        f"one-time setup: model {t_model:.1f} s; evaluator (model + {len(tasks)} zero-shot heads) {t_setup:.1f} s; ",
        end="",
    )
    print(f"batch size {ev.batch_size}")
    print(f"(a) plain loop (ImageFolder + open_clip preprocess + DataLoader x2 workers), fp32: {a:.1f} img/s")
    b = total / (t_cache + t_first)
    print(f"(b) first evaluation: decode+cache {t_cache:.1f} s + first pass {t_first:.1f} s = {b:.1f} img/s", end="")
    print(f" ({b / a:.2f}x (a))")
    c32, c16 = total / t_fp32, total / t_bf16
    print(f"(c) repeated from the cache: fp32 {c32:.1f} img/s ({c32 / a:.2f}x (a)), ", end="")
    print(f"bf16 {c16:.1f} img/s ({c16 / a:.2f}x (a))  [targets >= 1.0x, >= 1.8x]")
    for name, (first, five) in moves.items():
        line = f"(d) slider move, {name}: first numbers with intervals {first[0]:.2f} s ({first[1]} images)"
        if five is not None:
            line += f"; +-5 points on every task {five[0]:.1f} s ({five[1]} images)"
        print(line + ("  [target first <= 2 s]" if name == "bf16" else ""))
    for r in rss:
        old = r["n"] * 3 * 224 * 224 * 4 / 2**20
        mb = r["peak_rss_mb"]
        print(
            f"(e) peak RSS, 1 task x {r['n']} images: {mb:.0f} MB (old float32 evaluator's images alone: {old:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
