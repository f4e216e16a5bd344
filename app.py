"""VGG classroom: the Streamlit entry point. Routes the pages and draws the shared sidebar."""

from __future__ import annotations

import sys
from pathlib import Path

from vgg.speedups.allocator import late_notice, tune_allocator

tune_allocator()  # before torch allocates: training steps reuse their big buffers (vgg/speedups/allocator.py)
if (notice := late_notice()) is not None:  # the server's threads need it from the start (make run)
    print(notice, file=sys.stderr)

import streamlit as st  # noqa: E402

from ui.sidebar import sidebar_jobs  # noqa: E402
from vgg.errors import VGGError  # noqa: E402
from vgg.settings import default_device, device_description  # noqa: E402

PAGES_DIR = Path(__file__).parent / "pages"

# The lesson in order: (file in pages/, title, icon). The first page is the default.
PAGES = (
    ("architecture.py", "Architecture", ":material/account_tree:"),
    ("data.py", "Data", ":material/photo_library:"),
    ("lr_finder.py", "LR finder", ":material/trending_down:"),
    ("train.py", "Train", ":material/model_training:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("evaluate.py", "Evaluate", ":material/fact_check:"),
    ("classify.py", "Classify", ":material/image_search:"),
)
LIVE_PAGES = {"LR finder", "Train", "Compare"}  # pages that show the running job themselves


@st.cache_resource
def device_label() -> str:
    """The compute device as one short line ("CPU · 2 threads" or the GPU's name)."""
    return device_description(default_device())


def sidebar_status(page_title: str) -> None:
    """Device and data set in use, and the job list, shown on every page."""
    with st.sidebar:
        try:
            st.markdown(f":material/memory: **Device:** {device_label()}")
        except VGGError as error:  # a bad VGG_DEVICE names the choices
            st.error(str(error))
        dataset = st.session_state.get("dataset_label", "synthetic")
        st.markdown(f":material/dataset: **Data set:** {dataset}")
        sidebar_jobs(page_shows_jobs=page_title in LIVE_PAGES)


def no_pages_yet() -> None:
    st.info("No pages are installed yet: add them to `pages/`.")


st.set_page_config(page_title="VGG classroom", page_icon=":material/school:", layout="wide")
pages = [
    st.Page(PAGES_DIR / file, title=title, icon=icon)
    for file, title, icon in PAGES
    if (PAGES_DIR / file).exists()
]
page = st.navigation(pages or [st.Page(no_pages_yet, title="VGG classroom")])
sidebar_status(page.title)
page.run()
