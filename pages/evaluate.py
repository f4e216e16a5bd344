"""Evaluate page: one run on its test set — accuracy, confusion, mistakes, representations, filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from ui.common import (
    data_registry,
    job_manager,
    owner,
    poll_interval,
    run_store,
    show_data_loading,
    show_error,
    status_badge,
)
from ui import urlstate as url
from ui.lessons import Lessons
from ui.runs import choose_run
from ui.shell import ensure_app_shell
from vgg import analysis, inference
from vgg.data import DataConfig, TensorData
from vgg.errors import VGGError
from vgg.evaluate import Predictions, load_run_predictions
from vgg.figures import evaluate as figures
from vgg.jobs import JobSnapshot, JobStatus
from vgg.runs import RunInfo, torchvision_state_bytes
from vgg.tasks import evaluate_task

lesson = Lessons("evaluate")
SECTIONS = ["Accuracy", "Confusion matrix", "Mistakes", "Representations", "Filters", "Downloads"]
SECTION_WORDS = {name.lower().replace(" ", "-"): name for name in SECTIONS}  # ?section=confusion-matrix
URL = [url.Param("section", "evaluate_section", lambda text: SECTION_WORDS[url.choice(list(SECTION_WORDS))(text)],
                 SECTIONS[0], lambda name: name.lower().replace(" ", "-"))]
MAX_CELL_IMAGES = 30
FILTERED_IMAGES = 3


def mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@st.cache_resource(max_entries=8, show_spinner="Reading the test-set predictions…")
def load_predictions(run_id: str, _mtime: float) -> Predictions:
    """predictions.pt (keyed by the file's mtime, so a re-evaluation is seen); shared, read only."""
    return load_run_predictions(run_store(), run_id)


@st.cache_resource(max_entries=1, show_spinner="Loading the model…")
def cached_model(run_id: str, _mtime: float) -> inference.LoadedModel:
    return inference.load_model(run_id, store=run_store())


@st.cache_data(max_entries=16, show_spinner="Computing…")
def embed(run_id: str, _mtime: float, kind: str, method: str, seed: int) -> analysis.Embedding2D:
    p = load_predictions(run_id, _mtime)
    features = p.hidden if kind == "hidden" else p.probabilities
    return analysis.pca_2d(features) if method == "PCA" else analysis.tsne_2d(features, seed=seed)


def evaluate_now(info: RunInfo, data_cfg: DataConfig | None) -> None:
    """For runs without test-set predictions: evaluate best.pt in a background job."""
    lesson("no_predictions")
    key = f"evaluate:{info.run_id}"

    def latest() -> JobSnapshot | None:
        mine = [s for s in job_manager().snapshots(kind="evaluate") if s.key == key]
        return mine[-1] if mine else None

    job = latest()
    if job is not None and job.status is JobStatus.FAILED:
        show_error(job.error or "the evaluation failed")
    if job is None or job.finished:
        if st.button("Evaluate the best checkpoint now", type="primary", icon=":material/play_arrow:",
                     key="evaluate_now", disabled=data_cfg is None):
            job_manager().submit("evaluate", f"Evaluate {info.run_id}",
                                 evaluate_task(info.run_id, data_cfg, data_registry(), run_store()),
                                 key=key, owner=owner())
            st.rerun()
        return

    @st.fragment(run_every=poll_interval([job]))
    def progress() -> None:
        snap = latest()
        if snap is None or snap.finished:
            st.rerun(scope="app")
        where = f" (queued, position {snap.queue_position})" if snap.queue_position else ""
        st.progress(snap.progress, text=f"{snap.message or 'starting'}{where}")

    progress()


def image_grid(images: TensorData | None, index: np.ndarray, captions: list[str]) -> None:
    if images is None:
        st.caption("The test images appear here once the run's data set is loaded.")
    elif len(index):
        pictures = figures.to_hwc(images.images[index].numpy())
        st.image([figures.enlarge(p, 96) for p in pictures], width=96, caption=captions)


def confusion_section(
    labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, classes: list[str], test: TensorData | None
) -> None:
    lesson("confusion")
    matrix = analysis.confusion_matrix(labels, preds, len(classes))
    if "cm_true" not in st.session_state:  # start on the most frequent confusion
        off = matrix - np.diag(np.diag(matrix))
        i, j = np.unravel_index(off.argmax(), off.shape) if off.any() else (0, 0)
        st.session_state["cm_true"], st.session_state["cm_pred"] = classes[i], classes[j]
    points = (st.session_state.get("confusion") or {}).get("selection", {}).get("points", [])
    clicked = next(
        ((p["y"], p["x"]) for p in points if p.get("y") in classes and p.get("x") in classes), None
    )
    if clicked is not None and clicked != st.session_state.get("_cm_clicked"):  # a new click wins once
        st.session_state["cm_true"], st.session_state["cm_pred"] = clicked
    st.session_state["_cm_clicked"] = clicked
    true_name, pred_name = st.session_state["cm_true"], st.session_state["cm_pred"]
    normalise = st.toggle("Shares of each true class", key="cm_normalise")
    fig = figures.confusion_figure(
        matrix, classes, normalise=normalise, selected=(classes.index(true_name), classes.index(pred_name))
    )
    st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="confusion")
    left, right = st.columns(2)
    true_name = left.selectbox("True class", classes, key="cm_true")
    pred_name = right.selectbox("Predicted as", classes, key="cm_pred")
    t, p = classes.index(true_name), classes.index(pred_name)
    index = np.flatnonzero((labels == t) & (preds == p))
    st.markdown(
        f"**{len(index)}** test images of *{true_name}* predicted as *{pred_name}*"
        + (f" (showing {MAX_CELL_IMAGES})" if len(index) > MAX_CELL_IMAGES else "")
    )
    index = index[:MAX_CELL_IMAGES]
    image_grid(test, index, [f"{probs[i, p]:.0%}" for i in index])


def mistakes_section(
    labels: np.ndarray, probs: np.ndarray, classes: list[str], test: TensorData | None
) -> None:
    lesson("mistakes")
    k = st.slider("How many", 4, 48, 16, step=4, key="mistakes_k")
    worst = analysis.most_confident_mistakes(labels, probs, k)
    if worst.empty:
        st.success("No mistakes on the test set.")
        return
    image_grid(
        test,
        worst["index"].to_numpy(),
        [
            f"{classes[r.true]} {r.p_true:.0%} → {classes[r.predicted]} {r.p_pred:.0%}"
            for r in worst.itertuples()
        ],
    )
    st.caption("Caption: true class and its probability → predicted class and its probability.")


def representations_section(info: RunInfo, stamp: float, p: Predictions) -> None:
    lesson("representations")
    kinds = {"probs": "output probabilities"} | ({"hidden": "hidden layer (4096-d)"} if p.hidden is not None else {})
    kind = st.radio("Representation", list(kinds), format_func=kinds.get, horizontal=True, key="repr_kind")
    labels = p.labels.numpy()[p.hidden_rows] if kind == "hidden" else p.labels.numpy()
    pca = embed(info.run_id, stamp, kind, "PCA", 0)
    x_share, y_share = pca.explained or (0.0, 0.0)
    st.plotly_chart(
        figures.embedding_figure(
            pca.points,
            labels[pca.index],
            list(p.classes),
            title=f"PCA of the {kinds[kind]}",
            axis_titles=(f"PC 1 ({x_share:.0%} of the variance)", f"PC 2 ({y_share:.0%})"),
        ),
        key="pca",
    )
    seed_col, button_col = st.columns([1, 3], vertical_alignment="bottom")
    seed = int(seed_col.number_input("t-SNE seed", 0, 10_000, 0, key="tsne_seed"))
    wanted = (info.run_id, stamp, kind, seed)
    if button_col.button(f"Compute t-SNE (at most {analysis.TSNE_MAX_POINTS} points)", key="tsne_go"):
        st.session_state["tsne_wanted"] = wanted
    if st.session_state.get("tsne_wanted") == wanted:
        tsne = embed(info.run_id, stamp, kind, "t-SNE", seed)
        st.plotly_chart(
            figures.embedding_figure(
                tsne.points,
                labels[tsne.index],
                list(p.classes),
                title=f"t-SNE of the {kinds[kind]} ({len(tsne.index)} test images)",
            ),
            key="tsne",
        )


def filters_section(info: RunInfo, test: TensorData | None) -> None:
    lesson("filters")
    try:
        loaded = cached_model(info.run_id, mtime(info.path / "best.pt"))
    except VGGError as e:
        show_error(e)
        return
    filters = analysis.first_layer_filters(loaded.model)
    st.image(figures.filter_images(filters, 40), width=40)
    st.caption(
        f"The {len(filters)} filters of the first convolution ({filters.shape[-1]}×{filters.shape[-1]}, "
        "RGB), each stretched to the full brightness range."
    )
    if test is None:
        return
    n_filters = st.slider("Filters applied", 1, min(16, len(filters)), 8, key="filters_n")
    rows = [
        int(np.flatnonzero(test.labels.numpy() == c)[0])
        for c in range(int(test.labels.max()) + 1)
        if (test.labels == c).any()
    ][:FILTERED_IMAGES]
    maps = analysis.filtered_images(
        loaded.model, inference.normalise_batch(loaded, test.images[rows]), n_filters
    )
    for row, image_maps in zip(rows, maps, strict=True):
        st.image(
            [figures.enlarge(figures.to_hwc(test.images[[row]].numpy())[0], 64)]
            + figures.gray_images(image_maps),
            width=64,
            caption=["image"] + [f"filter {i}" for i in range(len(image_maps))],
        )


def downloads_section(info: RunInfo, table: Any) -> None:
    store = run_store()
    st.download_button(
        "Metrics (metrics.csv)",
        lambda: store.metrics(info.run_id).to_csv(index=False),
        file_name=f"{info.run_id}-metrics.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        key="download_metrics",
    )
    st.download_button(
        "Per-class accuracy (CSV)",
        table.to_csv(index=False),
        file_name=f"{info.run_id}-per-class.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
        key="download_per_class",
    )
    best = info.path / "best.pt"
    st.download_button(
        f"Best checkpoint (best.pt, {best.stat().st_size / 1e6:.0f} MB)",
        lambda: torchvision_state_bytes(store, info.run_id),
        file_name=f"{info.run_id}-best.pt",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
        key="download_best",
    )
    st.caption(
        "A checkpoint holds only tensors and plain metadata; this app loads such files with "
        "`weights_only=True`, so a file cannot run code when loaded."
    )


ensure_app_shell()
st.title("Evaluate")
lesson("intro")
info = choose_run("evaluate_run", empty="No run with a checkpoint yet: train a model first on the **Train** page.")
if info is None:
    st.stop()
st.caption(f"{status_badge(info.status)} {info.message if info.message != info.status else ''}")
if info.status == "running":
    st.info("This run is still training: its test-set evaluation comes when it finishes.",
            icon=":material/hourglass:")
    st.stop()
try:
    data_cfg: DataConfig | None = inference.run_data_config(info.config)
except VGGError as e:
    show_error(e)
    data_cfg = None
if not info.has_predictions:
    evaluate_now(info, data_cfg)
    st.stop()

stamp = mtime(info.path / "predictions.pt")
try:
    p = load_predictions(info.run_id, stamp)
except VGGError as e:
    show_error(e)
    st.stop()
labels, probs, classes = p.labels.numpy(), p.probabilities.float().numpy(), list(p.classes)
preds = p.predicted.numpy()
loss = next((v for v in (info.summary.get("test_loss"), p.loss) if isinstance(v, (int, float))), None)
cols = st.columns(4)
cols[0].metric("Test accuracy", f"{p.accuracy:.1%}")
cols[1].metric("Test loss", f"{loss:.3f}" if isinstance(loss, (int, float)) else "—")
cols[2].metric("Test images", f"{len(labels):,}")
best_val = run_store().best_val_accuracy(info)
cols[3].metric("Best validation accuracy", f"{best_val:.1%}" if best_val is not None else "—")

splits = show_data_loading(data_cfg) if data_cfg is not None else None
test = splits.test if splits is not None else None
if test is not None and (len(test) != len(labels) or not np.array_equal(test.labels.numpy(), labels)):
    st.warning("The run's data set no longer gives the same test images, so no images are shown.")
    test = None

table = p.per_class()
# The address picks the first open section of this session; kept, since a tab whose default changes
# is a new widget (it would snap back to the default on the next click).
opened = st.session_state.setdefault("_evaluate_first_section", url.initial(URL)["evaluate_section"])
tabs = st.tabs(SECTIONS, default=opened, key="evaluate_section", on_change="rerun")
url.publish(URL)
for tab, section in zip(tabs, SECTIONS, strict=True):
    if not tab.open:
        continue
    with tab:
        if section == "Accuracy":
            st.plotly_chart(figures.per_class_figure(table, overall=p.accuracy), key="per_class")
            st.dataframe(table.assign(accuracy=table["accuracy"] * 100), hide_index=True,
                         column_config={"accuracy": st.column_config.NumberColumn(format="%.1f%%")})
        elif section == "Confusion matrix":
            confusion_section(labels, preds, probs, classes, test)
        elif section == "Mistakes":
            mistakes_section(labels, probs, classes, test)
        elif section == "Representations":
            representations_section(info, stamp, p)
        elif section == "Filters":
            filters_section(info, test)
        else:
            downloads_section(info, table)
