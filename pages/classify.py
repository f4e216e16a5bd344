"""Classify page: a trained run's model, or ImageNet's before any training, on your own pictures — top 5,
preprocessing, Grad-CAM, the untouched ImageNet model beside it; and the run's model to take home."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from ui.camera import live_ui
from ui.common import run_store, show_error, status_badge
from ui.lessons import Lessons
from ui.runs import choose_run
from ui.shell import ensure_app_shell
from vgg import export, gradcam, inference
from vgg.errors import VGGError
from vgg.figures import classify as figures
from vgg.figures.evaluate import enlarge
from vgg.images import open_image
from vgg.model import model_name, pretrained_available, torchvision_name, weights_cache_dir, weights_file_name
from vgg.runs import RunInfo

lessons = Lessons("classify")
TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
DISPLAY_SIZE = 320  # pictures are shown (and cached) at most this big
IMAGENET = ("A", True)  # the model classifying before any training: the lesson's VGG11-BN
IMAGENET_SOURCE = "imagenet"  # the model choice (and the cache key) of ImageNet's untouched model


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def cached_model(run_id: str, mtime: float) -> inference.LoadedModel:
    """The run's best.pt, loaded once per version of the file (``mtime``) and shared by all sessions."""
    return inference.load_model(run_id, store=run_store())


@st.cache_resource(max_entries=1, show_spinner="Loading the ImageNet model…")
def cached_imagenet(config: str, batch_norm: bool) -> inference.LoadedModel:
    return inference.load_imagenet_model(config, batch_norm)


def model_for(source: str, mtime: float) -> inference.LoadedModel:
    """A run's model (``source`` its id), or ImageNet's (``IMAGENET_SOURCE``)."""
    return cached_imagenet(*IMAGENET) if source == IMAGENET_SOURCE else cached_model(source, mtime)


@st.cache_data(max_entries=64, show_spinner="Classifying…")
def classify(data: bytes, name: str, source: str, mtime: float, with_imagenet: bool) -> dict[str, Any]:
    """Everything shown for one picture, as plain values; ``{"error": ...}`` for a bad file."""
    try:
        img = open_image(data, name=name)
    except VGGError as e:
        return {"error": str(e)}
    loaded = model_for(source, mtime)
    prediction = inference.predict(loaded, [img])[0]
    steps = inference.preprocess_steps(img, loaded)
    shown = img.copy()
    shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
    heatmap = gradcam.grad_cam(loaded, img)
    imagenet = None
    if with_imagenet:
        imagenet = inference.imagenet_top5(
            img, loaded.config, loaded.batch_norm, model=cached_imagenet(loaded.config, loaded.batch_norm)
        )
    return {
        "image": np.asarray(shown),
        "size": img.size,
        "top": prediction.top,
        "unsure": prediction.unsure,
        "resized": steps["resized"],
        "normalised": steps["normalised"].numpy(),
        # over the picture the model saw (enlarged): a coarse map covers what the model could see
        "overlay": np.asarray(gradcam.overlay_heatmap(Image.fromarray(enlarge(steps["resized"], DISPLAY_SIZE // 2)),
                                                      heatmap)),
        "cells": heatmap.shape,
        "imagenet": imagenet,
    }


def run_ui() -> RunInfo | None:
    """Choose one of the runs with a best checkpoint (default: the run chosen on another page)."""
    info = choose_run("classify_run", empty="No trained model yet: train a model first on the **Train** page.")
    if info is None:
        return None
    accuracy = info.summary.get("test_accuracy") or info.summary.get("best_val_accuracy")
    st.caption(
        f"{status_badge(info.status)} {len(info.summary.get('classes') or info.config.get('classes') or [])} "
        "classes" + (f" · accuracy {accuracy:.1%}" if isinstance(accuracy, float) else "")
    )
    return info


def pictures_ui() -> list[tuple[str, str, bytes]]:
    """The uploaded pictures and the camera's, as (id, name, bytes); names are labels, never paths."""
    files = st.file_uploader(
        "Pictures (JPEG, PNG, WebP, BMP, GIF)", type=TYPES, accept_multiple_files=True, key="classify_upload"
    )
    pictures = [(f.file_id, f.name, f.getvalue()) for f in files or []]
    if st.toggle("Take a picture with the camera", key="classify_camera_on"):
        st.caption(lessons.text("camera"))
        shot = st.camera_input("Camera", key="classify_camera")
        if shot is not None:
            pictures.append((shot.file_id, "camera picture", shot.getvalue()))
    return pictures


def show_picture(file_id: str, name: str, result: dict[str, Any], loaded: inference.LoadedModel) -> None:
    st.subheader(name, divider="gray")
    if "error" in result:
        st.error(result["error"], icon=":material/broken_image:")
        return
    label, confidence = result["top"][0]
    left, middle, right = st.columns([1, 1.5, 1])
    left.image(result["image"], caption=f"your picture ({result['size'][0]}×{result['size'][1]})")
    middle.plotly_chart(
        figures.top_k_figure(
            result["top"],
            title=f"{loaded.name}: {label} ({confidence:.0%})",
            unsure_below=inference.UNSURE_BELOW,
        ),
        key=f"top5-{file_id}",
    )
    rows, cols = result["cells"]
    right.image(result["overlay"], caption=f"Grad-CAM: where the evidence for “{label}” is "
                f"({rows}×{cols} cells of the last convolution, on the {loaded.input_size} px input)")
    if result["unsure"]:
        st.info(lessons.text("unsure", confidence=f"{confidence:.0%}", label=label), icon=":material/help:")
    with st.expander("Preprocessing step by step"):
        steps = st.columns(3)
        steps[0].image(result["image"], caption="1 · original")
        steps[1].image(
            enlarge(result["resized"], 160),
            width=160,
            caption=f"2 · squashed to {loaded.input_size}×{loaded.input_size}",
        )
        steps[2].image(
            enlarge(figures.rescaled_image(result["normalised"]), 160),
            width=160,
            caption="3 · normalised (stretched back for viewing)",
        )
        st.plotly_chart(
            figures.normalised_channels_figure(result["normalised"], loaded.mean, loaded.std),
            key=f"channels-{file_id}",
        )
    if result["imagenet"] is not None:
        ours, theirs = st.columns(2)
        ours.plotly_chart(
            figures.top_k_figure(result["top"], title=f"fine-tuned ({len(loaded.classes)} classes)"),
            key=f"ours-{file_id}",
        )
        theirs.plotly_chart(
            figures.top_k_figure(
                result["imagenet"], title="untouched ImageNet model (1000 classes)", color="#f28e2b"
            ),
            key=f"imagenet-{file_id}",
        )


def imagenet_note(loaded: inference.LoadedModel) -> str:
    if torchvision_name(loaded.config, loaded.batch_norm) is None:
        return lessons.text("imagenet_unpublished", name=model_name(loaded.config, loaded.batch_norm))
    return lessons.text(
        "imagenet_missing",
        name=loaded.name,
        file=weights_file_name(loaded.config, loaded.batch_norm),
        folder=str(weights_cache_dir()),
    )


def model_ui() -> tuple[str, float] | None:
    """The model the pictures go to: a trained run, or ImageNet's before any training. (source, mtime)."""
    choices = ["run", IMAGENET_SOURCE]
    name = model_name(*IMAGENET)
    # The starting choice matters on the first run only (then the radio keeps its own): runs read once.
    first = "classify_model" not in st.session_state
    index = 0 if not first or any(r.has_best for r in run_store().list_runs()) else 1
    choice = st.radio("Model", choices, index=index, horizontal=True, key="classify_model",
                      format_func={"run": "A trained run",
                                   IMAGENET_SOURCE: f"ImageNet's {name}, before any training (1000 classes)"}.get)
    if choice == IMAGENET_SOURCE:
        if not pretrained_available(*IMAGENET):
            st.warning(lessons.text("imagenet_needed", name=name, file=weights_file_name(*IMAGENET),
                                    folder=str(weights_cache_dir())), icon=":material/cloud_off:")
            return None
        return IMAGENET_SOURCE, 0.0
    info = run_ui()
    if info is None:
        return None
    return info.run_id, (info.path / "best.pt").stat().st_mtime  # a newer best.pt is a new model


def take_home_ui(run_id: str) -> None:
    """The run's model as files that run without this app (``vgg.export``), made when clicked."""
    with st.expander("Take the model home", icon=":material/download:"):
        lessons("take_home", run=run_id)
        store = run_store()
        pt, onnx = st.columns(2)
        pt.download_button("PyTorch state dict (.pt)", data=functools.partial(export.export_bytes, store, run_id, "pt"),
                           file_name=f"{run_id}.pt", mime="application/octet-stream", key="classify-export-pt",
                           icon=":material/download:", on_click="ignore")
        onnx.download_button("ONNX (.onnx)", data=functools.partial(export.export_bytes, store, run_id, "onnx"),
                             file_name=f"{run_id}.onnx", mime="application/octet-stream",
                             key="classify-export-onnx", icon=":material/download:", on_click="ignore")


ensure_app_shell()
st.title("Classify")
lessons("intro")
chosen = model_ui()
if chosen is None:
    st.stop()
source, mtime = chosen
try:
    model = model_for(source, mtime)
except (VGGError, OSError) as e:
    show_error(e)
    st.stop()
st.caption(
    f"Model: **{model.name}** · input {model.input_size}×{model.input_size} px · "
    f"classes: {', '.join(model.classes[:12])}{' …' if len(model.classes) > 12 else ''}"
)
if source != IMAGENET_SOURCE:
    take_home_ui(source)
with_imagenet = source != IMAGENET_SOURCE and pretrained_available(model.config, model.batch_norm)
live_ui((source, mtime), model)
pictures = pictures_ui()
if not pictures:
    st.caption("Upload one or more pictures to see what the model makes of them.")
elif not with_imagenet and source != IMAGENET_SOURCE:
    st.caption(imagenet_note(model))
for file_id, name, data in pictures:
    try:
        result = classify(data, name, source, mtime, with_imagenet)
    except (VGGError, RuntimeError, ValueError, OSError) as e:  # one bad picture must not stop the others
        result = {
            "error": f"{name}: could not classify it ({(str(e).splitlines() or [type(e).__name__])[0]})"
        }
    show_picture(file_id, name, result, model)

with st.expander("Lessons: preprocessing, Grad-CAM and the pretrained model", icon=":material/school:"):
    for part in ("preprocessing", "grad_cam", "imagenet"):
        lessons(part)
