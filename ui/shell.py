"""Pages opened by their own address on a freshly started server still get the app around them.

Streamlit keeps a server-wide flag for apps with a ``pages/`` folder (its first multipage API):
until some session has called ``st.navigation``, a request for ``/train`` runs ``pages/train.py``
on its own, not ``app.py``, so the page has no sidebar (device, data set, job list) and Streamlit's
plain list of file names as navigation. ``app.py`` calls ``st.navigation``, which clears the flag,
but only once someone has opened the app's first page. A class that follows a teacher's link to
the Train page after a restart would all land there. Every page calls ``ensure_app_shell()`` first.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitAPIException
from streamlit.runtime.pages_manager import PagesManager


def ensure_app_shell() -> None:
    """Rerun through ``app.py`` when this page was run without it (see the module's text)."""
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # what st.navigation itself does
        st.rerun()


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """``st.page_link`` to ``pages/<file>``; a plain hint when the page is not routed (a page run alone)."""
    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"{label}: open **{Path(page).stem.replace('_', ' ').title()}** in the sidebar.")
