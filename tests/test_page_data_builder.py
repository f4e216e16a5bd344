"""AppTest of the Data page's "Make your own" tab: create a set, see thumbnails and counts, rename,
delete, add classes, refusals in one line, and use the set on every page.

(AppTest cannot fill a file uploader or a camera; tests/test_browser_own_pictures.py uploads files,
a zip and camera shots in Chromium.)"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image
from streamlit.testing.v1 import AppTest

from vgg import datasets as ds
from vgg.data import DataConfig

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "data.py")


def picture(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "JPEG")
    return out.getvalue()


def page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["data_config"] = DataConfig(source="synthetic", input_size=32, images_per_class=5)
    return at.run()


def texts(at: AppTest, kind: str) -> list[str]:
    return [e.value for e in at.get(kind)]


def button(at: AppTest, key: str):  # noqa: ANN201 (streamlit's Button element)
    return at.button(key=key)


def test_a_new_set_is_made_from_a_name_and_classes() -> None:
    at = page()
    assert not at.exception
    assert at.selectbox(key="ds-set").value == ""
    at.text_input(key="ds-new-name").input("our pets")
    at.text_input(key="ds-new-classes").input("cat, dog , hamster")
    at.button[[b.label for b in at.button].index("Create")].click().run()
    assert not at.exception
    assert [i.name for i in ds.list_sets()] == ["our pets"]
    assert [c.name for c in ds.set_info("our pets").classes] == ["cat", "dog", "hamster"]
    assert at.selectbox(key="ds-set").value == "our pets"
    assert any("created with 3 classes" in t for t in texts(at, "success"))
    heads = [m for m in texts(at, "markdown") if m.startswith("**") and " · " in m]
    assert heads == ["**our pets** · 3 classes · 0 pictures · 0 B",
                     "**cat** · 0 pictures · 0 B", "**dog** · 0 pictures · 0 B", "**hamster** · 0 pictures · 0 B"]
    assert button(at, "ds-use").disabled, "a set with an empty class cannot be used for training yet"


def test_bad_names_are_refused_in_one_line_and_nothing_is_made() -> None:
    at = page()
    at.text_input(key="ds-new-name").input("../etc")
    at.text_input(key="ds-new-classes").input("a, b")
    at.button[[b.label for b in at.button].index("Create")].click().run()
    assert not at.exception
    errors = texts(at, "error")
    assert len(errors) == 1 and "\n" not in errors[0] and "'../etc'" in errors[0]
    assert ds.list_sets() == ()
    at.text_input(key="ds-new-name").input("fine")
    at.text_input(key="ds-new-classes").input("only one")
    at.button[[b.label for b in at.button].index("Create")].click().run()
    assert any("at least 2" in e or "2 to 20" in e or "two" in e for e in texts(at, "error")), texts(at, "error")
    assert ds.list_sets() == ()


def test_thumbnails_counts_delete_rename_add_and_use() -> None:
    ds.create_set("fruit", ["apple", "pear"])
    ds.add_pictures("fruit", "apple", [("a.jpg", picture()), ("b.jpg", picture((0, 0, 200)))])
    ds.add_pictures("fruit", "pear", [("c.jpg", picture((0, 200, 0)))])
    at = page()
    at.selectbox(key="ds-set").select("fruit").run()
    assert not at.exception
    heads = [m for m in texts(at, "markdown") if m.startswith("**") and " · " in m]
    assert heads[1:] == ["**apple** · 2 pictures · " + ds.format_size(ds.set_info("fruit").classes[0].bytes),
                         "**pear** · 1 picture · " + ds.format_size(ds.set_info("fruit").classes[1].bytes)]
    thumbs = [block for block in at.get("image") if len(block.proto.imgs) == 1]
    assert len(thumbs) == 3, "one thumbnail per stored picture"

    first = ds.list_pictures("fruit", "apple")[0]
    button(at, f"ds-del-fruit-apple-{first.name}").click().run()
    assert not at.exception and not first.path.exists()
    assert {c.name: c.pictures for c in ds.set_info("fruit").classes} == {"apple": 1, "pear": 1}

    at.text_input(key="ds-rename-fruit-pear").input("Pear tree")
    button(at, "ds-rename-fruit-pear-go").click().run()
    assert {c.name for c in ds.set_info("fruit").classes} == {"apple", "Pear tree"}

    at.text_input(key="ds-add-class").input("plum")
    button(at, "ds-add-class-go").click().run()
    assert {c.name for c in ds.set_info("fruit").classes} == {"apple", "Pear tree", "plum"}
    at.text_input(key="ds-add-class").input("plum")
    button(at, "ds-add-class-go").click().run()
    assert any("already has a class 'plum'" in e for e in texts(at, "error"))

    button(at, "ds-delete-fruit-plum").click().run()
    assert {c.name for c in ds.set_info("fruit").classes} == {"apple", "Pear tree"}
    button(at, "ds-delete-fruit-apple").click().run()
    assert any("at least 2 classes" in e for e in texts(at, "error")), "a set keeps two classes"

    assert not button(at, "ds-use").disabled
    button(at, "ds-use").click().run()
    assert not at.exception
    assert at.session_state["data_config"] == DataConfig(source="fruit", input_size=224, images_per_class=None)
    assert button(at, "ds-use").label == "In use"
    assert at.session_state["data_folder"] == "fruit", "the Choose tab shows the set in use too"

    button(at, "ds-delete-set").click().run()
    assert ds.list_sets() == () and at.selectbox(key="ds-set").value == ""


def test_the_download_button_gives_the_set_as_a_zip() -> None:
    ds.create_set("fruit", ["apple", "pear"])
    ds.add_pictures("fruit", "apple", [("a.jpg", picture())])
    at = page()
    at.selectbox(key="ds-set").select("fruit").run()
    downloads = [d for d in at.get("download_button") if d.proto.id.endswith("ds-download")
                 or "ds-download" in d.proto.id]
    assert len(downloads) == 1 and not downloads[0].proto.disabled


def zip_of(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_files_a_zip_and_camera_shots_are_added_once_each() -> None:
    ds.create_set("fruit", ["apple", "pear"])
    at = page()
    at.selectbox(key="ds-set").select("fruit").run()
    at.file_uploader(key="ds-up-fruit-apple-0").set_value(
        [("one.jpg", picture(), "image/jpeg"), ("two.jpg", picture((9, 9, 9)), "image/jpeg")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert {c.name: c.pictures for c in ds.set_info("fruit").classes} == {"apple": 2, "pear": 0}
    assert any("2 pictures added to “apple”" in t for t in texts(at, "success"))
    assert at.file_uploader(key="ds-up-fruit-apple-1").value in (None, []), "an emptied box for the next files"
    at.run()
    assert ds.set_info("fruit").pictures == 2, "a rerun adds nothing twice"

    at.file_uploader(key="ds-zip-fruit-0").set_value(("more.zip", zip_of({
        "pear/p1.jpg": picture((0, 200, 0)), "plum/q1.jpg": picture((90, 0, 90)), "notes.txt": b"hello",
    }), "application/zip"))
    at.run()
    assert not at.exception
    assert {c.name: c.pictures for c in ds.set_info("fruit").classes} == {"apple": 2, "pear": 1, "plum": 1}
    assert any("new classes: plum" in t for t in texts(at, "success"))
    assert any("notes.txt" in w and "Skipped" in w for w in texts(at, "warning")), texts(at, "warning")

    at.toggle(key="ds-cam-on-fruit-pear").set_value(True).run()
    at.camera_input(key="ds-cam-fruit-pear-0").set_value(("image.jpg", picture((1, 2, 3)), "image/jpeg"))
    at.run()
    assert not at.exception
    assert ds.set_info("fruit").classes[1].pictures == 2
    assert at.camera_input(key="ds-cam-fruit-pear-1").value is None, "ready for the next shot"


def test_a_hostile_zip_is_refused_in_one_line_and_nothing_is_added() -> None:
    ds.create_set("fruit", ["apple", "pear"])
    at = page()
    at.selectbox(key="ds-set").select("fruit").run()
    at.file_uploader(key="ds-zip-fruit-0").set_value(("evil.zip", zip_of({
        "apple/a.jpg": picture(), "../../escape.jpg": picture()}), "application/zip"))
    at.run()
    assert not at.exception
    errors = texts(at, "error")
    assert len(errors) == 1 and "'..'" in errors[0] and "nothing was added" in errors[0], errors
    assert ds.set_info("fruit").pictures == 0
