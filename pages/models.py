"""Models: choose the model set (a zoo, files on the server, or uploads) and check it."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from core.checkpoints import DIRECTORY_WEIGHT_FILES, SUPPORTED_SUFFIXES
from core.cli.options import DEFAULT_ZOO, ZOO_KINDS
from core.datasets.check import check_tasks
from core.runtime.paths import export_dir
from core.spec import ModelSetRef
from ui import errors
from ui import state as S

UPLOAD_LIMIT_MB = 200  # Streamlit's default server.maxUploadSize; larger checkpoints go by path

REFUSED_KEY = "_models_refused"  # (what was tried, ValidationReport or a message) of the last refused set
VALIDATED_KEY = "_validated"  # ms_key of the set whose values were checked (full report in the store)


def _accept(ref: ModelSetRef, what: str) -> None:
    """Validate the set `ref` names; make it the active set only when the report has no errors."""
    st.session_state.pop(REFUSED_KEY, None)
    try:
        ms = ref.load()  # paths only, no weights
    except Exception as e:  # a zoo that is not built, an incomplete ref: one message, no traceback
        st.session_state[REFUSED_KEY] = (what, f"Cannot open {what}: {e}")
        st.rerun()
    try:  # a big set is accepted from its headers (seconds); its values are checked on request
        report = S.validation_report(ms, check_finite=S.set_bytes(ms) < S.AUTO_CHECK_BYTES)
    except Exception as e:  # validate_model_set reports bad files itself; this is the last resort
        st.session_state[REFUSED_KEY] = (what, f"Checking {what} failed ({type(e).__name__}: {e})")
        st.rerun()
    if not report.ok:
        st.session_state[REFUSED_KEY] = (what, report)
        st.rerun()
    bad = [c for c in check_tasks(ms) if not c.ok]  # data splits, heads vs classes, zero-shot possible
    if bad:
        lines = "\n".join(f"- {c.message}" for c in bad)
        st.session_state[REFUSED_KEY] = (what, f"**Not loaded: {what}.** Task problems:\n{lines}")
        st.rerun()
    S.set_model_set(ref)
    if report.checked_finite:  # a big set accepted from its headers has its values checked on request only
        st.session_state[VALIDATED_KEY] = S.ms_key(ms)
    st.rerun()


def _show_refusal() -> None:
    refused = st.session_state.get(REFUSED_KEY)
    if not refused:
        return
    what, result = refused
    if isinstance(result, str):
        st.error(result)
        return
    kinds = [g.title for g in result.groups if g.level == "error"]
    st.error(f"**Not loaded: {what}.** Found: {'; '.join(kinds)}. Fix the files named below and try again.")
    errors.show_report(result)


st.title("Models")
st.caption(
    "A model set is one pretrained **base** plus **fine-tuned** checkpoints of it, one per task. "
    "Weights are read lazily and kept in memory once per server, so switching pages never reloads them."
)
st.markdown(
    "**What to look for:** "
    "the validation report, problems grouped by kind with the most serious first, before any page uses a model set."
)


def _zoo_tab() -> None:
    try:
        from core import zoo
    except ImportError:
        st.warning("The zoo module (core/zoo/) is not available in this checkout.")
        return
    st.markdown(
        "The **zoo**: a small CLIP-style ViT pretrained here on synthetic captioned images, and one "
        "visual encoder fine-tuned per task (digits, shapes, letters, counts, ...), with zero-shot heads — task "
        f"arithmetic in miniature. Built once into `{zoo.cache_dir()}`; later starts are instant."
    )
    current = S.current_ref()
    labels = {
        "styled": "styled (the default: style-shifted tasks, the merge methods separate; ~3.5 min to build)",
        "demo": "demo (the first recipe: easier tasks, methods within a point; ~2.5 min to build)",
        "micro": "micro (tiny, seconds)",
    }
    kinds = list(ZOO_KINDS)
    kind = st.radio(
        "Zoo",
        kinds,
        horizontal=True,
        key="zoo_kind",
        index=kinds.index(current.zoo if current is not None and current.zoo in kinds else DEFAULT_ZOO),
        format_func=lambda k: labels.get(k, k),
    )
    built = zoo.is_built(kind)
    c1, c2 = st.columns([1, 3])
    if not built and _has_build(zoo, kind):
        c2.caption("An older build (earlier recipe) is on disk: load it, or rebuild with the current recipe.")
        if c1.button(f"Load the older {kind} zoo", key="zoo_load_old"):
            _accept(ModelSetRef(zoo=kind), f"the {kind} zoo")
    if built:
        if c1.button(f"Load the {kind} zoo", type="primary", key="zoo_load"):
            _accept(ModelSetRef(zoo=kind), f"the {kind} zoo")
        c2.caption("Built and cached on disk.")
    else:
        c2.caption("Not built yet: building trains the models on this machine's CPU (or GPU).")
        if c1.button(f"Build the {kind} zoo", type="primary", key="zoo_build"):
            cb = S.progress_callback(f"Building the {kind} zoo")
            try:
                zoo.build_zoo(kind=kind, progress=cb)
            except Exception as e:
                cb.fail(f"Building the {kind} zoo failed: {e}")
                return
            cb.finish(f"The {kind} zoo is built")
            _accept(ModelSetRef(zoo=kind), f"the {kind} zoo")


def _has_build(zoo, kind: str) -> bool:
    try:
        zoo.load_model_set(kind)
        return True
    except Exception:
        return False


def _checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoints inside a folder: weight files, or sub-folders holding a known weight file."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in SUPPORTED_SUFFIXES:
            out.append(p)
        elif p.is_dir() and any((p / f).exists() for f in DIRECTORY_WEIGHT_FILES):
            out.append(p)
    return out


def _task_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


MODELSET_ROWS = pd.DataFrame(
    {"task": [""], "finetuned": [""], "data": [""], "head": [""], "classnames": [""]}, dtype="string"
)


def _modelset_dict(base: str, rows: pd.DataFrame) -> dict:
    """The modelset.json object from the form (absolute paths as typed; blank cells left out)."""
    finetuned, tasks = {}, {}
    for r in rows.fillna("").astype(str).to_dict("records"):
        task = r["task"].strip()
        if not task:
            continue
        if r["finetuned"].strip():
            finetuned[task] = r["finetuned"].strip()
        t = {}
        for k in ("data", "head"):
            if r[k].strip():
                t[k] = r[k].strip()
        if r["classnames"].strip():
            t["classnames"] = [c.strip() for c in r["classnames"].split(",") if c.strip()]
        if t:
            tasks[task] = t
    out = {"base": base.strip(), "finetuned": finetuned}
    if tasks:
        out["tasks"] = tasks
    return out


def _modelset_tab() -> None:
    st.markdown(
        "**Your own models on your own data.** A `modelset.json` names the base, one fine-tuned checkpoint per "
        "task and, per task, an image folder (`root/<split>/<class>/*.png`) or a CSV (`path,label[,split]`) "
        "and optionally a head file or class names. Paths are relative to the JSON file. "
        "`python -m core export --out DIR` writes a complete example (the zoo's)."
    )
    path = st.text_input("modelset.json on the server", key="ms_json_path", placeholder="/data/vit-b32/modelset.json")
    if st.button("Use this model set", key="ms_json_use", disabled=not path.strip(), type="primary"):
        p = Path(path.strip()).expanduser()
        if not p.is_file():
            st.session_state[REFUSED_KEY] = (str(p), f"**Not loaded:** {p} is not a file on the server.")
            st.rerun()
        _accept(ModelSetRef(zoo=None, path=str(p)), f"the model set {p}")
    with st.expander("…or write one here"):
        base = st.text_input("Base checkpoint (path on the server)", key="ms_base")
        rows = st.data_editor(
            MODELSET_ROWS,
            num_rows="dynamic",
            key="ms_rows",
            column_config={
                "finetuned": st.column_config.TextColumn("fine-tuned checkpoint"),
                "data": st.column_config.TextColumn("data folder or CSV"),
                "head": st.column_config.TextColumn("head file (optional)"),
                "classnames": st.column_config.TextColumn("class names (optional, comma-separated)"),
            },
        )
        obj = _modelset_dict(base, rows)
        name = st.text_input("Save as", "my-model-set", key="ms_name")
        target = export_dir() / "modelsets" / f"{name.strip() or 'my-model-set'}.json"
        st.caption(f"Saved to `{target}` (the export folder), then validated and loaded.")
        c1, c2 = st.columns(2)
        c2.download_button("Download modelset.json", json.dumps(obj, indent=2), "modelset.json", key="ms_download")
        if c1.button("Save and use", key="ms_save", disabled=not (obj["base"] and obj["finetuned"])):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(obj, indent=2))
            _accept(ModelSetRef(zoo=None, path=str(target)), f"the model set {target}")


def _paths_tab() -> None:
    st.markdown(
        "Checkpoints on **this server**: safetensors, torch (`.pt/.pth/.bin`), open_clip, or Hugging Face CLIP "
        "folders. Task names come from the file or folder names; edit them below."
    )
    base = st.text_input("Base (pretrained) checkpoint: file or folder", key="paths_base")
    listing = st.text_area(
        "Fine-tuned checkpoints: one path per line, or a single folder holding them", key="paths_ft", height=110
    )
    if not st.button("Scan", key="paths_scan"):
        rows = st.session_state.get("_paths_rows")
    else:
        rows, problems = [], []
        for line in [x.strip() for x in listing.splitlines() if x.strip()]:
            p = Path(line).expanduser()
            if not p.exists():
                problems.append(f"{p}: no such file or folder")
            elif p.is_dir() and not any((p / f).exists() for f in DIRECTORY_WEIGHT_FILES):
                found = _checkpoint_files(p)
                problems += [] if found else [f"{p}: no checkpoint files ({', '.join(SUPPORTED_SUFFIXES)}) inside"]
                rows += [{"task": _task_name(f), "path": str(f)} for f in found]
            else:
                rows.append({"task": _task_name(p), "path": str(p)})
        if base and not Path(base).expanduser().exists():
            problems.append(f"{base}: the base checkpoint does not exist")
        for msg in problems:
            st.error(msg)
        st.session_state["_paths_rows"] = rows
    if not rows:
        return
    edited = st.data_editor(pd.DataFrame(rows), key="paths_editor", hide_index=True, disabled=["path"])
    names = [str(t).strip() for t in edited["task"]]
    if len(set(names)) != len(names) or not all(names):
        st.error("Task names must be unique and non-empty.")
        return
    if st.button("Use these checkpoints", type="primary", key="paths_use", disabled=not base):
        ft = tuple(sorted(zip(names, [str(Path(p).expanduser()) for p in edited["path"]])))
        _accept(ModelSetRef(zoo=None, base=str(Path(base).expanduser()), finetuned=ft), "these checkpoints")


def _save_upload(f, folder: Path) -> Path:
    data = f.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:12]
    out = folder / f"{digest}-{Path(f.name).name}"
    if not out.exists():
        out.write_bytes(data)
    return out


def _upload_tab() -> None:
    st.markdown(
        f"Upload **safetensors** files from your computer, for small models only: at most "
        f"**{UPLOAD_LIMIT_MB} MB per file**. Larger checkpoints (ViT-B/32 and up): copy them to the server and "
        "use *Files on the server*."
    )
    base = st.file_uploader("Base checkpoint (.safetensors)", type=["safetensors"], key="up_base")
    fts = st.file_uploader(
        "Fine-tuned checkpoints (.safetensors; task name = file name)",
        type=["safetensors"],
        accept_multiple_files=True,
        key="up_ft",
    )
    if base is None or not fts:
        return
    too_big = [f.name for f in [base, *fts] if f.size > UPLOAD_LIMIT_MB * 2**20]
    if too_big:
        st.error(f"Over {UPLOAD_LIMIT_MB} MB: {', '.join(too_big)}. Put these on the server and load them by path.")
        return
    if st.button("Use the uploaded checkpoints", type="primary", key="up_use"):
        folder = Path(tempfile.gettempdir()) / "mergescope-uploads"
        folder.mkdir(parents=True, exist_ok=True)
        base_path = _save_upload(base, folder)
        ft = tuple(sorted((Path(f.name).stem, str(_save_upload(f, folder))) for f in fts))
        _accept(ModelSetRef(zoo=None, base=str(base_path), finetuned=ft), "the uploaded checkpoints")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _summary(ms) -> None:
    st.subheader(f"Loaded: {ms.name}")
    rows = []
    for role, path in [("base", ms.base_path), *ms.finetuned_paths.items()]:
        info = S.checkpoint_summary(path)
        rows.append(
            {
                "checkpoint": role if role == "base" else f"fine-tuned: {role}",
                "format": info.get("format", "—"),
                "architecture": info.get("architecture", "—"),
                "parameters": f"{info['num_params'] / 1e6:.2f} M" if "num_params" in info else "—",
                "blocks": info.get("num_blocks"),  # None (blank) when unreadable: the column stays numeric
                "dtype": ", ".join(info.get("dtypes", [])) or "—",
                "file size": _size(info["file_size"]) if "file_size" in info else "—",
                "status": "cannot read: " + info["error"] if "error" in info else "ok",
                "path": str(path),
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="models_summary")
    checks = check_tasks(ms)
    if checks:
        st.markdown("**Tasks with data** (evaluated on every live page)")
        st.dataframe(
            pd.DataFrame(
                [{"task": c.task, "status": "ok" if c.ok else "problem", "details": c.message} for c in checks]
            ),
            hide_index=True,
            key="models_tasks",
        )
    elif not ms.eval_tasks:
        st.info(
            "This model set has no task data: analysis (Task vectors, Spectra) and export work; to evaluate "
            "merges live, give each task an image folder or CSV in a modelset.json (tab 'Your model set')."
        )
    total = sum(S.checkpoint_summary(p).get("file_size", 0) for p in [ms.base_path, *ms.finetuned_paths.values()])
    full = total < S.AUTO_CHECK_BYTES or st.session_state.get(VALIDATED_KEY) == S.ms_key(ms)
    if not full and st.button("Check values for NaN/Inf", key="models_check_values"):
        full = True
        st.session_state[VALIDATED_KEY] = S.ms_key(ms)
    try:
        report = S.validation_report(ms, check_finite=full)
    except Exception as e:  # validate_model_set reports bad files itself; this is the last resort
        st.error(f"Checking the model set failed ({type(e).__name__}: {e})")
    else:
        errors.show_report(report)
        if not report.ok:
            st.caption("Other pages will fail on this set: fix the files, or load another model set below.")
    if not full:
        st.caption(
            f"The set is {_size(total)}: keys and shapes were checked from the headers; the values are "
            "checked on request (it reads every tensor once)."
        )
    if st.button("Unload", key="unload"):
        S.set_model_set(None)
        st.rerun()


ms = S.get_model_set()
if ms is not None:
    _summary(ms)
elif st.session_state.get(S.ERROR_KEY):
    st.error(st.session_state[S.ERROR_KEY])

st.subheader("Load a model set" if ms is None else "Load another model set")
_show_refusal()
zoo_tab, json_tab, paths_tab, upload_tab = st.tabs(
    ["Demo zoo", "Your model set (JSON)", "Files on the server", "Upload"]
)
with zoo_tab:
    _zoo_tab()
with json_tab:
    _modelset_tab()
with paths_tab:
    _paths_tab()
with upload_tab:
    _upload_tab()
