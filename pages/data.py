"""Data page: choose the data set every page uses; see its classes, samples, augmentation, normalisation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ui.common import (
    current_data,
    data_label,
    data_registry,
    image_folders,
    locks,
    set_current_data,
    show_data_loading,
)
from ui.datasets import builder_ui
from ui.lessons import Lessons
from ui.shell import ensure_app_shell
from vgg import data as vdata
from vgg.augment import default_pad
from vgg.data import DataConfig, DataSplits
from vgg.errors import VGGError
from vgg.figures import data as figures
from vgg.model import imagenet_weights
from vgg.settings import data_dir

lesson = Lessons("data")
SOURCES = {"synthetic": "Synthetic shapes (no download)", "cifar10": "CIFAR-10", "folder": "An image folder"}
GRID_CLASSES, GRID_PER_CLASS, VIEWS = 10, 8, 8
KEEP = {"persist_state": "session"}  # the choice survives a visit to another page


@st.cache_data(show_spinner=False)
def imagenet_stats() -> tuple[list[float], list[float]]:
    """ImageNet mean/std as torchvision's VGG weights carry them (metadata only, nothing is downloaded)."""
    transforms = imagenet_weights("A", True).transforms()
    return list(transforms.mean), list(transforms.std)


def source_ui(cur: DataConfig) -> DataConfig | None:
    """The source and split widgets; the DataConfig they describe (None when incomplete or invalid)."""
    kind = cur.source if cur.source in vdata.BUILTIN_SOURCES else "folder"
    source = st.radio("Source", list(SOURCES), index=list(SOURCES).index(kind), format_func=SOURCES.get,
                      horizontal=True, key="data_source", **KEEP)
    if source == "folder":
        folders = image_folders()
        if not folders:
            lesson("add_folder", data_dir=str(data_dir()))
            return None
        previous = Path(cur.source).name
        chosen = previous if kind == "folder" and previous in folders else folders[0]
        name = st.selectbox("Image folder (in the data directory)", folders, index=folders.index(chosen),
                            key="data_folder", **KEEP)
        source = f"./{name}" if name in vdata.BUILTIN_SOURCES else name  # a folder called "cifar10"
        with st.expander("How to add an image folder"):
            lesson("add_folder", data_dir=str(data_dir()))
    size, per_class, all_images, val, seed = st.columns([1.2, 1.2, 0.8, 1.4, 0.8],
                                                        vertical_alignment="bottom")
    input_size = size.number_input("Input size (px)", *vdata.INPUT_SIZE_RANGE, value=cur.input_size, step=32,
                                   key="data_size", **KEEP)
    everything = all_images.toggle("All", value=cur.images_per_class is None, key="data_all", **KEEP,
                                   help="Use every image of each class")
    n = per_class.number_input("Images per class", 1, vdata.MAX_IMAGES_PER_CLASS,
                               value=cur.images_per_class or 500, disabled=everything, key="data_per_class",
                               **KEEP)
    fraction = val.slider("Validation fraction", 0.05, 0.5, value=float(cur.val_fraction), step=0.05,
                          key="data_val", **KEEP)
    seed_value = seed.number_input("Seed", 0, 2**31 - 1, value=cur.seed, key="data_seed", **KEEP)
    try:
        return DataConfig(source=source, input_size=int(input_size),
                          images_per_class=None if everything else int(n), val_fraction=float(fraction),
                          seed=int(seed_value))
    except VGGError as e:
        st.error(str(e))
        return None


def sample_grid(splits: DataSplits) -> None:
    pairs = vdata.sample_grid(splits.train, splits.classes[:GRID_CLASSES], GRID_PER_CLASS, seed=0)
    for name in splits.classes[:GRID_CLASSES]:
        index = [i for i, cls in pairs if cls == name]
        label, row = st.columns([1, 7], vertical_alignment="center")
        label.markdown(f"**{name}**")
        row.image(figures.display_images(splits.train.images[index], 64), width=64, output_format="PNG")
    if splits.num_classes > GRID_CLASSES:
        st.caption(f"The first {GRID_CLASSES} of {splits.num_classes} classes.")


def augmentation_preview(splits: DataSplits) -> None:
    lesson("augmentation")
    pick, rot, flip, crop = st.columns(4)
    index = pick.number_input("Training image number", 0, len(splits.train) - 1, 0, key="aug_index")
    if pick.button("New random views", icon=":material/casino:", key="aug_new"):
        st.session_state["aug_seed"] = st.session_state.get("aug_seed", 0) + 1
    transforms = ((rot, "Rotation", "rotate"), (flip, "Horizontal flip", "flip"),
                  (crop, "Random crop with padding", "crop"))
    on = [col.toggle(name, True, key=f"aug_{key}_on") for col, name, key in transforms]
    rotate = rot.slider("Rotation up to ± (°)", 0, 45, 5, key="aug_rotate", disabled=not on[0])
    flip_p = flip.slider("Flip probability", 0.0, 1.0, 0.5, key="aug_flip", disabled=not on[1])
    pad = crop.slider("Padding (px)", 1, max(2, splits.input_size // 4), default_pad(splits.input_size),
                      key="aug_pad", disabled=not on[2])
    rotate, flip_p, pad = (rotate if on[0] else 0), (flip_p if on[1] else 0.0), (pad if on[2] else 0)
    image = splits.train.images[int(index)]
    views = figures.augmented_views(image, VIEWS, seed=st.session_state.get("aug_seed", 0), rotate=rotate,
                                    flip_p=flip_p, pad=pad)
    label = splits.classes[int(splits.train.labels[int(index)])]
    st.image(figures.display_images(image.unsqueeze(0), 96) + figures.display_images(views, 96), width=96,
             caption=[f"original ({label})"] + [f"view {i + 1}" for i in range(VIEWS)], output_format="PNG")


def normalisation(splits: DataSplits) -> None:
    lesson("normalisation")
    mean, std = imagenet_stats()
    st.dataframe(figures.stats_table(("R", "G", "B"), {
        "ImageNet mean": mean, "ImageNet std": std,
        "this data set's mean": splits.mean, "this data set's std": splits.std,
    }))
    use_imagenet = st.radio("Normalise with", ["this data set's statistics (from scratch)",
                                               "ImageNet's statistics (from pretrained weights)"],
                            horizontal=True, key="norm_with").startswith("ImageNet")
    stats = (mean, std) if use_imagenet else (splits.mean, splits.std)
    before, after = figures.pixel_samples(splits.train.images, *stats)
    st.plotly_chart(figures.pixel_histogram_figure(before, after, after_title="after: (x − mean) / std"))


def show(splits: DataSplits) -> None:
    counts = vdata.describe(splits)
    cols = st.columns(4)
    cols[0].metric("Classes", splits.num_classes)
    for col, split in zip(cols[1:], ("train", "val", "test"), strict=True):
        col.metric(f"{split} images", f"{int(counts[split].sum()):,}")
    st.plotly_chart(figures.class_counts_figure(counts))
    report = splits.report
    how = "read from the cache" if report.from_cache else f"{report.decoded:,} images decoded"
    st.caption(f"{splits.source_name}: {how} in {report.seconds:.1f} s.")
    for warning in report.warnings:
        st.warning(warning)
    if report.empty_classes:
        st.warning("Ignored empty class folders: " + ", ".join(report.empty_classes))
    if report.skipped:
        with st.expander(f"{len(report.skipped)} file(s) skipped", icon=":material/warning:"):
            st.dataframe(pd.DataFrame(report.skipped, columns=["file", "reason"]), hide_index=True)
    st.subheader("Samples")
    sample_grid(splits)
    st.subheader("Augmentation")
    augmentation_preview(splits)
    st.subheader("Normalisation")
    normalisation(splits)


def choose_ui() -> None:
    fixed = locks().data is not None
    if fixed:
        st.info(f"The teacher fixed the class's data set: **{data_label(current_data())}**. You can look at "
                "others here, but every page uses that one.", icon=":material/lock:")
    cfg = source_ui(current_data())
    if cfg is None:
        return
    in_use, loaded = cfg == current_data(), data_registry().peek(cfg) is not None
    if st.button("Use this data set", type="primary", disabled=in_use or not loaded or fixed,
                 icon=":material/lock:" if fixed else ":material/check:", key="data_use",
                 help="Locked by the teacher" if fixed else (None if loaded else "Available once it has loaded")):
        set_current_data(cfg, data_label(cfg))
        st.rerun()  # the sidebar (and the address) show the new choice
    st.caption(f"In use on every page: **{data_label(current_data())}**"
               + (" (this one)" if in_use else " — press the button to use the one shown below instead"))
    if cfg.source == "cifar10":
        with st.expander("Where CIFAR-10 comes from"):
            lesson("cifar10", data_dir=str(data_dir()))
    splits = show_data_loading(cfg)
    if splits is not None:
        show(splits)


ensure_app_shell()
st.title("Data")
lesson("intro")
choose, make = st.tabs(["Choose a data set", "Make your own"])
with make:
    builder_ui()
with choose:
    choose_ui()
