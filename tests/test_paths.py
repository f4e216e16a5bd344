"""Paths from users are resolved and must stay inside the allowed folders; run ids are safe names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vgg.errors import PathError
from vgg.paths import resolve_inside, validate_run_id


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    data, runs, outside = tmp_path / "data", tmp_path / "runs", tmp_path / "outside"
    for folder in (data, runs, outside):
        folder.mkdir()
    (data / "pets").mkdir()
    (outside / "secret.txt").write_text("no")
    return data, runs, outside


def test_inside_paths_resolve(roots: tuple[Path, Path, Path]) -> None:
    data, runs, _ = roots
    assert resolve_inside("pets", data) == (data / "pets").resolve()  # relative to the first root
    assert resolve_inside(data / "pets", data) == (data / "pets").resolve()
    assert resolve_inside(data / "pets" / ".." / "pets", data) == (data / "pets").resolve()
    assert resolve_inside(runs / "r1" / "best.pt", data, runs) == (runs / "r1" / "best.pt").resolve()
    assert resolve_inside(data, data) == data.resolve()  # the root itself


@pytest.mark.parametrize("bad", ["../outside", "pets/../../outside/secret.txt", "../../../../etc/passwd"])
def test_dotdot_refused(roots: tuple[Path, Path, Path], bad: str) -> None:
    data, runs, _ = roots
    with pytest.raises(PathError) as info:
        resolve_inside(bad, data, runs)
    message = str(info.value)
    assert bad in message and str(data.resolve()) in message and str(runs.resolve()) in message
    assert "\n" not in message


def test_absolute_path_elsewhere_refused(roots: tuple[Path, Path, Path]) -> None:
    data, _, outside = roots
    with pytest.raises(PathError, match="outside the allowed folders"):
        resolve_inside(outside / "secret.txt", data)
    with pytest.raises(PathError):
        resolve_inside("/etc/passwd", data)


def test_symlink_pointing_out_refused(roots: tuple[Path, Path, Path]) -> None:
    data, _, outside = roots
    (data / "escape").symlink_to(outside)
    (data / "file_link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(PathError):
        resolve_inside("escape", data)
    with pytest.raises(PathError):
        resolve_inside("escape/secret.txt", data)
    with pytest.raises(PathError):
        resolve_inside(data / "file_link.txt", data)
    # A link that stays inside is fine and resolves to its target.
    (data / "alias").symlink_to(data / "pets")
    assert resolve_inside("alias", data) == (data / "pets").resolve()


def test_root_given_through_a_symlink(roots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, _, _ = roots
    link = tmp_path / "data_link"
    link.symlink_to(data)
    assert resolve_inside(link / "pets", link) == (data / "pets").resolve()
    assert resolve_inside(data / "pets", link) == (data / "pets").resolve()


def test_no_roots_refused(tmp_path: Path) -> None:
    with pytest.raises(PathError):
        resolve_inside(tmp_path)


def test_symlink_loop_refused(roots: tuple[Path, Path, Path]) -> None:
    data, _, _ = roots
    os.symlink(data / "loop_a", data / "loop_b")
    os.symlink(data / "loop_b", data / "loop_a")
    with pytest.raises(PathError):
        resolve_inside("loop_a/x", data)


@pytest.mark.parametrize("good", ["run-1", "2024-05-01_vgg11.bn", "A", "x" * 100, "a.b-c_d"])
def test_valid_run_ids(good: str) -> None:
    assert validate_run_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", ".hidden", "a/b", "a\\b", "../x", "x" * 101, "run 1", "rün", "a\nb", "a\x00b", "/abs"],
)
def test_invalid_run_ids(bad: str) -> None:
    with pytest.raises(PathError) as info:
        validate_run_id(bad)
    assert "\n" not in str(info.value)


def test_non_string_run_id() -> None:
    with pytest.raises(PathError):
        validate_run_id(None)  # type: ignore[arg-type]
