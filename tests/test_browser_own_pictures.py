"""The class's own pictures end to end in Chromium, with a fake camera: a three-class set from files,
a zip and camera shots on the Data page; the fast fine-tune on the Train page; on the Classify page a
new picture and the live stream classified, and the model's downloads offered."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser import assert_no_exception, goto_page, run_and_wait, screenshot, wait_for_app, wait_for_plotly
from vgg.model import weights_file_name

JOB_TIMEOUT_MS = 300_000


def jpeg(colour: tuple[int, int, int], seed: int) -> bytes:
    img = Image.new("RGB", (96, 72), colour)
    img.putpixel((seed % 96, seed % 72), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def imagenet_file(server_home: Path, streamlit_server: str) -> Iterator[Path]:
    """A torchvision-shaped vgg11_bn file where the server's torchvision cache keeps ImageNet's (never a
    download); removed afterwards, so the other browser tests see a server without it."""
    path = server_home / "torch" / "hub" / "checkpoints" / weights_file_name("A", True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11_bn().state_dict(), path)
    yield path
    path.unlink()


def uploader(page: Page, label: str):  # noqa: ANN201 (a playwright Locator)
    return page.locator('[data-testid="stFileUploader"]').filter(has_text=label).locator("input[type=file]")


def pictures_of(page: Page, name: str) -> int:
    text = page.get_by_text(re.compile(rf"^{name} · \d+ pictures? · ")).inner_text()
    return int(re.search(r"· (\d+) picture", text).group(1))


def test_own_pictures_from_files_zip_and_camera_to_a_live_classifier(page: Page, streamlit_server: str,
                                                                     imagenet_file: Path) -> None:
    page.context.grant_permissions(["camera"])
    goto_page(page, streamlit_server, "Data")
    run_and_wait(page, page.get_by_role("tab", name="Make your own").click)
    page.get_by_role("textbox", name="Name", exact=True).fill("our pets")
    page.get_by_role("textbox", name=re.compile("^Classes")).fill("cat, dog, fish")
    run_and_wait(page, page.get_by_role("button", name="Create").click)
    expect(page.get_by_text(re.compile("created with 3 classes"))).to_be_visible()

    # cat: six files at once
    files = [{"name": f"cat{i}.jpg", "mimeType": "image/jpeg", "buffer": jpeg((200, 60, 40), i)} for i in range(6)]
    run_and_wait(page, lambda: uploader(page, "Add pictures to “cat”").set_input_files(files))
    expect(page.get_by_text("6 pictures added to “cat”.")).to_be_visible()
    # dog: a zip of a class folder (and a note that is skipped)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(6):
            zf.writestr(f"dog/d{i}.jpg", jpeg((40, 60, 200), i))
        zf.writestr("dog/readme.txt", "our dog pictures")
    run_and_wait(page, lambda: uploader(page, "A .zip of class folders").set_input_files(
        {"name": "dogs.zip", "mimeType": "application/zip", "buffer": archive.getvalue()}))
    expect(page.get_by_text("6 pictures added to “our pets”.")).to_be_visible()
    expect(page.get_by_text(re.compile("Skipped .*readme.txt"))).to_be_visible()
    # fish: four shots of the fake camera, one click each
    camera_toggles = page.locator('[data-testid="stCheckbox"]').filter(has_text=re.compile("^Camera"))
    expect(camera_toggles).to_have_count(3)  # one per class, in the classes' order
    run_and_wait(page, camera_toggles.nth(2).click)
    for shot in range(1, 5):
        button = page.get_by_role("button", name="Take Photo")
        expect(button).to_be_enabled(timeout=60_000)
        run_and_wait(page, button.click)
        expect(page.get_by_text(re.compile(rf"^fish · {shot} pictures? · "))).to_be_visible()
    assert [pictures_of(page, c) for c in ("cat", "dog", "fish")] == [6, 6, 4]
    assert_no_exception(page)
    screenshot(page, "own-pictures-data")
    run_and_wait(page, page.get_by_role("button", name="Use for training").click)
    expect(page.get_by_text(re.compile("Every page now uses “our pets” at 224 px"))).to_be_visible()

    goto_page(page, streamlit_server, "Train")
    run_and_wait(page, page.get_by_role("button", name=re.compile("Own pictures: fast fine-tune")).click)
    run_and_wait(page, page.get_by_role("button", name="Start training").click)
    page.get_by_text("Test accuracy").first.wait_for(timeout=JOB_TIMEOUT_MS)
    wait_for_app(page)
    assert_no_exception(page)
    screenshot(page, "own-pictures-train")

    goto_page(page, streamlit_server, "Classify")
    expect(page.get_by_text(re.compile(r"classes: cat, dog, fish"))).to_be_visible()
    page.get_by_text("Take the model home").click()
    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name=re.compile(r"PyTorch state dict")).click()
    state = torch.load(download.value.path(), weights_only=True)
    torchvision.models.vgg11_bn(num_classes=3).load_state_dict(state, strict=True)  # the home model loads
    run_and_wait(page, lambda: uploader(page, "Pictures (JPEG").set_input_files(
        {"name": "new.jpg", "mimeType": "image/jpeg", "buffer": jpeg((190, 70, 50), 99)}))
    wait_for_plotly(page, 1)
    assert_no_exception(page)

    run_and_wait(page, page.get_by_text("Live from the camera").click)
    video = page.frame_locator('iframe[title*="webrtc"]')
    video.get_by_role("button", name="START").click(timeout=60_000)
    answer = page.get_by_text(re.compile(r"^Now: (cat|dog|fish) \(\d+%\) · .* frames/s$"))
    answer.wait_for(timeout=120_000)
    screenshot(page, "own-pictures-live")
    video.get_by_role("button", name="STOP").click()
    assert_no_exception(page)
