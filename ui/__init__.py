"""The app's thin Streamlit layer: the page table and shared session state (`ui.state`).

`PAGES` is the one table the navigation is built from: (section, file, title, icon) for every
planned page, in menu order. ui/app.py shows the pages whose file exists, so pages written later
appear without touching the shell; tests and the benchmark walk the same table.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("Models", "pages/models.py", "Models", ":material/inventory_2:"),
    ("Analyse", "pages/task_vectors.py", "Task vectors", ":material/grid_view:"),
    ("Analyse", "pages/spectra.py", "Spectra", ":material/ssid_chart:"),
    ("Steer", "pages/lines.py", "LiNeS", ":material/tune:"),
    ("Steer", "pages/merge_lab.py", "Merge lab", ":material/merge:"),
    ("Steer", "pages/sweeps.py", "Sweeps", ":material/stacked_line_chart:"),
    ("Train", "pages/tinting.py", "Tinting", ":material/palette:"),
    ("Train", "pages/finetune_lab.py", "Fine-tune lab", ":material/model_training:"),
    ("Train", "pages/continual.py", "Continual", ":material/timeline:"),
    ("Runs", "pages/runs.py", "Runs", ":material/history:"),
)


def existing_pages() -> list[tuple[str, str, str, str]]:
    """The rows of PAGES whose file exists (others are still being written)."""
    return [row for row in PAGES if (ROOT / row[1]).is_file()]


def page_path(file: str) -> str:
    """The absolute path of a page file of PAGES ("pages/spectra.py" -> "/…/pages/spectra.py"): what
    st.Page, st.page_link and st.switch_page take, wherever the entry point lives."""
    return str(ROOT / file)


def url_path(file: str) -> str:
    """The URL path Streamlit gives a page file: its stem ("pages/task_vectors.py" -> "task_vectors")."""
    return Path(file).stem
