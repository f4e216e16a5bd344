"""A class's own data sets (``vgg.datasets``) and ``python -m vgg dataset``.

Every picture is made here with Pillow; the conftest gives each test its own empty data dir.
Hostile zips are built entry by entry; "nothing written" compares every file below the set
(hidden staging files included) before and after.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import stat
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from vgg import cli
from vgg import datasets as ds
from vgg.data import DataConfig, load_data
from vgg.datasets import DatasetError
from vgg.images import DEFAULT_MAX_BYTES
from vgg.settings import data_dir

# -------------------------------------------------------------------------------------------- helpers


def picture(fmt: str = "JPEG", size: tuple[int, int] = (40, 30), colour: tuple[int, ...] = (200, 40, 40),
            mode: str = "RGB", **save: object) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, fmt, **save)
    return out.getvalue()


def noise(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """A JPEG of random pixels: several kB even re-encoded, for the byte limits."""
    out = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3)).save(out, "JPEG")
    return out.getvalue()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_STORED
             ) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def tree(path: Path) -> dict[str, int]:
    """Every file below ``path`` (hidden ones too) → its size; the lock files only exist or not."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def stored(path: Path) -> list[Path]:
    """The stored pictures below ``path`` (not the hidden staging ones)."""
    return sorted(p for p in path.rglob("*.jpg")
                  if not any(part.startswith(".") for part in p.relative_to(path).parts))


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text, text
    return text


@pytest.fixture
def fruit() -> Path:
    """A set "fruit" (apple, pear) with one apple picture, so that its lock file exists."""
    ds.create_set("fruit", ["apple", "pear"])
    assert ds.add_pictures("fruit", "apple", [("first.jpg", picture())]).added == 1
    return data_dir() / "fruit"


# -------------------------------------------------------------------------------------- happy paths


def test_create_add_rename_delete_and_list() -> None:
    info = ds.create_set("My fruit", ["apple", "pear", "plum"])
    assert info.name == "My fruit" and info.path == data_dir() / "My fruit"
    assert [c.name for c in info.classes] == ["apple", "pear", "plum"] and info.pictures == 0
    report = ds.add_pictures("My fruit", "apple", [("a.jpg", picture()), ("b.png", picture("PNG"))])
    assert report == ds.AddReport(added=2)
    ds.add_pictures("My fruit", "pear", [("c.jpg", picture(colour=(0, 200, 0)))])
    ds.add_class("My fruit", "kiwi")
    ds.rename_class("My fruit", "plum", "cherry")
    info = ds.delete_class("My fruit", "kiwi")
    assert {c.name: c.pictures for c in info.classes} == {"apple": 2, "cherry": 0, "pear": 1}
    assert info.pictures == 3 and info.bytes == sum(c.bytes for c in info.classes) > 0
    assert ds.list_sets() == (info,)
    pictures = ds.list_pictures("My fruit", "apple")
    assert len(pictures) == 2 and all(p.path.parent == info.path / "apple" for p in pictures)
    assert all(p.name.endswith(".jpg") and len(p.name) == 36 for p in pictures)  # random names, not a.jpg
    after = ds.delete_picture("My fruit", "apple", pictures[0].name)
    assert after.pictures == 2 and not pictures[0].path.exists()
    ds.delete_set("My fruit")
    assert ds.list_sets() == () and not info.path.exists()
    assert sorted(os.listdir(data_dir())) == [".datasets.lock"]  # no trash left behind


def test_other_folders_of_the_data_dir_are_not_sets() -> None:
    (data_dir() / "teacher folder" / "cats").mkdir(parents=True)
    ds.create_set("mine", ["a", "b"])
    assert [info.name for info in ds.list_sets()] == ["mine"]
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("teacher folder", "cats", [("x.jpg", picture())])
    assert "no data set named 'teacher folder'" in one_line(exc) and "mine" in one_line(exc)
    with pytest.raises(DatasetError, match="already exists"):
        ds.create_set("Teacher Folder", ["a", "b"])  # names differing only in case collide


def test_version_changes_with_the_pictures(fruit: Path) -> None:
    first = ds.set_version("fruit")
    assert ds.set_version("fruit") == first  # stable
    ds.add_pictures("fruit", "pear", [("p.jpg", picture())])
    second = ds.set_version("fruit")
    assert second != first
    (picture_info,) = ds.list_pictures("fruit", "pear")
    ds.delete_picture("fruit", "pear", picture_info.name)
    assert ds.set_version("fruit") == first  # the same files again: the same version
    ds.rename_class("fruit", "pear", "pears")
    assert ds.set_version("fruit") != first


def test_export_round_trips_into_a_new_set(fruit: Path, tmp_path: Path) -> None:
    ds.add_pictures("fruit", "pear", [("p.jpg", picture(colour=(0, 0, 200))), ("q.jpg", picture())])
    data = ds.export_zip("fruit")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(n for n in names if n.endswith(".jpg")) == sorted(
        f"{p.parent.name}/{p.name}" for p in stored(fruit))
    ds.create_set("copy", ["apple", "pear"])
    report = ds.add_pictures("copy", None, [("fruit.zip", data)])
    assert report.added == 3 and report.skipped == () and report.new_classes == ()
    copy = ds.set_info("copy")
    assert {c.name: c.pictures for c in copy.classes} == {"apple": 1, "pear": 2}
    assert sorted(p.read_bytes() for p in stored(copy.path)) == sorted(p.read_bytes() for p in stored(fruit))
    written = ds.export_zip_to("fruit", tmp_path / "fruit.zip")
    assert written == tmp_path / "fruit.zip" and zipfile.ZipFile(written).testzip() is None
    with pytest.raises(DatasetError, match="inside the data set"):
        ds.export_zip_to("fruit", fruit / "apple" / "x.zip")


def test_a_zip_of_class_folders_makes_classes_and_places_top_level_pictures(fruit: Path) -> None:
    data = make_zip([("kiwi/1.jpg", picture()), ("kiwi/2.png", picture("PNG")), ("Apple/3.jpg", picture()),
                     ("top.jpg", picture()), ("__MACOSX/kiwi/._1.jpg", b"junk"), (".DS_Store", b"junk")])
    report = ds.add_pictures("fruit", "pear", [("more.zip", data)])
    assert report.added == 4 and report.new_classes == ("kiwi",) and report.skipped == ()
    counts = {c.name: c.pictures for c in ds.set_info("fruit").classes}
    assert counts == {"apple": 2, "kiwi": 2, "pear": 1}  # "Apple/" went to the existing class apple
    # Without a class, pictures at the top of a zip are listed, not stored.
    data = make_zip([("top.jpg", picture()), ("pear/x.jpg", picture())])
    report = ds.add_pictures("fruit", None, [("top.zip", data)])
    assert report.added == 1 and [name for name, _ in report.skipped] == ["top.zip/top.jpg"]
    assert "choose a class" in report.skipped[0][1]


def test_a_zipped_folder_of_class_folders_is_unwrapped() -> None:
    ds.create_set("fruit", ["apple", "pear"])
    data = make_zip([("fruit/", b""), ("fruit/apple/1.jpg", picture()), ("fruit/pear/2.jpg", picture())])
    report = ds.add_pictures("fruit", None, [("fruit.zip", data)])
    assert report.added == 2 and report.new_classes == ()


# ----------------------------------------------------------------------------------------- re-encoding


def test_pictures_are_stored_as_oriented_jpegs_without_metadata(fruit: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": a 60×20 file shows as 20×60
    exif[0x010F] = "PhoneMaker"
    rotated = picture(size=(60, 20), exif=exif)
    alpha = picture("PNG", size=(30, 30), colour=(255, 0, 0, 0), mode="RGBA")  # fully transparent red
    wide = picture("PNG", size=(3000, 100))
    report = ds.add_pictures("fruit", "pear", [("rotated.jpg", rotated), ("alpha.png", alpha),
                                               ("wide.png", wide)])
    assert report.added == 3
    sizes = []
    for info in ds.list_pictures("fruit", "pear"):
        with Image.open(info.path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert "exif" not in img.info and len(img.getexif()) == 0 and "icc_profile" not in img.info
            assert max(img.size) <= ds.MAX_SIDE
            sizes.append(img.size)
            if img.size == (30, 30):
                assert min(img.getpixel((15, 15))) >= 250  # type: ignore[arg-type]  # transparency on white
    assert sorted(sizes) == sorted([(20, 60), (30, 30), (1024, 34)])


# ------------------------------------------------------------------------------------------ hostile zips


def symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("apple/link.jpg")
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


HOSTILE: dict[str, tuple[list[tuple[str | zipfile.ZipInfo, bytes | None]], int, str]] = {
    "bomb by ratio": ([("apple/zeros.bmp", b"\0" * 5_000_000)], zipfile.ZIP_DEFLATED, "zip bomb"),
    "dot-dot": ([("apple/ok.jpg", b"x"), ("../evil.jpg", b"x")], zipfile.ZIP_STORED, "'../evil.jpg'"),
    "dot-dot inside": ([("apple/../../evil.jpg", b"x")], zipfile.ZIP_STORED, "'apple/../../evil.jpg'"),
    "backslash dot-dot": ([("..\\evil.jpg", b"x")], zipfile.ZIP_STORED, "outside the zip"),
    "absolute": ([("/abs.jpg", b"x")], zipfile.ZIP_STORED, "'/abs.jpg' is an absolute path"),
    "drive letter": ([("C:/abs.jpg", b"x")], zipfile.ZIP_STORED, "absolute path"),
    "symlink": ([(symlink_entry(), b"/etc/passwd")], zipfile.ZIP_STORED,
                "'apple/link.jpg' is a symbolic link"),
    "bad class folder": ([("apple/ok.jpg", None), ("bad.name/x.jpg", None)], zipfile.ZIP_STORED,
                         "folder 'bad.name' cannot be a class"),
    "split folder as class": ([("train/x.jpg", None)], zipfile.ZIP_STORED, "'train'"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_zips_are_refused_with_one_line_and_nothing_written(fruit: Path, case: str) -> None:
    entries, compression, fragment = HOSTILE[case]
    data = make_zip([(name, picture() if body is None else body) for name, body in entries], compression)
    before = tree(fruit)
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("fruit", "apple", [("hostile.zip", data)])
    assert fragment in one_line(exc) and "hostile.zip" in one_line(exc)
    assert tree(fruit) == before


def test_a_zip_bomb_by_total_size_is_refused_from_its_directory(fruit: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "MAX_ZIP_UNCOMPRESSED", 30_000)
    data = make_zip([(f"apple/{i}.bmp", picture("BMP", size=(60, 60))) for i in range(3)])  # 3 × 10.8 kB
    before = tree(fruit)
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("fruit", None, [("big.zip", data)])
    assert "big.zip unpacks to" in one_line(exc) and "more than the limit" in one_line(exc)
    assert tree(fruit) == before


def test_a_zip_entry_larger_than_its_header_says_is_never_read_past_it(fruit: Path) -> None:
    good = picture(size=(200, 200))
    data = bytearray(make_zip([("apple/a.jpg", good)]))
    # Patch the central directory's uncompressed size (offset 24 in the entry) to 100 bytes.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    before = tree(fruit)
    report = ds.add_pictures("fruit", None, [("liar.zip", bytes(data))])
    assert report.added == 0 and [name for name, _ in report.skipped] == ["liar.zip/apple/a.jpg"]
    assert "cannot be unpacked" in report.skipped[0][1]  # read only up to the 100 bytes declared
    assert tree(fruit) == before


def test_non_pictures_in_a_zip_are_skipped_and_listed(fruit: Path) -> None:
    data = make_zip([("apple/good.jpg", picture()), ("apple/notes.txt", b"hello"),
                     ("apple/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
                     ("pear/good.png", picture("PNG")), ("pear/photo.heic", b"ftypheic")])
    report = ds.add_pictures("fruit", None, [("mixed.zip", data)])
    assert report.added == 2
    skipped = dict(report.skipped)
    assert set(skipped) == {"mixed.zip/apple/notes.txt", "mixed.zip/apple/broken.jpg",
                            "mixed.zip/pear/photo.heic"}
    assert "not a picture (.txt)" in skipped["mixed.zip/apple/notes.txt"]
    assert "truncated or corrupt" in skipped["mixed.zip/apple/broken.jpg"]
    assert "HEIC" in skipped["mixed.zip/pear/photo.heic"]
    assert all("\n" not in reason for reason in skipped.values())
    assert {c.name: c.pictures for c in ds.set_info("fruit").classes} == {"apple": 2, "pear": 1}


def test_a_file_that_is_not_a_zip_but_named_zip_is_refused(fruit: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("fruit", "apple", [("photos.zip", b"not a zip at all")])
    assert "photos.zip is not a readable zip file" in one_line(exc)


# ------------------------------------------------------------------------------------------------ names

BAD_NAMES = ["../x", ".hidden", "a/b", "a\\b", "", "   ", "cifar10", "Synthetic", "x" * 51, "tab\there",
             "dot.name", "_underscore"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_set_names_are_refused_naming_them(name: str) -> None:
    with pytest.raises(DatasetError) as exc:
        ds.create_set(name, ["a", "b"])
    message = one_line(exc)
    shown = name.strip().replace("\t", "?")
    assert "data set name" in message and (f"'{shown}'" in message if shown else "empty" in message)
    assert sorted(os.listdir(data_dir())) in ([], [".datasets.lock"])


@pytest.mark.parametrize("name", [*BAD_NAMES[:5], "train", "Test", "val", "__MACOSX"])
def test_bad_class_names_are_refused_naming_them(name: str) -> None:
    with pytest.raises(DatasetError) as exc:
        ds.create_set("fine", ["ok", name])
    message = one_line(exc)
    shown = name.strip()
    assert "class name" in message and (f"'{shown}'" in message if shown else "empty" in message)
    assert not (data_dir() / "fine").exists()


def test_good_names_and_their_limits(fruit: Path) -> None:
    assert ds.validate_set_name("  Äpfel und Birnen_2-b ") == "Äpfel und Birnen_2-b"
    with pytest.raises(DatasetError, match="2 to 20 classes, got 21"):
        ds.create_set("many", [f"c{i}" for i in range(21)])
    with pytest.raises(DatasetError, match="given twice"):
        ds.create_set("twice", ["cat", "Cat"])
    with pytest.raises(DatasetError, match="already has a class 'pear'"):
        ds.rename_class("fruit", "apple", "pear")
    with pytest.raises(DatasetError, match="needs at least 2 classes"):
        ds.delete_class("fruit", "pear")
    with pytest.raises(DatasetError, match="has no class 'plum'; its classes are: apple, pear"):
        ds.add_pictures("fruit", "plum", [("x.jpg", picture())])
    with pytest.raises(DatasetError, match="not a picture's file name"):
        ds.delete_picture("fruit", "apple", "../.lock")


def test_a_set_that_is_a_link_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / ds.MARKER).write_text("x")
    (data_dir() / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("sneaky", "a", [("x.jpg", picture())])
    assert "sneaky" in one_line(exc)
    assert list((outside / "a").iterdir()) == []


# ----------------------------------------------------------------------------------------------- limits


def test_a_picture_over_the_upload_limit_refuses_the_call(fruit: Path) -> None:
    before = tree(fruit)
    with pytest.raises(DatasetError) as exc:
        ds.add_pictures("fruit", "apple", [("ok.jpg", picture()),
                                           ("huge.jpg", b"\xff" * (DEFAULT_MAX_BYTES + 1))])
    assert "huge.jpg is 20.0 MB, more than the limit of 20.0 MB" in one_line(exc)
    assert tree(fruit) == before


def test_the_class_picture_limit_refuses_without_a_partial_write(fruit: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "MAX_CLASS_PICTURES", 3)
    before = tree(fruit)
    with pytest.raises(DatasetError) as exc:  # 1 stored + 3 new > 3
        ds.add_pictures("fruit", "apple", [(f"{i}.jpg", picture()) for i in range(3)])
    assert ("class 'apple' of 'fruit' would hold 4 pictures, more than the limit of 3 per class"
            in one_line(exc))
    assert tree(fruit) == before
    zipped = make_zip([("pear/1.jpg", picture()), ("apple/2.jpg", picture()), ("apple/3.jpg", picture()),
                       ("apple/4.jpg", picture())])
    with pytest.raises(DatasetError, match="'apple' of 'fruit' would hold 4 pictures"):
        ds.add_pictures("fruit", None, [("z.zip", zipped)])
    assert tree(fruit) == before
    assert ds.add_pictures("fruit", "apple", [("1.jpg", picture()), ("2.jpg", picture())]).added == 2


def test_the_set_and_byte_limits(fruit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "MAX_SET_PICTURES", 2)
    with pytest.raises(DatasetError, match="would hold 3 pictures, more than the limit of 2 per set"):
        ds.add_pictures("fruit", "pear", [("1.jpg", picture()), ("2.jpg", picture())])
    monkeypatch.setattr(ds, "MAX_SET_PICTURES", 100)
    monkeypatch.setattr(ds, "MAX_CLASS_BYTES", 1000)
    over = r"class 'pear' of 'fruit' would hold [\d.]+ kB, more than the limit of 1.0 kB per class"
    with pytest.raises(DatasetError, match=over):
        ds.add_pictures("fruit", "pear", [("n.jpg", noise())])
    monkeypatch.setattr(ds, "MAX_CLASSES", 2)
    with pytest.raises(DatasetError, match="3 classes, more than the limit of 2"):
        ds.add_pictures("fruit", None, [("z.zip", make_zip([("kiwi/1.jpg", picture())]))])
    with pytest.raises(DatasetError, match="limit is 2"):
        ds.add_class("fruit", "kiwi")
    assert [c.name for c in ds.set_info("fruit").classes] == ["apple", "pear"]


# ------------------------------------------------------------------------------------------ concurrency


def run_threads(n: int, work: Callable[[int], object]) -> tuple[list[object], list[BaseException]]:
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        barrier.wait()
        try:
            value = work(i)
            with lock:
                results.append(value)
        except BaseException as exc:  # collected, asserted on below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def test_thirty_sessions_adding_at_once_lose_nothing(fruit: Path) -> None:
    results, errors = run_threads(30, lambda i: ds.add_pictures("fruit", "pear", [
        (f"{i}a.jpg", picture(colour=(i, 0, 0))), (f"{i}b.png", picture("PNG", colour=(0, i, 0)))]))
    assert errors == [] and sum(r.added for r in results) == 60  # type: ignore[attr-defined]
    files = stored(fruit / "pear")
    assert len(files) == 60
    for file in files:
        with Image.open(file) as img:
            img.load()
            assert img.format == "JPEG"
    assert ds.set_info("fruit").pictures == 61
    assert not [p for p in fruit.iterdir() if p.name.endswith((".staging", ".tmp"))]


def test_concurrent_adds_never_break_a_limit(fruit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds, "MAX_CLASS_PICTURES", 10)
    results, errors = run_threads(30, lambda i: ds.add_pictures("fruit", "pear", [(f"{i}.jpg", picture())]))
    assert len(results) == 10 and len(errors) == 20
    assert all(isinstance(e, DatasetError) and "limit of 10 per class" in str(e) for e in errors)
    assert len(stored(fruit / "pear")) == 10


def test_another_process_holding_the_set_lock_blocks_a_change(fruit: Path) -> None:
    # An flock taken through a separate open file, as the CLI in another process would hold it.
    fd = os.open(fruit / ds.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    staged = threading.Event()
    adder = threading.Thread(target=lambda: ds.add_pictures(
        "fruit", "pear", [("x.jpg", picture())], progress=lambda *_: staged.set()))
    try:
        adder.start()
        assert staged.wait(60)
        adder.join(0.5)  # it must still wait for the lock: nothing to poll for
        assert adder.is_alive() and stored(fruit / "pear") == []
    finally:
        os.close(fd)  # releases the lock
    adder.join(60)
    assert not adder.is_alive() and len(stored(fruit / "pear")) == 1


def test_deleting_a_set_while_another_thread_adds_leaves_no_half_set(fruit: Path) -> None:
    def work(i: int) -> object:
        if i == 0:
            ds.delete_set("fruit")
            return None
        return ds.add_pictures("fruit", "pear", [(f"{i}.jpg", picture())])

    results, errors = run_threads(8, work)
    assert all(isinstance(e, DatasetError) and "no data set named 'fruit'" in str(e) for e in errors)
    assert not fruit.exists() and sorted(os.listdir(data_dir())) == [".datasets.lock"]


# -------------------------------------------------------------------------------------- reading a set


def test_a_set_loads_as_an_image_folder_by_name() -> None:
    ds.create_set("shapes set", ["zebra", "ant", "mole"])
    for i, cls in enumerate(("zebra", "ant", "mole")):
        pictures = [(f"{j}.png", picture("PNG", colour=(80 * i, 10 * j, 0))) for j in range(5)]
        ds.add_pictures("shapes set", cls, pictures)
    splits = load_data(DataConfig(source="shapes set", input_size=32))
    assert splits.classes == ("ant", "mole", "zebra")  # sorted, the folder reader's order
    assert len(splits.train) + len(splits.val) + len(splits.test) == 15
    assert splits.report.skipped == ()  # the marker, the lock and staging folders are hidden


def test_train_dataset_takes_a_set_by_name() -> None:
    from vgg.cli.common import dirs_of, train_config
    from vgg.cli.parser import build_parser

    info = ds.create_set("my set", ["a", "b"])
    args = build_parser().parse_args(["train", "--dataset", "my set"])
    cfg = train_config(args, dirs_of(args), for_training=True)
    assert cfg.data.source == "my set" and cfg.data.folder() == info.path


# ------------------------------------------------------------------------------------------------- CLI


def in_process(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_dataset_create_add_list_export_delete(tmp_path: Path) -> None:
    code, out, err = in_process("dataset", "create", "fruit", "--classes", "apple", "pear", "--json")
    assert code == 0, err
    assert [c["name"] for c in json.loads(out)["datasets"][0]["classes"]] == ["apple", "pear"]
    (tmp_path / "a.png").write_bytes(picture("PNG"))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "more.zip").write_bytes(make_zip([("kiwi/1.jpg", picture()), ("top.jpg", picture())]))
    code, out, err = in_process("dataset", "add", "fruit", "apple", str(tmp_path / "a.png"),
                                str(tmp_path / "notes.txt"), str(tmp_path / "more.zip"))
    assert code == 0, err
    assert "added 3 pictures to 'fruit' (new classes: kiwi); skipped 1 file(s)" in out
    assert err.splitlines() == [f"warning: {tmp_path / 'notes.txt'} is a text file, not an image (skipped)"]
    code, out, err = in_process("dataset", "list", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["datasets"]
    assert row["name"] == "fruit" and row["pictures"] == 3
    assert {c["name"]: c["pictures"] for c in row["classes"]} == {"apple": 2, "kiwi": 1, "pear": 0}
    assert row["version"] == ds.set_version("fruit")
    code, out, err = in_process("dataset", "list")
    assert code == 0 and "fruit: 3 classes · 3 pictures" in out
    code, out, err = in_process("dataset", "export", "fruit", "-o", str(tmp_path / "fruit.zip"))
    assert code == 0, err
    assert len([n for n in zipfile.ZipFile(tmp_path / "fruit.zip").namelist() if n.endswith(".jpg")]) == 3
    code, out, err = in_process("dataset", "delete", "fruit")
    assert code == 0 and "deleted data set 'fruit'" in out
    code, out, err = in_process("dataset", "list")
    assert code == 0 and "no data sets" in out


def test_cli_dataset_refusals_are_one_line(tmp_path: Path) -> None:
    in_process("dataset", "create", "fruit", "--classes", "apple", "pear")
    (tmp_path / "evil.zip").write_bytes(make_zip([("apple/ok.jpg", picture()), ("../evil.jpg", picture())]))
    before = tree(data_dir() / "fruit")
    code, out, err = in_process("dataset", "add", "fruit", "apple", str(tmp_path / "evil.zip"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "'../evil.jpg'" in err
    assert tree(data_dir() / "fruit") == before
    code, out, err = in_process("dataset", "create", "../x", "--classes", "a", "b")
    assert code == 1 and err.count("\n") == 1 and "'../x'" in err
    code, out, err = in_process("dataset", "add", "fruit", "apple", str(tmp_path / "missing.jpg"))
    assert code == 1 and err.splitlines()[-1] == "error: no picture was added to 'fruit'"
    code, out, err = in_process("dataset", "create", "x")  # --classes missing: a usage error
    assert code == 2 and err.count("\n") == 1


def test_cli_dataset_data_dir_option(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    code, out, err = in_process("dataset", "create", "s", "--classes", "a", "b", "--data-dir", str(other))
    assert code == 0, err
    assert (other / "s" / ds.MARKER).is_file()
