"""MergeScope: the Streamlit entry point (`streamlit run ui/app.py`, what `make run` does).

Navigation, the shared sidebar, the landing page and the error boundary only. The page files live in
pages/ at the repository root; this entry point sits in ui/ so that Streamlit never sees a pages/ folder
next to its main script (which would switch it to its legacy multipage mode) - navigation comes only
from st.navigation over the page table `ui.PAGES`, with absolute st.Page paths (documented API).
"""

from __future__ import annotations

import streamlit as st

from ui import errors, existing_pages, page_path
from ui import state as S

st.set_page_config(page_title="MergeScope", page_icon=":material/layers:", layout="wide")
S.warm_kernels()  # once per server process, on a background thread


def landing() -> None:
    st.title("MergeScope")
    st.markdown(
        """
**See and steer what happens inside a network, layer by layer, when it is fine-tuned and merged.**

Start from one pretrained model and several fine-tuned copies of it (one per task). MergeScope shows
where fine-tuning changed the weights (*task vectors*: norms, cosine similarity and sign conflicts per
block), how heavy-tailed each layer's spectrum is (*spectra*, WeightWatcher's α), and lets you merge
the models and steer each layer's share (*LiNeS*, *Merge lab*), measuring accuracy on every task live.
"""
    )
    ms = S.get_model_set()
    if ms is None:
        st.info(
            "**First time here?** Load the **zoo** on the Models page: a small CLIP-style model "
            "pretrained here on synthetic images, plus one fine-tuned copy per task. It is built once "
            "(a few minutes) and cached on disk, so later starts are instant. You can also point the app "
            "at your own checkpoints (open_clip, safetensors, Hugging Face CLIP)."
        )
        st.page_link(S.MODELS_PAGE, label="Open Models and load the zoo", icon=":material/inventory_2:")
    else:
        st.success(f"Loaded: **{ms.name}** with {len(ms.tasks)} fine-tuned models ({', '.join(ms.tasks)}).")
        cols = st.columns(3)
        links = [
            ("pages/task_vectors.py", "Task vectors: where did fine-tuning act?", ":material/grid_view:"),
            ("pages/spectra.py", "Spectra: how heavy-tailed is each layer?", ":material/ssid_chart:"),
            ("pages/merge_lab.py", "Merge lab: merge and measure", ":material/merge:"),
        ]
        available = {row[1] for row in existing_pages()}
        for col, (page, label, icon) in zip(cols, [x for x in links if x[0] in available]):
            with col:
                st.page_link(page_path(page), label=label, icon=icon)


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### Active model set")
        ms = S.get_model_set()
        if ms is None:
            err = st.session_state.get(S.ERROR_KEY)
            st.caption(err or "None loaded: choose one on the Models page.")
        else:
            info = S.checkpoint_summary(ms.base_path)
            st.markdown(f"**{ms.name}**")
            st.caption(
                f"Architecture: {info.get('architecture', 'unknown')}  \nTasks: {len(ms.tasks)}  \nDevice: {S.device()}"
            )
        st.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=S.SEED_KEY,
                        help="Seed for subsampling, DARE masks and training runs.")  # fmt: skip


sections: dict[str, list] = {"": [st.Page(landing, title="Home", icon=":material/home:", default=True)]}
for section, file, title, icon in existing_pages():
    sections.setdefault(section, []).append(st.Page(page_path(file), title=title, icon=icon))

page = st.navigation(sections)
sidebar()
try:
    page.run()
except Exception as e:  # the error boundary: one clear message, never a traceback on the page
    errors.show(e)
