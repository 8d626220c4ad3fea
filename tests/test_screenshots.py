"""Screenshots of every page at two widths, and a geometry check of every Plotly chart on them.

One `streamlit run` server (micro zoo preselected), one headless Chromium. For each width
(1400 px and 1000 px) every page is opened, each of its tabs clicked, and a PNG saved to
test-artifacts/screenshots/<width>/<page>.png (tabs after the first: <page>--tab<i>.png).
In every drawn chart the DOM is read:

- the legend box must not overlap the title, an axis title or a tick label;
- the title, axis titles, tick labels, legend entries and colour-bar labels must lie inside the
  chart's own box (nothing cut off at the edge);
- tick labels of one axis must not overlap each other (cluttered log axes, dense category axes).

Skips loudly when Playwright or Chromium is missing, like tests/test_browser.py.
Set MERGESCOPE_SCREENSHOTS=<dir> to write the PNGs elsewhere (e.g. for before/after comparisons).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_browser import chromium, server, wait_rendered  # noqa: F401  (module-scoped fixtures reused)

from ui import existing_pages, url_path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("MERGESCOPE_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
WIDTHS = (1400, 1000)
PAGES = [("home", "")] + [(url_path(f), url_path(f)) for _, f, _, _ in existing_pages()]
TOLERANCE_PX = 1.0

# Returns one problem string per defect found in the charts that are visible now.
GEOMETRY_JS = r"""(tol) => {
  const problems = [];
  const box = (el) => { const r = el.getBoundingClientRect(); return {l: r.left, r: r.right, t: r.top, b: r.bottom,
                                                                      w: r.width, h: r.height}; };
  const visible = (b) => b.w > 0 && b.h > 0;
  const overlap = (a, b) => Math.min(a.r, b.r) - Math.max(a.l, b.l) > tol && Math.min(a.b, b.b) - Math.max(a.t, b.t) > tol;
  const inside = (a, c) => a.l >= c.l - tol && a.r <= c.r + tol && a.t >= c.t - tol && a.b <= c.b + tol;
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((chart, i) => {
    const container = chart.querySelector('.svg-container');
    if (!container) return;
    const c = box(container);
    if (!visible(c)) return;
    const titleEl = chart.querySelector('.gtitle');
    const name = (titleEl && titleEl.textContent.trim()) || `chart #${i}`;
    const labelled = (sel, what) => Array.from(chart.querySelectorAll(sel))
      .map((el) => ({el, b: box(el), what, text: el.textContent.trim()})).filter((x) => visible(x.b) && x.text);
    const texts = [
      ...labelled('.gtitle', 'title'),
      ...labelled('.g-xtitle text, .g-x2title text, .g-ytitle text, .g-y2title text', 'axis title'),
      ...labelled('.xtick text, .ytick text, .x2tick text, .y2tick text', 'tick label'),
      ...labelled('.legendtext', 'legend entry'),
      ...labelled('.colorbar .cbtitle text, .colorbar .ytick text, .colorbar .xtick text', 'colour-bar label'),
    ];
    for (const x of texts) {
      if (!inside(x.b, c)) problems.push(`${name}: ${x.what} "${x.text.slice(0, 40)}" is cut off at the chart's edge`);
    }
    const legend = chart.querySelector('.legend');
    if (legend) {
      const lg = box(legend.querySelector('.bg') || legend);
      if (visible(lg)) {
        for (const x of texts) {
          if (x.what === 'legend entry' || x.what === 'colour-bar label') continue;
          if (overlap(lg, x.b)) problems.push(`${name}: the legend overlaps the ${x.what} "${x.text.slice(0, 40)}"`);
        }
      }
    }
    for (const axis of chart.querySelectorAll('.xaxislayer-above, .yaxislayer-above')) {
      // Rotated labels (Plotly turns them when they would collide) have overlapping boxes but not glyphs: skipped.
      const rotated = (el) => /rotate\((?!0[,)])/.test(el.getAttribute('transform') || '');
      const ticks = Array.from(axis.querySelectorAll('text')).filter((el) => !rotated(el))
        .map((el) => ({b: box(el), text: el.textContent.trim()})).filter((x) => visible(x.b) && x.text);
      for (let k = 1; k < ticks.length; k++) {
        if (overlap(ticks[k - 1].b, ticks[k].b)) {
          problems.push(`${name}: tick labels "${ticks[k - 1].text}" and "${ticks[k].text}" overlap`);
        }
      }
    }
  });
  return problems;
}"""


def _fit_viewport(page, width: int) -> None:
    # Streamlit scrolls inside its main container: grow the viewport to the content to capture it all.
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": width, "height": min(max(900, int(height) + 40), 12000)})
    wait_rendered(page)


@pytest.fixture(scope="module")
def browser_page(chromium):  # noqa: F811
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    context.close()


# Numbers that do not fit their box: a metric's value cut to "22.…" (text-overflow: ellipsis).
METRICS_JS = r"""(tol) => Array.from(document.querySelectorAll('[data-testid="stMetricValue"]'))
  .filter((el) => el.getBoundingClientRect().width > 0)
  .flatMap((el) => { const inner = el.querySelector('div') || el;
    return inner.scrollWidth > inner.clientWidth + tol
      ? [`metric value "${el.textContent.trim()}" is cut off (${inner.scrollWidth} > ${inner.clientWidth} px)`] : []; })"""


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name,path", PAGES, ids=[p[0] for p in PAGES])
def test_page_charts_fit(browser_page, server, name, path, width):  # noqa: F811
    page = browser_page
    out = ARTIFACTS / str(width)
    out.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"{server}/{path}", wait_until="domcontentloaded")
    wait_rendered(page)
    problems: list[str] = []
    tablist = page.locator('[data-testid="stMain"] [role="tablist"]')
    tabs = tablist.first.locator('[data-testid="stTab"], [role="tab"]')
    n_tabs = tabs.count() if tablist.count() else 0
    for i in range(max(1, n_tabs)):
        if i:
            page.set_viewport_size({"width": width, "height": 900})
            tabs.nth(i).click()
            page.wait_for_timeout(300)
            wait_rendered(page)
        _fit_viewport(page, width)
        page.screenshot(path=str(out / (f"{name}.png" if i == 0 else f"{name}--tab{i}.png")), full_page=True)
        where = f"{name} @ {width}px" + (f", tab {i}" if n_tabs else "")
        problems += [f"{where}: {p}" for p in page.evaluate(GEOMETRY_JS, TOLERANCE_PX)]
        problems += [f"{where}: {p}" for p in page.evaluate(METRICS_JS, TOLERANCE_PX)]
        exceptions = page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()[:2000]}"
    assert not problems, "\n".join(problems)
