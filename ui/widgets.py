"""Widgets drawn from core's declarations: one control per merge-method `Param` (core.merging registry),
so a new method needs no UI code. Values set before a widget exists (a shared link, a test) win over
the declared default."""

from __future__ import annotations

import streamlit as st

from core.merging import Param


def _value_kw(key: str, default, arg: str = "value") -> dict:
    return {} if key in st.session_state else {arg: default}


def numeric_widget(p: Param, label: str, key: str, default, *, disabled: bool = False, help: str | None = None):
    """A slider when the declared range has at most 1,000 steps, else a number input."""
    cast = float if p.kind == "float" else int
    # "automatic" defaults (None, e.g. tsv_m's sv_reduction = 1/T) take the number input: an empty box is None
    if default is not None and p.min is not None and p.max is not None and (p.max - p.min) / (p.step or 1) <= 1000:
        return st.slider(
            label,
            cast(p.min),
            cast(p.max),
            step=cast(p.step or 1),
            key=key,
            help=help or p.help,
            disabled=disabled,
            **_value_kw(key, cast(default)),
        )
    return st.number_input(
        label,
        min_value=p.min,
        max_value=p.max,
        step=p.step,
        key=key,
        help=help or p.help,
        disabled=disabled,
        **_value_kw(key, default),
    )


def param_widget(p: Param, key: str, tasks: list[str], *, disabled: bool = False, note: str | None = None):
    """One control for one declared parameter under widget key `key`; per_task parameters can be one
    value or one per task (keys `key__per_task`, `key__<task>`). disabled: drawn greyed out (it does not
    apply now), with `note` saying why."""
    help_text = f"{p.help} — {note}" if (disabled and note) else p.help
    if p.kind in ("float", "int"):
        if p.per_task and st.toggle(f"{p.name}: one per task", key=key + "__per_task", disabled=disabled):
            return [
                numeric_widget(p, f"{p.name} · {t}", f"{key}__{t}", p.default, disabled=disabled, help=help_text)
                for t in tasks
            ]
        return numeric_widget(p, p.name, key, p.default, disabled=disabled, help=help_text)
    if p.kind == "choice":
        return st.selectbox(
            p.name,
            p.choices,
            key=key,
            help=help_text,
            disabled=disabled,
            **_value_kw(key, p.choices.index(p.default), "index"),
        )
    if p.kind == "bool":
        return st.toggle(p.name, key=key, help=help_text, disabled=disabled, **_value_kw(key, bool(p.default)))
    raise ValueError(f"no widget for parameter kind {p.kind!r} ({key})")
