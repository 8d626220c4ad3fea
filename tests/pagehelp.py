"""Helpers shared by the page tests: what a page shows, read back."""


def svg_markup(at) -> str:
    """The per-block scale figure the page shows (SVG, core.plots.svg)."""
    return next(m.value for m in at.markdown if m.value.startswith("<svg"))


def shown_curve(at) -> list[float]:
    from core.plots.svg import svg_curves

    return next(iter(svg_curves(svg_markup(at)).values()))
