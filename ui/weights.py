"""Where the weights start (LR finder and Train pages): scratch, ImageNet, an earlier run, a file."""

from __future__ import annotations

import streamlit as st

from ui.common import locks, run_store, show_error
from vgg.errors import VGGError
from vgg.model import pretrained_available, weights_cache_dir, weights_file_name
from vgg.paths import resolve_inside
from vgg.settings import data_dir

IMAGENET_INPUT_SIZE = 224  # what ImageNet's weights were trained at
INIT_LABELS = {"scratch": "From scratch", "imagenet": "ImageNet weights", "run": "An earlier run",
               "file": ".pth file in the data dir"}


def weights_problem(config: str, batch_norm: bool) -> str | None:
    """Why ImageNet weights cannot be used here (offline and not cached; none published), or None."""
    try:
        if pretrained_available(config, batch_norm):
            return None
        return (f"ImageNet weights not available offline: put {weights_file_name(config, batch_norm)} "
                f"into {weights_cache_dir()} (or set TORCH_HOME to a folder whose hub/checkpoints holds it).")
    except VGGError as error:  # A-LRN and C: no published weights at all
        return str(error)


def earlier_runs(config: str, batch_norm: bool) -> list[tuple[str, str]]:
    """(run id, label) of finished runs with a best checkpoint of the same model, newest first."""
    runs = []
    for info in run_store().list_runs():
        cfg = info.config
        if not info.has_best or cfg.get("config") != config or bool(cfg.get("batch_norm")) != batch_norm:
            continue
        accuracy = info.summary.get("best_val_accuracy")
        shown = f" · val {accuracy:.1%}" if isinstance(accuracy, int | float) else ""
        classes = info.summary.get("classes") or cfg.get("classes") or ()
        runs.append((info.run_id, f"{info.label} · {info.status}{shown} · {len(classes)} classes"))
    return runs


def fast_start(config: str, batch_norm: bool) -> tuple[str, int]:
    """Where a fast fine-tune starts, and at which input size: ImageNet's weights at 224 px where they
    are cached here, else the newest earlier run of the model at the size it was trained at (no
    waiting for a download, none needed offline), else ImageNet's (the training downloads them, or
    says what is missing)."""
    if pretrained_available(config, batch_norm):
        return "imagenet", IMAGENET_INPUT_SIZE
    runs = earlier_runs(config, batch_norm)
    if not runs:
        return "imagenet", IMAGENET_INPUT_SIZE
    cfg = run_store().get(runs[0][0]).config
    return f"run:{runs[0][0]}", int(cfg.get("input_size") or cfg.get("data", {}).get("input_size") or 224)


def weight_files() -> list[str]:
    """``.pth``/``.pt`` files in the data dir or one folder down (relative paths), for the file choice.

    Not deeper: a data dir holds image folders with tens of thousands of files.
    """
    root = data_dir()
    found = [path for pattern in ("*.pt", "*.pth", "*/*.pt", "*/*.pth") for path in root.glob(pattern)]
    return sorted(str(path.relative_to(root)) for path in found
                  if path.is_file() and not path.name.startswith("."))


def init_ui(config: str, batch_norm: bool, *, key: str, allow_file: bool = False,
            start: str = "scratch") -> str | None:
    """Choose the starting weights (``start``: the radio's starting choice); returns the ``init``
    value, or None when the choice is unusable (the reason is shown, and the caller disables Start)."""
    choices = ["scratch", "imagenet", "run"] + (["file"] if allow_file else [])
    choice = st.radio("Start from", choices, index=choices.index(start) if start in choices else 0,
                      format_func=INIT_LABELS.get, key=f"{key}-init", horizontal=True, persist_state="session")
    if choice == "scratch":
        return "scratch"
    if choice == "imagenet":
        problem = weights_problem(config, batch_norm)
        if problem and not locks().allow_downloads:
            st.warning(problem + " The teacher turned ImageNet downloads off for the class.", icon=":material/lock:")
            return None
        if problem and "not available offline" not in problem:  # A-LRN and C: none published
            st.warning(problem, icon=":material/cloud_off:")
            return None
        if problem:  # not cached: the training downloads them (or says why it cannot)
            st.info(problem.replace("not available offline", "not cached yet; the training downloads them")
                    + " Offline, put the file there first.", icon=":material/cloud_download:")
        return "imagenet"
    if choice == "run":
        runs = dict(earlier_runs(config, batch_norm))
        if not runs:
            with_bn = "with" if batch_norm else "without"
            st.info(f"No finished run of configuration {config} {with_bn} batch norm "
                    "yet: train one on the Train page first.", icon=":material/info:")
            return None
        run_id = st.selectbox("Earlier run", list(runs), format_func=runs.get, key=f"{key}-run")
        return f"run:{run_id}"
    files = weight_files()
    if not files:
        st.info(f"No .pth file in the data dir ({data_dir()}): copy a state dict there first.",
                icon=":material/info:")
        return None
    name = st.selectbox("State-dict file", files, key=f"{key}-file")
    try:
        return str(resolve_inside(name, data_dir()))
    except VGGError as error:
        show_error(error)
        return None
