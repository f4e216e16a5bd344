"""The address is the state: a page's main settings, the data set and the pupil's name in the URL.

A reload, a bookmark or a link a teacher projects opens the same view: each page lists its
``Param``s; ``initial`` reads the address, after the same validation as the widget's, and gives
each widget its starting value (its ``value``/``index``/``default``); ``publish`` writes the
widgets' values back (values equal to the default are left out, so links stay short). A value that
does not pass shows one clear line and the default, never an exception.

The address only ever sets a widget's *starting* value, never ``st.session_state``: a widget's own
state wins over its starting value, so nothing a pupil did is overwritten. (A value written into
the session state before the widget would win over the edit the browser sends to a restarted
server: the first edit after a restart was dropped.) Streamlit's own ``bind="query-params"`` does
the same, but writes booleans as ``true``/``false`` and choices by their displayed label, while
the class's links say ``bn=0`` and ``config=E``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from vgg.errors import VGGError

SEEN = "_url_seen"  # st.session_state: the raw value last taken from (or written to) each key


@dataclass(frozen=True)
class Param:
    """One setting in the address: ``key=text`` ↔ the widget ``widget``'s value."""

    key: str  # the name in the address, e.g. "config"
    widget: str  # the widget's key in st.session_state
    parse: Callable[[str], Any]  # text → value; raises ValueError (or a VGGError) naming what is allowed
    default: Any
    show: Callable[[Any], str] = str  # value → text


def initial(params: Sequence[Param]) -> dict[str, Any]:
    """Each widget's starting value (by widget key): the address's, where it brings one that
    passes, else the default. Call before the widgets are drawn; a bad value is reported once."""
    seen = st.session_state.setdefault(SEEN, {})
    values, problems = {}, []
    for p in params:
        values[p.widget] = p.default
        raw = st.query_params.get(p.key)
        if raw is None:
            continue
        try:
            values[p.widget] = p.parse(raw)
        except (ValueError, VGGError) as error:
            if seen.get(p.key) != raw:
                problems.append(f"{p.key}={raw[:40]!r}: {error}")
        seen[p.key] = raw
    if problems:
        st.warning("This link's settings could not all be used, so these start from their defaults: "
                   + "; ".join(problems), icon=":material/link_off:")
    return values


def publish(params: Sequence[Param]) -> None:
    """Write the widgets' values into the address (defaults left out)."""
    seen = st.session_state.setdefault(SEEN, {})
    for p in params:
        value = st.session_state.get(p.widget, p.default)
        text = None if value is None or value == p.default else p.show(value)
        if not text:
            if p.key in st.query_params:
                del st.query_params[p.key]
        elif st.query_params.get(p.key) != text:
            st.query_params[p.key] = text
        seen[p.key] = text


# -- parsers with the widgets' rules -----------------------------------------------------------


def choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        return text

    return parse


def flag(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("use 1 (on) or 0 (off)")
    return text == "1"


def show_flag(value: bool) -> str:
    return "1" if value else "0"


def _ranged(kind: Callable[[str], Any], low: float, high: float, allowed: str) -> Callable[[str], Any]:
    """text → ``kind(text)`` within [low, high]; ``ValueError`` naming the range otherwise."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high:
            raise ValueError(allowed)
        return value

    return parse


def integer(low: int, high: int) -> Callable[[str], int]:
    return _ranged(int, low, high, f"a whole number from {low} to {high:,}")


def number(low: float, high: float) -> Callable[[str], float]:
    return _ranged(float, low, high, f"a number from {low:g} to {high:g}")
