"""The Data page's builder: a class's own data set from files, zips and the camera (``vgg.datasets``).

Every change goes through ``vgg.datasets`` (the same code as ``python -m vgg dataset``): names are
checked there, pictures are re-encoded there, and a refusal is one line shown here. Changes run in
widget callbacks, so the page drawn afterwards already shows them; an upload box gets a fresh key
once its files are stored, so the same files are never added twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import streamlit as st
from PIL import Image

from ui.common import current_data, data_label, locks, set_current_data
from ui.lessons import Lessons
from vgg import datasets
from vgg.data import DataConfig
from vgg.errors import VGGError
from vgg.images import SUPPORTED_EXTENSIONS

lesson = Lessons("data")
PICTURE_TYPES = [ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS]
THUMBS = 12  # the newest pictures shown per class
THUMB_SIDE = 96
OWN_INPUT_SIZE = 224  # a set of one's own pictures is read at the notebook's size (the fast fine-tune's)
PICK = "ds-set"  # st.session_state: the set being edited
NEW = ""  # the picker's entry for "a new data set"
SAID = "_ds_said"  # st.session_state: what the last action did, shown once


def say(kind: str, text: str) -> None:
    """Remember one line ("success", "error", "warning" or "info") for the page drawn next."""
    st.session_state.setdefault(SAID, []).append((kind, text))


def show_said() -> None:
    for kind, text in st.session_state.pop(SAID, []):
        getattr(st, kind)(text)


def attempt(action: Callable[[], object], done: str | None = None) -> bool:
    """Run a change; its refusal becomes the one line shown (nothing was changed then)."""
    try:
        action()
    except (VGGError, OSError) as error:
        say("error", str(error))
        return False
    if done:
        say("success", done)
    return True


def nonce(key: str) -> int:
    return st.session_state.get(f"_ds_nonce_{key}", 0)


def renew(key: str) -> None:
    """A fresh widget under ``key`` next time (an emptied upload box, a camera ready for a new shot)."""
    st.session_state[f"_ds_nonce_{key}"] = nonce(key) + 1


@st.cache_data(max_entries=4000, show_spinner=False)
def thumbnail(path: str, modified: float) -> np.ndarray:
    """A small copy of a stored picture (the set's own re-encoded JPEG); cached per file version."""
    with Image.open(path) as img:
        img.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return np.asarray(img)


# ------------------------------------------------------------------------------ callbacks


def create() -> None:
    name = st.session_state.get("ds-new-name", "").strip()
    classes = [c.strip() for c in st.session_state.get("ds-new-classes", "").split(",") if c.strip()]
    if attempt(lambda: datasets.create_set(name, classes),
               f"Data set “{name}” created with {len(classes)} classes: add pictures to each."):
        st.session_state[PICK] = name
        st.session_state["ds-new-name"] = st.session_state["ds-new-classes"] = ""


def add_uploads(set_name: str, class_name: str | None, key: str) -> None:
    """The files (pictures and zips) of an upload box or the camera's shot, added all or nothing."""
    value = st.session_state.get(f"{key}-{nonce(key)}")
    files = value if isinstance(value, list) else [value] if value is not None else []
    if not files:
        return
    renew(key)
    uploads = [(f.name, f.getvalue()) for f in files]
    try:
        report = datasets.add_pictures(set_name, class_name, uploads)
    except (VGGError, OSError) as error:
        say("error", str(error))
        return
    where = f"“{class_name}”" if class_name else f"“{set_name}”"
    created = f"; new classes: {', '.join(report.new_classes)}" if report.new_classes else ""
    say("success" if report.added else "warning",
        f"{report.added} picture{'s' if report.added != 1 else ''} added to {where}{created}.")
    for _, reason in report.skipped:
        say("warning", f"Skipped {reason}")


def add_class(set_name: str) -> None:
    name = st.session_state.get("ds-add-class", "").strip()
    if attempt(lambda: datasets.add_class(set_name, name), f"Class “{name}” added."):
        st.session_state["ds-add-class"] = ""


def rename_class(set_name: str, old: str, key: str) -> None:
    new = st.session_state.get(key, "").strip()
    attempt(lambda: datasets.rename_class(set_name, old, new), f"Class “{old}” is now “{new}”.")


def delete_class(set_name: str, class_name: str) -> None:
    attempt(lambda: datasets.delete_class(set_name, class_name), f"Class “{class_name}” deleted.")


def delete_picture(set_name: str, class_name: str, picture: str) -> None:
    attempt(lambda: datasets.delete_picture(set_name, class_name, picture))


def delete_set(set_name: str) -> None:
    if attempt(lambda: datasets.delete_set(set_name), f"Data set “{set_name}” deleted."):
        st.session_state[PICK] = NEW


def use_set(set_name: str) -> None:
    cfg = DataConfig(source=set_name, input_size=OWN_INPUT_SIZE, images_per_class=None)
    set_current_data(cfg, data_label(cfg))
    # the "Choose a data set" tab shows it too
    st.session_state.update({"data_source": "folder", "data_folder": set_name, "data_size": OWN_INPUT_SIZE,
                             "data_all": True})
    say("success", f"Every page now uses “{set_name}” at {OWN_INPUT_SIZE} px. On the Train page, "
                   "“Own pictures: fast fine-tune” trains a model on it in seconds.")


# ------------------------------------------------------------------------------ the page part


def new_set_ui() -> None:
    with st.form("ds-new", border=True, enter_to_submit=False):
        st.markdown("**A new data set**")
        name_col, classes_col = st.columns([1, 2])
        name_col.text_input("Name", key="ds-new-name", placeholder="our pets",
                            max_chars=datasets.MAX_NAME_LENGTH,
                            help="Letters, digits, spaces, '-' and '_'.")
        classes_col.text_input(f"Classes ({datasets.MIN_CLASSES} to {datasets.MAX_CLASSES}, separated by commas)",
                               key="ds-new-classes", placeholder="cat, dog, hamster")
        st.form_submit_button("Create", type="primary", icon=":material/add:", on_click=create)


def class_ui(info: datasets.DatasetInfo, cls: datasets.ClassInfo) -> None:
    set_name = info.name
    box = st.container(border=True)
    head, rename, remove = box.columns([4, 1, 1], vertical_alignment="center")
    head.markdown(f"**{cls.name}** · {cls.pictures} picture{'s' if cls.pictures != 1 else ''} · "
                  f"{datasets.format_size(cls.bytes)}")
    with rename.popover("Rename", icon=":material/edit:"):
        key = f"ds-rename-{set_name}-{cls.name}"
        st.text_input("New name", value=cls.name, key=key)
        st.button("Rename", key=f"{key}-go", on_click=rename_class, args=(set_name, cls.name, key))
    with remove.popover("Delete", icon=":material/delete:"):
        st.caption(f"Deletes “{cls.name}” and its {cls.pictures} pictures.")
        st.button("Delete the class", key=f"ds-delete-{set_name}-{cls.name}", type="primary",
                  on_click=delete_class, args=(set_name, cls.name))
    pictures = datasets.list_pictures(set_name, cls.name)[-THUMBS:][::-1]
    if pictures:
        cols = box.columns(THUMBS // 2)
        for i, pic in enumerate(pictures):
            col = cols[i % len(cols)]
            col.image(thumbnail(str(pic.path), pic.modified), width=THUMB_SIDE)
            col.button("", key=f"ds-del-{set_name}-{cls.name}-{pic.name}", icon=":material/close:",
                       help="Delete this picture", on_click=delete_picture, args=(set_name, cls.name, pic.name))
        if cls.pictures > THUMBS:
            box.caption(f"The newest {THUMBS} of {cls.pictures}.")
    files, camera = box.columns([3, 2])
    key = f"ds-up-{set_name}-{cls.name}"
    files.file_uploader(f"Add pictures to “{cls.name}” (many at once, or a .zip)", type=PICTURE_TYPES + ["zip"],
                        accept_multiple_files=True, key=f"{key}-{nonce(key)}", on_change=add_uploads,
                        args=(set_name, cls.name, key))
    if camera.toggle("Camera", key=f"ds-cam-on-{set_name}-{cls.name}",
                     help="Each shot is added to this class at once."):
        key = f"ds-cam-{set_name}-{cls.name}"
        camera.camera_input(f"A picture for “{cls.name}”", key=f"{key}-{nonce(key)}", on_change=add_uploads,
                            args=(set_name, cls.name, key))


def set_ui(info: datasets.DatasetInfo) -> None:
    set_name = info.name
    fixed = locks().data is not None
    in_use = current_data().source == set_name
    cols = st.columns([2, 1.3, 1, 1], vertical_alignment="center")
    cols[0].markdown(f"**{set_name}** · {len(info.classes)} classes · {info.pictures} pictures · "
                     f"{datasets.format_size(info.bytes)}")
    ready = info.pictures > 0 and all(c.pictures > 0 for c in info.classes)
    cols[1].button("In use" if in_use else "Use for training", key="ds-use", type="primary", on_click=use_set,
                   args=(set_name,), disabled=in_use or fixed or not ready, icon=":material/check:",
                   help="Locked by the teacher" if fixed else
                   (None if ready else "Every class needs a picture first"))
    cols[2].download_button("Download .zip", data=functools.partial(datasets.export_zip, set_name),
                            file_name=f"{set_name}.zip", mime="application/zip", key="ds-download",
                            icon=":material/download:", on_click="ignore", disabled=not info.pictures)
    with cols[3].popover("Delete set", icon=":material/delete_forever:"):
        st.caption(f"Deletes “{set_name}” and all its {info.pictures} pictures for everyone.")
        st.button("Delete the data set", key="ds-delete-set", type="primary", on_click=delete_set, args=(set_name,))
    for cls in info.classes:
        class_ui(info, cls)
    add, zip_box = st.columns(2)
    with add.container(border=True):
        st.text_input("Another class", key="ds-add-class", placeholder="name",
                      max_chars=datasets.MAX_NAME_LENGTH)
        st.button("Add the class", key="ds-add-class-go", icon=":material/add:", on_click=add_class,
                  args=(set_name,), disabled=len(info.classes) >= datasets.MAX_CLASSES)
    key = f"ds-zip-{set_name}"
    zip_box.file_uploader("A .zip of class folders (each folder becomes a class)", type=["zip"],
                          accept_multiple_files=True, key=f"{key}-{nonce(key)}", on_change=add_uploads,
                          args=(set_name, None, key))


def builder_ui() -> None:
    """Choose one of the class's sets or make a new one; then its classes and pictures."""
    lesson("own_pictures")
    show_said()
    sets = {info.name: info for info in datasets.list_sets()}
    if st.session_state.get(PICK) not in sets:
        st.session_state[PICK] = NEW
    st.selectbox("Data set", [NEW, *sets], key=PICK,
                 format_func=lambda n: n or "➕ a new data set")
    chosen = st.session_state[PICK]
    if chosen == NEW:
        new_set_ui()
    else:
        set_ui(sets[chosen])
