"""A merge in a URL: the Merge lab keeps its MergeSpec in the query string so a copied link reproduces
the merge (a colleague's or a class's fresh tab). `spec_to_query` and `spec_from_query` round-trip
every MergeSpec field; a malformed link is a ValueError naming the field."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .spec import MergeSpec

QUERY_KEYS = ("method", "params", "lines", "curve", "outside", "tasks", "output_as_last_block")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"'{what}' in the link must be comma-separated numbers, got {text!r}") from None


def spec_to_query(spec: MergeSpec) -> dict[str, str]:
    """A MergeSpec as URL query parameters (short, readable), e.g.
    method=ties&params={"agg":"mean","coefficients":1.0,"k":0.2}&lines=auto,0.5&tasks=digits,shapes."""
    q = {"method": spec.method, "params": json.dumps(spec.param_dict, sort_keys=True, separators=(",", ":"))}
    if spec.lines is not None:
        q["lines"] = ",".join(str(x) for x in spec.lines)
    if spec.curve is not None:
        q["curve"] = ",".join(str(float(x)) for x in spec.curve)
    if spec.outside is not None:
        q["outside"] = str(float(spec.outside))
    if spec.tasks:
        q["tasks"] = ",".join(spec.tasks)
    if spec.output_as_last_block:
        q["output_as_last_block"] = "1"
    return q


def spec_from_query(q: Mapping[str, str]) -> MergeSpec:
    """The inverse of `spec_to_query`; raises ValueError naming the bad parameter."""
    method = q.get("method", "task_arithmetic")
    try:
        params = json.loads(q["params"]) if q.get("params") else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"'params' in the link is not valid JSON ({e})") from None
    if not isinstance(params, dict):
        raise ValueError("'params' in the link must be a JSON object")
    kw: dict = {}
    if q.get("lines"):
        parts = q["lines"].split(",")
        if len(parts) != 2:
            raise ValueError(f"'lines' in the link must be 'alpha,beta' (alpha may be 'auto'), got {q['lines']!r}")
        alpha = "auto" if parts[0].strip() == "auto" else _floats(parts[0], "lines")[0]
        kw["lines"] = (alpha, _floats(parts[1], "lines")[0])
    if q.get("curve"):
        kw["curve"] = tuple(_floats(q["curve"], "curve"))
    if q.get("outside"):
        kw["outside"] = _floats(q["outside"], "outside")[0]
    if q.get("tasks"):
        kw["tasks"] = tuple(t for t in q["tasks"].split(",") if t)
    if q.get("output_as_last_block") in ("1", "true", "True"):
        kw["output_as_last_block"] = True
    try:
        return MergeSpec.make(method, params, **kw)
    except KeyError as e:
        raise ValueError(str(e).strip("'\"")) from None
