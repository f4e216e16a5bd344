"""The sidebar's people: the pupil's name, the teacher's code and locks, and "Share this view".

The name and the data set in use travel in the address (``?name=Ann&data=cifar10``), so a reload
or a shared link keeps them; every page adds its own settings (``ui.urlstate``).
"""

from __future__ import annotations

import io
from urllib.parse import urlencode

import segno
import streamlit as st

from ui.common import (
    DEFAULT_DATA, NAME, classroom, current_data, data_label, is_teacher, set_current_data, teacher_mode,
)
from vgg.classroom import ClassLocks, check_name, is_teacher_code
from vgg.data import DataConfig
from vgg.errors import VGGError

DATA_KEYS = ("data", "data_size", "per_class")  # the data set in the address


def data_params(cfg: DataConfig) -> dict[str, str]:
    """The address's words for a data set (its source, and size and images per class when not the default)."""
    out = {"data": cfg.source}
    if cfg.input_size != DEFAULT_DATA.input_size:
        out["data_size"] = str(cfg.input_size)
    if cfg.images_per_class is not None:
        out["per_class"] = str(cfg.images_per_class)
    return out


def data_from_params() -> DataConfig | None:
    """The data set the address names, validated as the Data page validates it (None if none)."""
    q = st.query_params
    if "data" not in q:
        return None
    try:
        size = int(q.get("data_size", DEFAULT_DATA.input_size))
        per_class = int(q["per_class"]) if "per_class" in q else None
        return DataConfig(source=q["data"], input_size=size, images_per_class=per_class)
    except (ValueError, VGGError) as error:
        st.warning(f"This link's data set could not be used ({error}); the synthetic set is in use.",
                   icon=":material/link_off:")
        return None


def sync_address() -> None:
    """On every run: take the name and the data set from a new address (a reload, a shared link),
    then write this session's into it."""
    seen = st.session_state.setdefault("_address_seen", {})
    name = st.query_params.get("name")
    if name is not None and seen.get("name") != name:
        seen["name"] = name
        try:
            st.session_state[NAME] = check_name(name)
        except VGGError as error:
            st.warning(f"This link's name could not be used: {error}", icon=":material/link_off:")
    words = tuple(st.query_params.get(k) for k in DATA_KEYS)
    if words[0] is not None and seen.get("data") != words:
        seen["data"] = words
        cfg = data_from_params()
        if cfg is not None:
            set_current_data(cfg)
    if st.session_state.get(NAME) and st.query_params.get("name") != st.session_state[NAME]:
        st.query_params["name"] = st.session_state[NAME]
    want = data_params(current_data())  # written only where it changed: every write is a message
    for key in DATA_KEYS:
        if key not in want and key in st.query_params:
            del st.query_params[key]
        elif key in want and st.query_params.get(key) != want[key]:
            st.query_params[key] = want[key]
    seen["data"] = tuple(st.query_params.get(k) for k in DATA_KEYS)
    seen["name"] = st.query_params.get("name")


def name_ui() -> None:
    """The pupil's name, given once: jobs and runs show it, and "yours" survives a reload."""
    name = st.session_state.get(NAME)
    if name:
        st.markdown(f":material/person: **You:** {name}" + (" · teacher" if is_teacher() else ""))
        return
    entered = st.text_input("Your name", key="name_entry", placeholder="so that your runs are yours",
                            help="Kept in this page's address: a reload keeps it.")
    if entered:
        try:
            st.session_state[NAME] = check_name(entered)
            st.rerun()
        except VGGError as error:
            st.error(str(error))


def share_ui() -> None:
    """"Share this view": the address of this page with its settings, and a QR code to project."""
    with st.popover("Share this view", icon=":material/qr_code_2:", width="stretch"):
        base = st.context.url or ""
        words = {k: v for k, v in st.query_params.to_dict().items() if k != "name"}  # not the sharer's name
        link = base + ("?" + urlencode(words) if words else "")
        st.code(link, language=None)
        qr = io.BytesIO()
        segno.make(link, error="m").save(qr, kind="png", scale=6, border=2)
        st.image(qr.getvalue(), caption="Point a phone's camera here", width=220)
        if "localhost" in base or "127.0.0.1" in base:
            st.caption("This address only works on this computer: start the server with "
                       "`make run ADDRESS=0.0.0.0` and open it by the computer's network address.")


def teacher_ui() -> None:
    """Without VGG_TEACHER_CODE: a line saying everyone may do everything. With it: the code field,
    and for the teacher the class's locks."""
    if not teacher_mode():
        st.caption(":material/lock_open: No teacher code is set: everyone may stop and delete any job "
                   "or run (start the server with VGG_TEACHER_CODE=… for a teacher's controls).")
        return
    if not is_teacher():
        with st.popover("I am the teacher", icon=":material/key:", width="stretch"):
            st.text_input("Teacher's code", type="password", key="teacher_code_entry", on_change=enter_code)
            if st.session_state.pop("_teacher_refused", False):
                st.error("That is not the teacher's code.")
        locked = classroom().locks
        if locked.any:
            st.caption(":material/lock: " + lock_summary(locked))
        return
    with st.popover("Lock settings for the class", icon=":material/lock:", width="stretch"):
        locks_ui()


def enter_code() -> None:
    """The code field's callback (before the rerun): the teacher for this session, or a refusal;
    the field is emptied either way, so the code is never kept or drawn again."""
    code = st.session_state.get("teacher_code_entry") or ""
    st.session_state["teacher_code_entry"] = ""
    if is_teacher_code(code):
        st.session_state["teacher"] = True
    elif code:
        st.session_state["_teacher_refused"] = True


def lock_summary(locks: ClassLocks) -> str:
    parts = []
    if locks.data is not None:
        parts.append(f"data set {data_label(locks.data)}")
    if locks.max_epochs is not None:
        parts.append(f"at most {locks.max_epochs} epoch(s)")
    if locks.max_input_size is not None:
        parts.append(f"inputs up to {locks.max_input_size} px")
    if not locks.allow_downloads:
        parts.append("no ImageNet downloads")
    return "The teacher locked: " + ", ".join(parts) + "."


def locks_ui() -> None:
    """The teacher's locks: the data set in use (the teacher's), most epochs, largest input size,
    and ImageNet downloads."""
    now = classroom().locks
    fix_data = st.toggle(f"Everyone uses my data set ({data_label(current_data())})", value=now.data is not None,
                         key="lock_data")
    cap_epochs = st.number_input("At most this many epochs (empty: no limit)", 1, 1000, now.max_epochs,
                                 key="lock_epochs")
    cap_size = st.number_input("Inputs of at most (px, empty: no limit)", 32, 512, now.max_input_size, step=32,
                               key="lock_size")
    downloads = st.toggle("ImageNet weights may be downloaded", value=now.allow_downloads, key="lock_downloads")
    if st.button("Apply to the class", type="primary", key="lock_apply", icon=":material/lock:"):
        classroom().set_locks(ClassLocks(data=current_data() if fix_data else None, max_epochs=cap_epochs,
                                         max_input_size=cap_size, allow_downloads=downloads))
        st.toast("Locked for the class.", icon=":material/lock:")
