"""The headless commands: merge, eval, sweep, analyze (``python -m core <command> ...``).

They read the same JSON specs the app writes (core.spec.RunConfig; core.sweeps.SweepSpec
for sweeps), so any result seen in the UI reproduces from a shell:

    python -m core merge   --config spec.json --out merged.safetensors [--hf-names] [--allow-nonfinite]
    python -m core eval    --config spec.json [--split val|test] [--json] [--allow-nonfinite]
    python -m core sweep   --config sweep.json [--processes N] [--ray ADDRESS] [--out grid.csv] [--json]
                           [--allow-nonfinite]
    python -m core analyze (--zoo demo|styled|micro | --model-set DIR/modelset.json
                            | --base B.safetensors --finetuned task=FT.safetensors ...)
                           --what norms|spectra|scopes [--tower visual|text] [--out table.csv]

A spec's "model_set" is a zoo ({"zoo": "styled"}, the default), a model set JSON ({"path": "DIR/modelset.json"}),
or the model set object inline (see core.modelset.ModelSet.from_json and docs/methods/evaluation.md).

Evaluations and sweeps are appended to the run log (core.runs; --no-log to skip).
Bad input (missing file, bad JSON, unknown method, parameter or task) prints one
line starting with "error:" and exits with status 1 (2 for bad command-line usage); so do
checkpoints holding NaN/Inf (naming the checkpoint and the tensor) unless --allow-nonfinite.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import ModelSetError
from ..spec import EvalSpec, MergeSpec, ModelSetRef, RunConfig
from .options import ZOO_KINDS, UserError, guarded, message


# --------------------------------------------------------------------------- config reading
def _read_json(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file {p} does not exist")
    if p.is_dir():
        raise UserError(f"config {p} is a directory, expected a JSON file")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{p} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    if not isinstance(d, dict):
        raise UserError(f"{p} must hold a JSON object with keys model_set, merge, eval")
    return d


def load_run_config(path: str) -> RunConfig:
    """A RunConfig from JSON, with every problem reported as a UserError naming the file."""
    d = _read_json(path)
    unknown = set(d) - {"model_set", "merge", "eval"}
    if unknown:
        hint = " (a sweep spec? use `python -m core sweep`)" if "grid" in unknown else ""
        raise UserError(f"{path}: unknown key(s) {sorted(unknown)}; expected model_set, merge, eval{hint}")
    try:
        return RunConfig.from_dict(d)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: {message(e)}") from e


def load_sweep_spec(path: str):
    from ..sweeps import SweepSpec

    d = _read_json(path)
    try:
        return SweepSpec.from_dict(d)
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: {message(e)}") from e


def load_model_set(ref: ModelSetRef):
    from ..sweeps import model_set_for

    try:
        ms = model_set_for(ref)
    except (FileNotFoundError, ModelSetError) as e:
        raise UserError(str(e)) from e
    for p in [ms.base_path, *ms.finetuned_paths.values()]:
        if not Path(p).exists():
            raise UserError(f"checkpoint {p} does not exist")
    return ms


def check_tasks(ms, merge: MergeSpec, es: EvalSpec | None = None) -> None:
    bad = [t for t in (merge.tasks or ()) if t not in ms.tasks]
    if bad:
        raise UserError(f"unknown task(s) {bad} in merge.tasks; this model set has {ms.tasks}")
    if es is not None and es.tasks:
        bad = [t for t in es.tasks if t not in ms.eval_tasks]
        if bad:
            raise UserError(f"unknown task(s) {bad} in eval.tasks; this model set evaluates {ms.eval_tasks}")


# --------------------------------------------------------------------------- merge
def merge_from_config(config: RunConfig, ms=None, *, allow_nonfinite: bool = False, device="auto") -> dict:
    """core.merging.merge applied to the spec: exactly what the Merge lab computes (on `device`: "auto",
    "cpu", "cuda[:i]" or a torch.device; core.runtime.devices.resolve_device)."""
    from ..merging import merge

    ms = ms or load_model_set(config.model_set)
    spec = config.merge
    check_tasks(ms, spec)
    tasks = list(spec.tasks) if spec.tasks else ms.tasks
    return merge(
        ms.base(),
        {t: ms.finetuned(t) for t in tasks},
        spec.method,
        lines=spec.lines,
        curve=spec.curve,
        outside=spec.outside,
        output_as_last_block=spec.output_as_last_block,
        allow_nonfinite=allow_nonfinite,
        device=device,
        **spec.param_dict,
    )


def cmd_merge(args) -> int:
    from ..checkpoints import save_state_dict

    config = load_run_config(args.config)
    from ..runtime.devices import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as e:  # a forced GPU that torch does not see, an unknown device
        raise UserError(str(e)) from e
    sd = merge_from_config(config, allow_nonfinite=args.allow_nonfinite, device=device)
    meta = {"mergescope_config": config.to_json()}
    try:
        save_state_dict(sd, args.out, hf_names=args.hf_names, metadata=meta)
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror or e}") from e
    print(f"wrote {args.out} ({len(sd)} tensors, method {config.merge.method})")
    return 0


# --------------------------------------------------------------------------- eval
def evaluate_config(config: RunConfig, *, ms=None, executor=None, allow_nonfinite: bool = False) -> dict:
    """Merge and evaluate one RunConfig on its split: accuracy per task, zero-shot and fine-tuned
    references on the same split, avg_abs and avg_norm (acc / acc_finetuned)."""
    from ..sweeps import evaluate_specs

    ms = ms or load_model_set(config.model_set)
    check_tasks(ms, config.merge, config.eval)
    rows, refs = evaluate_specs(
        config.model_set, [config.merge], config.eval, executor=executor, model_set=ms, allow_nonfinite=allow_nonfinite
    )
    r = rows[0]
    table = refs.assign(accuracy=refs["task"].map(r["accuracy"]))
    table["normalized"] = table["accuracy"] / table["finetuned"]
    n_images, notes = _images_and_notes(ms, config.eval, list(table["task"]))
    table["n_images"] = table["task"].map(n_images)
    return {
        "n_images": n_images,
        "notes": notes,
        "split": config.eval.split,
        "accuracy": r["accuracy"],
        "avg_abs": r["avg_abs"],
        "avg_norm": r["avg_norm"],
        "lines_alpha": r["alpha"],
        "table": table[["task", "accuracy", "normalized", "zero_shot", "finetuned", "n_images"]],
        "fingerprint": ms.fingerprint(),
        "model_set": ms.to_json_dict()
        if getattr(ms, "zoo_dir", None) is None and hasattr(ms, "to_json_dict")
        else None,
    }


def _images_and_notes(ms, es: EvalSpec, tasks: list[str]) -> tuple[dict, dict[str, list[str]]]:
    """How many images each task's accuracy rests on, and what the data readers reported (the same
    cached evaluator the evaluation used: no second pass over the data)."""
    from ..sweeps import make_evaluator

    ev = make_evaluator(ms, es)
    if not hasattr(ev, "num_images"):  # a stand-in evaluator (tests) that does not count
        return {t: None for t in tasks}, {}
    counts, notes = ev.num_images(), ev.notes()
    return {t: int(counts[t]) for t in tasks}, {t: notes[t] for t in tasks if t in notes}


def format_eval_table(res: dict) -> str:
    t = res["table"].copy()
    avg = {
        "task": "average",
        "accuracy": res["avg_abs"],
        "normalized": res["avg_norm"],
        "zero_shot": t["zero_shot"].mean(),
        "finetuned": t["finetuned"].mean(),
        "n_images": t["n_images"].sum(min_count=1),
    }
    t = pd.concat([t, pd.DataFrame([avg])], ignore_index=True)
    return t.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def cmd_eval(args) -> int:
    from dataclasses import replace

    config = load_run_config(args.config)
    if args.split:
        config = replace(config, eval=replace(config.eval, split=args.split))
    if config.eval.split not in ("val", "test"):
        raise UserError(f"eval.split must be 'val' or 'test', got {config.eval.split!r}")
    res = evaluate_config(config, allow_nonfinite=args.allow_nonfinite)
    metrics = {k: res[k] for k in ("split", "accuracy", "avg_abs", "avg_norm", "lines_alpha", "n_images")}
    metrics["references"] = res["table"][["task", "zero_shot", "finetuned", "n_images"]].to_dict(orient="records")
    for task, lines in res["notes"].items():
        for line in lines:
            print(f"note: {task}: {line}", file=sys.stderr)
    run_id = None
    if not args.no_log:
        from ..runtime.runlog import RunLog

        logged = dict(metrics)
        if res.get("model_set") is not None:  # a model set JSON: log what it resolved to, not only its path
            logged["model_set"] = res["model_set"]
        run_id = RunLog().log("eval", config.to_dict(), logged, res["fingerprint"], seed=config.eval.seed)
    if args.json:
        print(json.dumps({**metrics, "run_id": run_id}, indent=2, sort_keys=True))
    else:
        print(f"{config.merge.method} on {config.eval.split}" + (f" (run {run_id})" if run_id else ""))
        print(format_eval_table(res))
    return 0


# --------------------------------------------------------------------------- sweep
def _stderr_progress(done: int, total: int) -> None:
    print(f"\r  {done}/{total} evaluations", end="" if done < total else "\n", file=sys.stderr, flush=True)


def run_sweep_config(
    spec,
    *,
    processes: int | None = None,
    ray: str | None = None,
    log: bool = True,
    quiet=False,
    allow_nonfinite: bool = False,
):
    """core.sweeps.run_sweep with the executor the flags ask for (the path bench/ uses too)."""
    from ..runtime.executors import get_executor
    from ..sweeps import run_sweep

    ms = load_model_set(spec.model_set)
    check_tasks(ms, spec.merge, spec.eval)
    try:
        executor = get_executor(ray, processes)
    except RuntimeError as e:
        raise UserError(str(e)) from e
    with executor:
        return run_sweep(
            spec,
            executor=executor,
            model_set=ms,
            progress=None if quiet else _stderr_progress,
            cancel=threading.Event(),
            log=log,
            allow_nonfinite=allow_nonfinite,
        )


def cmd_sweep(args) -> int:
    spec = load_sweep_spec(args.config)
    res = run_sweep_config(
        spec,
        processes=args.processes,
        ray=args.ray,
        log=not args.no_log,
        quiet=args.json,
        allow_nonfinite=args.allow_nonfinite,
    )
    if args.out:
        res.frame.to_csv(args.out, index=False)
    if args.json:
        print(json.dumps({**res.metrics(), "run_id": res.run_id}, indent=2, sort_keys=True, default=_jsonable))
        return 0
    cols = ["point", *res.tasks, "avg_abs", "avg_norm"]
    print(f"{spec.merge.method} sweep on val ({len(res.frame)} points, {res.executor}, {res.seconds:.1f} s)")
    print(res.frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if res.best:
        print(f"\nbest on val: {res.best['point']}  avg_norm {res.best['avg_norm']:.4f}")
    if res.test:
        print(f"on test:     avg_abs {res.test['avg_abs']:.4f}  avg_norm {res.test['avg_norm']:.4f}")
    if res.run_id:
        print(f"logged as run {res.run_id}")
    return 0


def _jsonable(v):
    if hasattr(v, "item"):
        return v.item()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return str(v)


# --------------------------------------------------------------------------- analyze
def _parse_finetuned(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--finetuned expects task=path, got {it!r}")
        task, path = it.split("=", 1)
        out[task.strip()] = path.strip()
    return out


def analyze_table(ms, what: str, tower: str = "visual") -> pd.DataFrame:
    """One tower's per-layer table (blocks are numbered within the tower, core.layers).

    norms: per (task, block) task-vector norms; spectra: per (model, matrix) spectral metrics of
    the base and of every task vector; scopes: per (model, tensor/block) weight scopes.
    """
    if what not in ("norms", "spectra", "scopes"):
        raise UserError(f"--what must be norms, spectra or scopes, got {what!r}")
    from ..layers import select_tower

    try:  # the fine-tuned checkpoints decide which towers there are to analyse
        select_tower(ms.finetuned(ms.tasks[0]), tower)
    except ValueError as e:
        raise UserError(f"--tower {tower}: {e}") from e
    if what == "norms":
        from ..task_vectors import block_table

        return block_table(ms.base(), ms.task_vectors(), tower=tower)
    if what == "spectra":
        from ..spectra import spectral_table

        parts = [spectral_table(ms.base(), tower=tower).assign(model="base")]
        for t in ms.tasks:
            parts.append(spectral_table(ms.task_vector(t), tower=tower).assign(model=f"task vector {t}"))
        return pd.concat(parts, ignore_index=True)
    from ..scopes import weight_scopes

    keys = set(ms.finetuned(ms.tasks[0]))
    base = {k: v for k, v in ms.base().items() if k in keys}
    parts = [weight_scopes(base, tower=tower).assign(model="base")]
    for t in ms.tasks:
        parts.append(weight_scopes(ms.finetuned(t), tower=tower).assign(model=t))
    return pd.concat(parts, ignore_index=True)


def cmd_analyze(args) -> int:
    given = [bool(args.zoo), bool(args.model_set), bool(args.base or args.finetuned)]
    if sum(given) > 1:
        raise UserError("give one of --zoo, --model-set or --base/--finetuned")
    if args.zoo:
        ref = ModelSetRef(zoo=args.zoo)
    elif args.model_set:
        ref = ModelSetRef(zoo=None, path=args.model_set)
    elif args.base and args.finetuned:
        ref = ModelSetRef(zoo=None, base=args.base, finetuned=tuple(sorted(_parse_finetuned(args.finetuned).items())))
    else:
        raise UserError(
            "analyze needs --zoo demo|styled|micro, --model-set modelset.json, or --base PATH and --finetuned task=PATH ..."
        )
    ms = load_model_set(ref)
    if not ms.tasks:
        raise UserError(f"model set {ms.name!r} has no fine-tuned checkpoints to analyze")
    table = analyze_table(ms, args.what, args.tower)
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out} ({len(table)} rows)")
    else:
        print(table.to_string(index=False, max_rows=60))
    return 0


# --------------------------------------------------------------------------- entry point
def _add_nonfinite_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="merge checkpoints holding NaN/Inf anyway (default: refuse, naming the tensor); the result carries them",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="MergeScope headless commands")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge a model set from a spec JSON and write safetensors")
    m.add_argument("--config", required=True, help="RunConfig JSON (model_set, merge, eval)")
    m.add_argument("--out", required=True, help="output .safetensors file")
    m.add_argument("--hf-names", action="store_true", help="write Hugging Face CLIP parameter names")
    m.add_argument(
        "--device", default="auto", help="where the merge computes: auto (CUDA when torch sees a GPU), cpu, cuda[:i]"
    )
    _add_nonfinite_option(m)
    m.set_defaults(fn=cmd_merge)

    e = sub.add_parser("eval", help="merge and evaluate a spec on every task")
    e.add_argument("--config", required=True)
    e.add_argument("--split", choices=("val", "test"), help="override eval.split")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--no-log", action="store_true", help="do not append to the run log")
    _add_nonfinite_option(e)
    e.set_defaults(fn=cmd_eval)

    s = sub.add_parser("sweep", help="grid over lambda or LiNeS (alpha, beta) on val; best point on test")
    s.add_argument("--config", required=True, help="sweep JSON (model_set, merge, eval, grid)")
    s.add_argument("--processes", type=int, default=None, help="local worker processes (0: in this process)")
    s.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on a Ray cluster: ray://host:10001, auto, or local (needs the ray package)",
    )
    s.add_argument("--out", help="write the grid (one row per point) as CSV")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-log", action="store_true")
    _add_nonfinite_option(s)
    s.set_defaults(fn=cmd_sweep)

    a = sub.add_parser("analyze", help="per-layer tables: task-vector norms, spectra, scopes")
    a.add_argument("--zoo", choices=ZOO_KINDS)
    a.add_argument("--model-set", metavar="JSON", help="a model set JSON (or a folder holding modelset.json)")
    a.add_argument("--base", help="base checkpoint (any supported format)")
    a.add_argument("--finetuned", nargs="+", default=[], metavar="TASK=PATH")
    a.add_argument("--what", required=True, choices=("norms", "spectra", "scopes"))
    a.add_argument(
        "--tower", choices=("visual", "text"), default="visual", help="which tower's blocks (default: visual)"
    )
    a.add_argument("--out", help="CSV path (default: print)")
    a.set_defaults(fn=cmd_analyze)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """argv[0] is the command (merge, eval, sweep, analyze). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        args = build_parser().parse_args(argv)
        return args.fn(args)

    return guarded(run)


if __name__ == "__main__":
    raise SystemExit(main())
