"""core.plots.merge: the live pages' figures, checked trace by trace (no streamlit)."""

from __future__ import annotations

import pandas as pd
import pytest

from core.lines import lines_curve
from core.plots.merge import accuracy_bars, block_scale_curve, tradeoff_curve


def test_accuracy_bars_one_bar_group_per_model_in_percent():
    table = pd.DataFrame(
        [
            {"task": "digits", "model": "zero-shot", "accuracy": 0.25},
            {"task": "shapes", "model": "zero-shot", "accuracy": 0.5},
            {"task": "digits", "model": "merged", "accuracy": 0.75},
            {"task": "shapes", "model": "merged", "accuracy": 0.6},
        ]
    )
    fig = accuracy_bars(table)
    assert [t.name for t in fig.data] == ["zero-shot", "merged"]
    assert list(fig.data[1].x) == ["digits", "shapes"]
    assert list(fig.data[1].y) == pytest.approx([75.0, 60.0])
    assert fig.layout.barmode == "group"


def test_accuracy_bars_names_missing_columns():
    with pytest.raises(ValueError, match="accuracy"):
        accuracy_bars(pd.DataFrame({"task": ["a"], "model": ["merged"]}))


def test_block_scale_curve_is_the_lines_line_and_alpha_outside():
    curve = lines_curve(0.2, 0.8, 5)
    fig = block_scale_curve({"LiNeS": curve}, outside={"LiNeS": 0.2})
    line, outside = fig.data
    assert list(line.x) == [0, 1, 2, 3, 4]
    assert list(line.y) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert list(outside.y) == [0.2, 0.2] and outside.line.dash == "dot"


def test_tradeoff_curve_marks_current_chosen_and_references():
    sweep = pd.DataFrame(
        {
            "kind": ["LiNeS"] * 3 + ["uniform"] * 3,
            "alpha": [1.0, 0.5, 0.0] * 2,
            "target_acc": [0.9, 0.8, 0.3, 0.9, 0.7, 0.3],
            "control_acc": [0.4, 0.55, 0.6, 0.4, 0.5, 0.6],
        }
    )
    fig = tradeoff_curve(
        sweep,
        current={"control_acc": 0.5, "target_acc": 0.7},
        references={"zero-shot": (0.6, 0.3), "fine-tuned": (0.4, 0.9)},
        chosen={"control_acc": 0.55, "target_acc": 0.8},
    )
    names = [t.name for t in fig.data]
    assert names == ["LiNeS", "uniform", "zero-shot", "fine-tuned", "chosen on val", "current"]
    lines = fig.data[0]
    assert list(lines.text) == ["0.0", "0.5", "1.0"]  # sorted by alpha
    assert list(lines.x) == pytest.approx([60.0, 55.0, 40.0])
    assert fig.data[-1].marker.symbol == "star" and list(fig.data[-1].y) == pytest.approx([70.0])


def test_block_scale_curve_names_the_tower():
    fig = block_scale_curve({"LiNeS": lines_curve(0.2, 0.8, 3)}, tower="text")
    assert fig.layout.xaxis.title.text == "block ℓ of the text tower"
    assert block_scale_curve({"LiNeS": [1.0]}).layout.xaxis.title.text == "block ℓ"


def test_merge_spectra_figures_draw_every_source_and_the_overlap():
    import pandas as pd

    from core.plots.merge_spectra import interference_heatmap, interference_profile_figure, singular_values_figure

    sv = pd.DataFrame(
        [
            {"key": "k", "source": s, "index": i, "singular_value": v}
            for s in ("a", "b", "merged")
            for i, v in ((1, 2.0), (2, 0.5))
        ]
    )
    fig = singular_values_figure(sv)
    assert [t.name for t in fig.data] == ["a", "b", "merged"] and fig.layout.yaxis.type == "log"
    m = pd.DataFrame([[1.0, 0.2], [0.2, 1.0]], index=["a", "b"], columns=["a", "b"])
    heat = interference_heatmap(m)
    assert heat.data[0].zmax == 1 and heat.data[0].text[0][1] == "0.20"
    prof = interference_profile_figure(
        pd.DataFrame({"layer": [-1, 0, 1], "mean": [0.1, 0.2, 0.3], "max": [0.2, 0.4, 0.5]})
    )
    assert list(prof.data[0].x) == ["outside", "0", "1"]
