"""The lesson texts (``assets/<page>/<name>.md``): one loader for every page.

    lesson = Lessons("train")
    lesson("one_cycle")                 # draws it
    lesson.text("unsure", label="cat")  # the text, with ``{label}`` filled in, to put elsewhere
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class Lessons:
    """The lesson texts of one page."""

    def __init__(self, page: str) -> None:
        self.folder = ASSETS / page

    def text(self, name: str, /, **values: object) -> str:
        """The lesson's Markdown; ``values`` fill its ``{placeholders}``."""
        text = (self.folder / f"{name}.md").read_text(encoding="utf-8")
        return text.format(**values) if values else text

    def __call__(self, name: str, /, **values: object) -> None:
        st.markdown(self.text(name, **values))
