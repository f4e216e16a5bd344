"""Choosing a run: one picker for the pages that open a trained run (Evaluate, Classify).

The choice is shared between those pages (``chosen_run``), and the Train page sets it when a run
ends, so "Evaluate this run" opens the run just trained.
"""

from __future__ import annotations

import streamlit as st

from ui.common import run_store
from vgg.runs import RunInfo

CHOSEN = "chosen_run"  # st.session_state key shared by the pages


def choose_run(key: str, *, empty: str) -> RunInfo | None:
    """A selectbox of the runs with a best checkpoint, newest first, starting on the run chosen
    last on any page; ``empty`` is shown (and None returned) when there is none."""
    runs = [r for r in run_store().list_runs() if r.has_best]
    if not runs:
        st.info(empty, icon=":material/info:")
        return None
    by_id = {r.run_id: r for r in runs}
    ids = list(by_id)
    chosen = st.session_state.get(CHOSEN)
    run_id = st.selectbox("Run", ids, index=ids.index(chosen) if chosen in by_id else 0, key=key,
                          format_func=lambda i: f"{i} · {by_id[i].status}")
    st.session_state[CHOSEN] = run_id
    return by_id[run_id]


def set_chosen_run(run_id: str) -> None:
    st.session_state[CHOSEN] = run_id
