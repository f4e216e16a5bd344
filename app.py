"""VGG classroom: the Streamlit entry point. Routes the pages and draws the shared sidebar."""

from __future__ import annotations

import sys
from pathlib import Path

from vgg.speedups.allocator import late_notice, tune_allocator

tune_allocator()  # before torch allocates: training steps reuse their big buffers (vgg/speedups/allocator.py)
if (notice := late_notice()) is not None:  # the server's threads need it from the start (make run)
    print(notice, file=sys.stderr)

import streamlit as st  # noqa: E402

from ui.common import cluster_line, current_data, data_label, locks  # noqa: E402
from ui.people import name_ui, share_ui, sync_address, teacher_ui  # noqa: E402
from ui.sidebar import sidebar_jobs  # noqa: E402
from vgg.errors import VGGError  # noqa: E402
from vgg.settings import default_device, device_description  # noqa: E402

PAGES_DIR = Path(__file__).parent / "pages"

# The lesson in order: (file in pages/, title, icon, address). "/" opens the first. A file is named
# as its address: a fresh server's first visitor is matched against the pages/ folder's file names
# before st.navigation runs ("lr_finder.py" showed "Page not found" at /lr-finder).
PAGES = (
    ("architecture.py", "Architecture", ":material/account_tree:", "architecture"),
    ("data.py", "Data", ":material/photo_library:", "data"),
    ("lr-finder.py", "LR finder", ":material/trending_down:", "lr-finder"),
    ("train.py", "Train", ":material/model_training:", "train"),
    ("compare.py", "Compare", ":material/compare_arrows:", "compare"),
    ("evaluate.py", "Evaluate", ":material/fact_check:", "evaluate"),
    ("classify.py", "Classify", ":material/image_search:", "classify"),
)
LIVE_PAGES = {"LR finder", "Train", "Compare"}  # pages that show the running job themselves


@st.cache_resource
def device_label() -> str:
    """The compute device as one short line ("CPU · 2 threads" or the GPU's name)."""
    return device_description(default_device())


def sidebar_status(page_title: str) -> None:
    """Who you are, device and data set in use, sharing, the teacher, and the job list: every page."""
    with st.sidebar:
        name_ui()
        try:
            st.markdown(f":material/memory: **Device:** {device_label()}")
        except VGGError as error:  # a bad VGG_DEVICE names the choices
            st.error(str(error))
        if (line := cluster_line()) is not None:
            st.markdown(line)
        locked = " (locked by the teacher)" if locks().data is not None else ""
        st.markdown(f":material/dataset: **Data set:** {data_label(current_data())}{locked}")
        share_ui()
        teacher_ui()
        sidebar_jobs(page_shows_jobs=page_title in LIVE_PAGES)


def no_pages_yet() -> None:
    st.info("No pages are installed yet: add them to `pages/`.")


st.set_page_config(page_title="VGG classroom", page_icon=":material/school:", layout="wide")
pages = [
    st.Page(PAGES_DIR / file, title=title, icon=icon, url_path=path)
    for file, title, icon, path in PAGES
    if (PAGES_DIR / file).exists()
]


def home() -> None:
    """"/": the first page at its own address, with the settings the link carried."""
    st.switch_page(pages[0], query_params=st.query_params.to_dict())


entry = [st.Page(home, title="VGG classroom", url_path="home", default=True, visibility="hidden")] if pages else []
page = st.navigation(entry + pages or [st.Page(no_pages_yet, title="VGG classroom")])
sync_address()
sidebar_status(page.title)
page.run()
