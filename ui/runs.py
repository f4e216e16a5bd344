"""Choosing a run: one picker for the pages that open a trained run (Evaluate, Classify).

The choice is shared between those pages (``chosen_run``), and the Train page sets it when a run
ends, so "Evaluate this run" opens the run just trained. It is in the address too (``?run=<id>``),
so a reload or a shared link opens the same run.
"""

from __future__ import annotations

import streamlit as st

from ui import urlstate as url
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

    def known(text: str) -> str:
        if text not in by_id:
            raise ValueError("no run with a checkpoint has this id (deleted, or not trained yet)")
        return text

    param = url.Param("run", key, known, None)
    from_address = url.initial([param])[key]
    chosen = from_address or st.session_state.get(CHOSEN)
    run_id = st.selectbox("Run", ids, index=ids.index(chosen) if chosen in by_id else 0, key=key,
                          format_func=lambda i: f"{by_id[i].label} · {by_id[i].status}")
    st.session_state[CHOSEN] = run_id
    url.publish([param])
    return by_id[run_id]


def set_chosen_run(run_id: str) -> None:
    st.session_state[CHOSEN] = run_id
