"""core.plots.svg: the per-block scale figure as SVG shows exactly the curve it is given."""

import xml.etree.ElementTree as ET

import pytest

from core.lines import lines_curve
from core.plots.svg import block_scale_svg, svg_curves

NS = "{http://www.w3.org/2000/svg}"


def test_the_svg_is_well_formed_and_carries_the_curve_it_draws():
    curve = lines_curve(0.3, 0.7, 12)
    svg = block_scale_svg({"LiNeS": curve}, outside={"LiNeS": 0.3}, tower="text")
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == NS + "svg"
    assert svg_curves(svg) == {"LiNeS": pytest.approx(curve, abs=1e-6)}
    assert len(list(root.iter(NS + "circle"))) == 12  # one marker per block
    texts = "".join(t.text or "" for t in root.iter(NS + "text"))
    assert "block ℓ of the text tower" in texts and "Per-block scale λ(ℓ)" in texts


def test_points_rise_with_the_scale_and_start_from_zero():
    svg = block_scale_svg({"a": [0.0, 0.5, 1.0]})
    pts = [tuple(map(float, p.split(","))) for p in ET.fromstring(svg).find(f".//{NS}polyline").get("points").split()]
    xs, ys = zip(*pts)
    assert xs == tuple(sorted(xs)) and ys[0] > ys[1] > ys[2]  # SVG y grows downwards
    labels = [t.text for t in ET.fromstring(svg).iter(NS + "text")]
    assert "0" in labels and "1" in labels  # the y axis runs from 0 to at least 1


def test_scales_above_one_and_several_curves():
    svg = block_scale_svg({"merged": [0.2, 1.7], "other": [1.0, 1.0]}, outside={"merged": 0.2})
    assert set(svg_curves(svg)) == {"merged", "other"}
    assert svg_curves(svg)["merged"] == pytest.approx([0.2, 1.7])
    ys = [float(p.split(",")[1]) for p in ET.fromstring(svg).find(f".//{NS}polyline").get("points").split()]
    assert min(ys) >= 0  # 1.7 stays inside the plot (the axis grows to it)


def test_labels_are_escaped():
    svg = block_scale_svg({"a<b & c": [1.0, 2.0]}, title="λ < 1 & more")
    assert "a<b & c" in svg_curves(svg)
