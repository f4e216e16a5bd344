"""The LR finder page in AppTest: defaults, refused settings, a range test run to its suggestions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.common import job_manager
from vgg.data import DataConfig
from vgg.jobs import JobContext, JobStatus

# Waiting for real jobs on a loaded machine can outlast the suite's default timeout.
pytestmark = pytest.mark.timeout(600)

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "lr-finder.py")
SMALL_DATA = DataConfig(source="synthetic", input_size=32, images_per_class=20)
DEADLINE_S = 480.0  # a loaded 2-core machine; a quiet one needs a fraction of this


@pytest.fixture
def at() -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=120)
    app.session_state["data_config"] = SMALL_DATA
    yield app
    jobs = job_manager()
    for snap in jobs.active():
        jobs.cancel(snap.id)
    for snap in jobs.snapshots():
        jobs.wait(snap.id, timeout=60)


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def run_until(at: AppTest, done, what: str) -> None:
    """Rerun (AppTest fires no run_every timers) until ``done(at)`` or the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not done(at):
        assert not at.exception, at.exception
        assert time.monotonic() < deadline, f"timed out waiting for {what}; errors: {texts(at, 'error')}"
        time.sleep(0.5)
        at.run()


def chart_points(at: AppTest) -> int:
    """Points of the live curve (the first chart: the Lessons tab comes after it)."""
    return len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["x"])


def test_defaults_are_the_notebooks(at: AppTest) -> None:
    at.run()
    assert not at.exception
    values = {key: at.number_input(key=key).value for key in
              ("lrf-start-lr", "lrf-end-lr", "lrf-num-iter", "lrf-smooth", "lrf-diverge", "lrf-skip-start",
               "lrf-skip-end", "lrf-batch")}
    assert values == {"lrf-start-lr": 1e-7, "lrf-end-lr": 10.0, "lrf-num-iter": 100, "lrf-smooth": 0.05,
                      "lrf-diverge": 5.0, "lrf-skip-start": 10, "lrf-skip-end": 5, "lrf-batch": 128}
    assert at.selectbox(key="lrf-config").value == "A" and at.toggle(key="lrf-bn").value is True
    assert at.radio(key="lrf-init").value == "scratch"
    assert at.selectbox(key="lrf-freeze").disabled  # nothing to freeze in a random network
    assert not at.button(key="lrf-start").disabled
    assert "synthetic · 32 px, 20/class" in " ".join(texts(at, "caption"))


def test_refused_settings_show_the_reason_and_disable_start(at: AppTest) -> None:
    at.run()
    at.number_input(key="lrf-end-lr").set_value(1e-8).run()
    assert any("end_lr must be > start_lr" in e for e in texts(at, "error")), texts(at, "error")
    assert at.button(key="lrf-start").disabled
    at.number_input(key="lrf-end-lr").set_value(10.0)
    at.number_input(key="lrf-batch").set_value(0).run()
    assert any("batch size 0 is out of range" in e for e in texts(at, "error")), texts(at, "error")
    assert at.button(key="lrf-start").disabled


def test_the_lessons_tab_draws_the_schedule_of_the_settings_chosen_on_the_range_test_tab(at: AppTest) -> None:
    at.run()
    assert not at.get("plotly_chart")  # the Lessons tab's chart is not sent while it is closed
    at.number_input(key="lrf-num-iter").set_value(50)
    at.number_input(key="lrf-end-lr").set_value(1.0).run()
    at.session_state["lrf_section"] = "Lessons"  # as a click on the tab
    at.run()
    assert not at.exception
    assert not any(w.key == "lrf-num-iter" for w in at.number_input)  # the Range test tab did not run
    [schedule] = at.get("plotly_chart")
    lrs = json.loads(schedule.proto.spec)["data"][0]["y"]
    assert len(lrs) == 50 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    assert any("50 batches from 1e-07 to 1e+00" in c for c in texts(at, "caption"))

    at.session_state["lrf_section"] = "Range test"
    at.run()
    assert at.number_input(key="lrf-num-iter").value == 50  # kept while the tab was closed
    at.number_input(key="lrf-end-lr").set_value(1e-8).run()  # refused there, with its reason
    at.session_state["lrf_section"] = "Lessons"
    at.run()
    assert not at.exception and not at.get("plotly_chart")  # no schedule for refused settings
    assert any("### How the range test works" in t for t in texts(at, "markdown"))  # the lesson still reads


def test_imagenet_without_cached_weights_names_file_and_folder(at: AppTest, isolated_dirs) -> None:
    at.run()
    at.radio(key="lrf-init").set_value("imagenet").run()
    [note] = [t for t in texts(at, "info") if "ImageNet" in t]  # online the job downloads them; offline its failure says the same
    assert "ImageNet weights not cached yet; the training downloads them" in note
    assert "vgg11_bn-" in note and str(isolated_dirs["TORCH_HOME"]) in note
    assert not at.button(key="lrf-start").disabled
    assert not at.exception


def test_when_the_teacher_turns_downloads_off_uncached_weights_cannot_be_chosen(at: AppTest) -> None:
    from ui.common import classroom
    from vgg.classroom import ClassLocks

    at.run()
    classroom().set_locks(ClassLocks(allow_downloads=False))
    at.radio(key="lrf-init").set_value("imagenet").run()
    [warning] = texts(at, "warning")
    assert "turned ImageNet downloads off" in warning and "vgg11_bn-" in warning
    assert at.button(key="lrf-start").disabled


def test_range_test_runs_live_and_its_suggestion_goes_to_train(at: AppTest) -> None:
    at.run()
    at.number_input(key="lrf-num-iter").set_value(10)
    at.number_input(key="lrf-batch").set_value(16)
    at.run()
    at.button(key="lrf-start").click().run()
    at.button(key="lrf-start").click().run()  # a second click while it runs starts nothing new
    assert len(job_manager().snapshots(kind="lr_find")) == 1
    assert any("running" in m or "queued" in m for m in texts(at, "markdown"))

    run_until(at, lambda a: any(b.key == "lrf-use-valley" for b in a.button), "the suggestions")
    assert not texts(at, "error")
    assert chart_points(at) >= 3
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert {t["name"] for t in spec["data"]} >= {"batch loss", "smoothed"}
    assert "Weights restored" in " ".join(texts(at, "success"))
    valley = next(m for m in at.metric if m.label.startswith("Valley"))
    assert valley.value != "—"

    at.button(key="lrf-use-valley").click().run()
    chosen = at.session_state["chosen_lr"]
    assert f"{chosen:.2e}" == valley.value
    assert any(f"{chosen:.2e}" in s for s in texts(at, "success"))
    assert any("Train" in m for m in texts(at, "markdown"))  # where to go next


def test_full_queue_is_refused_with_a_message(at: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    monkeypatch.setenv("VGG_MAX_QUEUE", "0")
    st.cache_resource.clear()  # a job manager that queues nothing
    at.run()
    at.number_input(key="lrf-num-iter").set_value(50)
    at.number_input(key="lrf-batch").set_value(8)
    at.run()

    def wait_to_be_stopped(ctx: JobContext) -> None:
        ctx.cancel_event.wait(120)
        ctx.check_cancelled()

    # Someone else's job holds the only place (a pupil's own second job is refused for another reason).
    job_manager().submit("lr_find", "someone else's range test", wait_to_be_stopped, owner="Bob")
    at.button(key="lrf-start").click().run()
    assert any("the queue is full" in e for e in texts(at, "error")), texts(at, "error")
    assert len(job_manager().snapshots(kind="lr_find")) == 1
    first = job_manager().snapshots(kind="lr_find")[0]
    job_manager().cancel(first.id)
    assert job_manager().wait(first.id, timeout=120).status is JobStatus.CANCELLED


def test_curve_figure_marks_suggestions_and_widens_for_them() -> None:
    import math

    from vgg.figures.training import lr_finder_figure

    lrs = [1e-7 * 10 ** i for i in range(9)]
    losses = [2.3, 2.3, 2.2, 2.0, 1.6, 1.2, 1.5, 4.0, 90.0]
    smoothed = [2.3, 2.3, 2.28, 2.2, 2.0, 1.8, 1.8, 2.1, 6.5]
    fig = lr_finder_figure(lrs, losses, smoothed, marks=[("valley", 1e-4, 2.0), ("min_div10", 1e-9, 2.3)],
                           lr_range=(1e-7, 10.0), skip_start=2, skip_end=1)
    assert {t.name for t in fig.data} == {"batch loss", "smoothed", "valley", "min_div10"}
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.xaxis.range[0] < math.log10(1e-9)  # the mark left of start_lr is on the chart
    assert 3.45 < fig.layout.yaxis.range[1] < 4  # half again the start: the blow-up (90) does not squash the dip
    assert len(fig.layout.shapes) == 2  # the skipped points at both ends are shaded
