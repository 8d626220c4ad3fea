"""Check checkpoints before task vectors or merges: keys, shapes, dtypes, architecture, finite values.

- `validate_checkpoints` compares state dicts already in memory against the base (one `Issue`
  per key).
- `validate_model_set` checks a model set's files before it is accepted: it reads headers first
  (safetensors headers, memory-mapped torch files; no tensor data) to catch unreadable files,
  other architectures, shape / key / dtype mismatches and checkpoints without transformer
  blocks, then streams every tensor once, one at a time, for NaN/Inf. The result is a
  `ValidationReport` grouped by kind, most serious first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..layers import num_blocks
from .formats import dtype_name
from .info import architecture
from .load import canonicalize, iter_tensors, read_raw
from .report import Issue, ValidationReport


def _tower(key: str) -> str:
    return "visual" if key.startswith("visual.") else "text"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def all_finite(t: torch.Tensor) -> bool:
    """True when `t` holds no NaN/Inf; a sum first (NaN and Inf always survive a sum), exact check if it overflows.

    A finite sum proves every element finite; summing is ~10x faster than ``isfinite(t).all()``
    (no boolean tensor), which runs only when the sum is not finite (a NaN/Inf, or an overflow).
    """
    try:
        acc = t.sum(dtype=torch.float32) if t.is_floating_point() and t.element_size() < 4 else t.sum()
        if bool(torch.isfinite(acc).all()):
            return True
    except (RuntimeError, TypeError):  # dtypes without a sum kernel (float8): the exact check below
        pass
    return bool(torch.isfinite(t).all())


def nonfinite_issues(tensors: Iterable[tuple[str, torch.Tensor]], file: str) -> list[Issue]:
    """One error per tensor and kind (NaN, Inf) of non-finite value, with the count; meta tensors are skipped."""
    issues = []
    for k, t in tensors:
        if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta" or all_finite(t):
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        for count, what in ((n_nan, "NaN"), (n_inf, "Inf")):
            if count:
                message = (
                    f"{file}: key '{k}' contains {count} {what} value(s) out of {t.numel()}; "
                    "expected finite numbers (the fine-tune diverged or the file is damaged)"
                )
                issues.append(Issue("error", file, k, message, "nonfinite"))
    return issues


def validate_checkpoints(
    base_sd: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    paths: Mapping[str, str | os.PathLike] | None = None,
) -> list[Issue]:
    """Check fine-tuned state dicts against the base before computing task vectors or merging.

    Errors: keys missing from a tower the fine-tune covers, floating-point keys the base
    lacks, shape mismatches, float vs non-float dtype mismatches, NaN/Inf entries (in any
    checkpoint, base included). Warnings: extra non-float buffers, precision mismatches
    within floats or within integers (castable).
    A tower absent altogether (a visual-only fine-tune of a full CLIP base) is not an issue:
    the base's tower passes through merges unchanged.
    `paths` maps names (and optionally "base") to file paths for the messages; else names are used.
    Tensors on the meta device (shapes only) are compared but not checked for NaN/Inf.
    """
    paths = paths or {}
    base_file = str(paths.get("base", "base"))
    issues = nonfinite_issues(base_sd.items(), base_file)
    for name, sd in finetuned.items():
        file = str(paths.get(name, name))
        towers = {_tower(k) for k in sd}
        for k in base_sd:
            if k not in sd and _tower(k) in towers:
                b = base_sd[k]
                message = (
                    f"{file}: key '{k}' is missing; expected it as in the base checkpoint "
                    f"(shape {_shape(b)}, {dtype_name(b)})"
                )
                issues.append(Issue("error", file, k, message, "missing_key"))
        for k, t in sd.items():
            if k not in base_sd:
                # task_vector needs a base entry for every floating-point key; other buffers are skipped.
                float_key = t.is_floating_point()
                message = (
                    f"{file}: key '{k}' is not in the base checkpoint; expected only the base's keys "
                    "(no task vector can be computed for it — was it fine-tuned from a different base?)"
                )
                issues.append(
                    Issue(
                        "error" if float_key else "warning",
                        file,
                        k,
                        message,
                        "extra_key" if float_key else "extra_buffer",
                    )
                )
                continue
            b = base_sd[k]
            if tuple(t.shape) != tuple(b.shape):
                message = (
                    f"{file}: key '{k}' has shape {_shape(t)}, expected {_shape(b)} as in the base "
                    "(a different architecture?)"
                )
                issues.append(Issue("error", file, k, message, "shape"))
            if t.dtype != b.dtype:
                # float16 vs float32 is cast by task_vector; float vs integer means a different tensor.
                castable = t.is_floating_point() == b.is_floating_point()
                message = f"{file}: key '{k}' has dtype {dtype_name(t)}, expected {dtype_name(b)} as in the base" + (
                    " (it will be cast)" if t.is_floating_point() and castable else ""
                )
                issues.append(
                    Issue("warning" if castable else "error", file, k, message, "dtype_cast" if castable else "dtype")
                )
        issues.extend(nonfinite_issues(sd.items(), file))
    return issues


# ------------------------------------------------------------------------------------------ model sets


def _blocks(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Residual blocks per tower present: {"visual": n, "text": m}."""
    towers = {_tower(k) for k in sd}
    out = {}
    if "visual" in towers:
        out["visual"] = num_blocks(sd, prefix="visual.")
    if "text" in towers:
        out["text"] = num_blocks(sd, prefix="transformer.")
    return out


def _architecture_issue(base: Mapping, ft: Mapping, file: str) -> Issue | None:
    """One error for a fine-tune whose key set is not the base's (other blocks, other layers), else None.

    A fine-tune is "another architecture" when a tower it shares with the base has another
    number of blocks, or when fewer than half of the keys (of the base's covered towers, or of
    the fine-tune) are shared. Smaller differences are reported key by key (missing / extra).
    """
    towers = {_tower(k) for k in ft}
    expected = [k for k in base if _tower(k) in towers]
    missing = [k for k in expected if k not in ft]
    extra = [k for k in ft if k not in base]
    shared = len(expected) - len(missing)
    b_blocks, f_blocks = _blocks(base), _blocks(ft)
    other_blocks = [t for t in f_blocks if t in b_blocks and f_blocks[t] != b_blocks[t]]
    if not other_blocks and 2 * shared >= max(len(expected), len(ft)):
        return None
    if other_blocks:
        t = other_blocks[0]
        what = f"its {t} tower has {f_blocks[t]} transformer blocks, the base's {b_blocks[t]}"
    else:
        what = f"only {shared} of its {len(ft)} tensors are in the base"
    if "visual" in towers and "visual.conv1.weight" in ft and "visual.conv1.weight" in base:
        what += f" ({architecture(ft)['architecture']} vs the base's {architecture(base)['architecture']})"
    examples = [f"'{k}'" for k in extra[:2]] + [f"no '{k}'" for k in missing[:1]]
    message = (
        f"{file}: another architecture than the base: {what}; {len(missing)} of the base's tensors are missing "
        f"and {len(extra)} are not in the base (e.g. {', '.join(examples)})"
    )
    return Issue("error", file, "", message, "architecture")


def _no_blocks_issue(sd: Mapping, file: str) -> Issue | None:
    if num_blocks(sd, prefix="visual.") or num_blocks(sd, prefix="transformer."):
        return None
    message = (
        f"{file}: no transformer blocks found ({len(sd)} tensor(s), none like "
        "'visual.transformer.resblocks.0.*'); per-block analyses will be empty"
    )
    return Issue("warning", file, "", message, "no_blocks")


def _read_headers(path: Path, file: str, allow_pickle: bool) -> tuple[dict | None, Issue | None]:
    """(canonical state dict of meta tensors, None) or (None, the "unreadable" issue)."""
    try:
        raw, _container = read_raw(path, allow_pickle=allow_pickle, meta=True)
        if not raw:
            raise CheckpointError(f"{file}: the checkpoint holds no tensors")
        sd, _layout = canonicalize(raw, file)
        return sd, None
    except CheckpointError as e:
        return None, Issue("error", file, "", str(e), "unreadable")
    except OSError as e:  # permissions, a directory vanishing between listing and reading
        return None, Issue("error", file, "", f"{file}: cannot read ({e.strerror or e})", "unreadable")


def validate_model_set(
    base_path: str | os.PathLike,
    finetuned_paths: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike],
    *,
    check_finite: bool = True,
    allow_pickle: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> ValidationReport:
    """Check a model set's files before it is used; never raises for a bad file, reports it.

    `finetuned_paths` maps task names to paths (or is a list of paths, named by file stem).
    Pass 1 reads headers only: unreadable or non-checkpoint files, another architecture,
    shape / dtype / key mismatches against the base (`validate_checkpoints` on shapes), and
    files with zero transformer blocks (a warning). Pass 2 (`check_finite`) streams every
    floating-point tensor once, one at a time, counting NaN and Inf per tensor.
    `progress(label, done, total)` is called before each file of each pass.
    """
    if not isinstance(finetuned_paths, Mapping):
        finetuned_paths = {Path(p).stem: p for p in finetuned_paths}
    roles = {"base": Path(base_path), **{str(t): Path(p) for t, p in finetuned_paths.items()}}
    files = {role: str(p) for role, p in roles.items()}
    total = len(roles) * (2 if check_finite else 1)
    report = progress or (lambda label, done, n: None)
    issues: list[Issue] = []
    headers: dict[str, dict] = {}
    for step, (role, path) in enumerate(roles.items()):
        report(f"reading the header of {role}", step, total)
        sd, problem = _read_headers(path, files[role], allow_pickle)
        if problem is not None:
            issues.append(problem)
        else:
            headers[role] = sd
    base = headers.get("base")
    for role, sd in headers.items():
        file = files[role]
        arch = None if base is None or role == "base" else _architecture_issue(base, sd, file)
        if arch is not None:
            issues.append(arch)
            continue
        blocks = _no_blocks_issue(sd, file)
        if blocks is not None:
            issues.append(blocks)
        if base is not None and role != "base":
            issues.extend(validate_checkpoints(base, {role: sd}, paths={role: file}))
    if check_finite:
        for step, role in enumerate(roles, start=len(roles)):
            report(f"checking the values of {role}", step, total)
            if role not in headers:
                continue
            try:
                issues.extend(nonfinite_issues(iter_tensors(roles[role], allow_pickle=allow_pickle), files[role]))
            except CheckpointError as e:
                issues.append(Issue("error", files[role], "", str(e), "unreadable"))
    report("done", total, total)
    # The same file may play two roles (e.g. the base listed as a fine-tune too): report it once.
    return ValidationReport(issues=tuple(dict.fromkeys(issues)), files=files, checked_finite=check_finite)
