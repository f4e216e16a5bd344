"""A class on one server: names, the teacher's code, and the locks the teacher sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgg.classroom import LOCKS_FILE, TEACHER_CODE_ENV, ClassLocks, Classroom, LockedError, check_name, \
    is_teacher_code, teacher_code
from vgg.data import DataConfig
from vgg.errors import ConfigError
from vgg.train import TrainConfig


@pytest.mark.parametrize("raw, kept", [("Ann", "Ann"), ("  Jean-Luc   O'Neil ", "Jean-Luc O'Neil"),
                                        ("Zoë 2", "Zoë 2"), ("group_7", "group_7")])
def test_names_are_kept_tidy(raw: str, kept: str) -> None:
    assert check_name(raw) == kept


@pytest.mark.parametrize("bad", ["", "   ", "-Ann", "<script>", "a" * 41, "Ann\x00Bob", "../runs"])
def test_unusable_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(ConfigError, match="use 1 to 40 letters"):
        check_name(bad)


def test_the_teacher_code_comes_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEACHER_CODE_ENV, raising=False)
    assert teacher_code() is None
    assert not is_teacher_code("")  # no code: nobody is the teacher (and everyone may do everything)
    monkeypatch.setenv(TEACHER_CODE_ENV, "owl-42")
    assert is_teacher_code("owl-42")
    assert not is_teacher_code("owl-4")
    assert not is_teacher_code("owl-42 ")
    assert not is_teacher_code("")


def test_locks_refuse_what_they_lock_and_name_the_limit() -> None:
    cifar = DataConfig(source="cifar10")
    locks = ClassLocks(data=cifar, max_epochs=2, max_input_size=64, allow_downloads=False)
    locks.check(TrainConfig(data=cifar, epochs=2))
    locks.check(TrainConfig(data=DataConfig(source="cifar10", images_per_class=100), epochs=1))  # a subset is fine
    with pytest.raises(LockedError, match="at most 2 epoch"):
        locks.check(TrainConfig(data=cifar, epochs=3))
    with pytest.raises(LockedError, match="at most 2 epoch.*this one has 3"):
        locks.check(TrainConfig(data=cifar), n_train=15_000)  # auto epochs: 45,000 images / 15,000 = 3
    with pytest.raises(LockedError, match="at most 64 px"):
        locks.check(TrainConfig(data=cifar, epochs=1, input_size=224))
    with pytest.raises(LockedError, match="data set"):
        locks.check(TrainConfig(epochs=1))  # the synthetic set
    ClassLocks().check(TrainConfig(epochs=1000, input_size=512))  # nothing locked


def test_lock_values_are_validated() -> None:
    with pytest.raises(ConfigError, match="max epochs 0 is out of range"):
        ClassLocks(max_epochs=0)
    with pytest.raises(ConfigError, match="max input size 16"):
        ClassLocks(max_input_size=16)


def test_locks_survive_a_restart_and_a_damaged_file_locks_nothing(tmp_path: Path) -> None:
    locks = ClassLocks(data=DataConfig(source="cifar10", classes=("cat", "dog")), max_epochs=3,
                       allow_downloads=False)
    Classroom(tmp_path).set_locks(locks)
    assert Classroom(tmp_path).locks == locks  # a new server process reads the same
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temp file left
    (tmp_path / LOCKS_FILE).write_text("{not json")
    assert Classroom(tmp_path).locks == ClassLocks()
    assert not ClassLocks().any and locks.any


# -- the sidebar's people (ui.people), as a pupil and the teacher use them ------------------------


def people_script() -> None:
    import streamlit as st

    from ui.people import name_ui, sync_address, teacher_ui

    sync_address()
    with st.sidebar:
        name_ui()
        teacher_ui()


def test_the_teacher_code_makes_this_session_the_teacher_and_is_never_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(TEACHER_CODE_ENV, "owl-42")
    at = AppTest.from_function(people_script).run()
    at.text_input(key="teacher_code_entry").input("owl-41").run()
    assert not at.exception
    assert [e.value for e in at.error] == ["That is not the teacher's code."]
    assert "teacher" not in at.session_state
    at.text_input(key="teacher_code_entry").input("owl-42").run()
    assert not at.exception and not at.error
    assert at.session_state["teacher"] is True
    assert at.session_state["teacher_code_entry"] == ""  # the code is not kept in the session
    assert "owl-42" not in str(dict(at.query_params))
    assert at.button(key="lock_apply") is not None  # the teacher's locks


def test_a_name_given_once_goes_into_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(people_script).run()
    at.text_input(key="name_entry").input("  Ann  Lee ").run()
    assert not at.exception
    assert at.session_state["user_name"] == "Ann Lee"
    assert at.query_params["name"] == "Ann Lee"
    assert any("You:** Ann Lee" in m.value for m in at.sidebar.markdown)
