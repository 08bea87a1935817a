"""``vidllm serve``: an OpenAI-compatible chat-completions server for video questions.

Endpoints (Starlette on uvicorn, both already dependencies of vLLM and Gradio):

- ``GET /v1/models``: the one served model.
- ``POST /v1/files``: upload a video (``multipart/form-data``, field ``file``); returns
  ``{"id": "file-...", "object": "file", "bytes": N, "filename": ...}``. ``DELETE /v1/files/{id}``
  removes it. Uploads live in a temporary folder for the life of the server.
- ``POST /v1/chat/completions``: OpenAI's request body, ``stream`` (server-sent events) included.
  The user message's content is a list of parts: ``{"type": "text", "text": QUESTION}`` and one video,
  given as ``{"type": "video_url", "video_url": {"url": URL}}`` (vLLM's own multimodal part) where
  ``URL`` is a ``data:video/...;base64,...`` URL, a ``file-...`` id from ``/v1/files``, or a local path
  (``file://`` or plain) that must lie under ``--video-root``; or as ``{"type": "file", "file":
  {"file_id": "file-..."}}``. Extra request fields: ``budget`` (visual tokens), ``reducer``
  (``"free-video-llm"`` or ``"uniform"``), ``num_frames``.

``usage`` carries, besides ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens``,
``visual_tokens`` (what the reducer fed the LM) and ``uniform_visual_tokens`` (what uniform sampling
of the same frames at full resolution would have fed). A streamed response sends it in its last
chunk. Every bad request gets a 4xx with an OpenAI-style ``{"error": {"message", "type", "code"}}``
body, and the server goes on answering.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDUCERS = ("free-video-llm", "uniform")


@dataclass
class ServerConfig:
    """What the server accepts; every limit refuses a request with a 4xx rather than failing later."""

    model_name: str = "vidllm"
    video_root: Path | None = None
    """Local paths in requests must resolve under this folder; ``None`` refuses local paths."""
    max_request_bytes: int = 64 << 20
    """Largest request body (JSON with base64 video, or an upload)."""
    max_video_bytes: int = 48 << 20
    """Largest video, decoded from base64 or uploaded."""
    max_new_tokens: int = 256
    """Largest ``max_tokens`` a request may ask for."""
    max_num_frames: int = 128
    """Largest ``num_frames`` a request may ask for."""
    max_budget: int = 16384
    """Largest visual-token ``budget`` a request may ask for."""
    max_uploads: int = 64
    """Uploaded files kept at once."""


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}


# -- request parsing (pure functions: the tests and the app share them) ------------------------------


@dataclass
class ChatRequest:
    """What a chat-completions request asks for, validated."""

    video: Any  # a Path or bytes
    question: str
    stream: bool
    max_new_tokens: int | None
    budget: int | None
    reducer: str
    num_frames: int | None


class UploadStore:
    """Uploaded videos on disk, by id, for the life of the server."""

    def __init__(self, limit: int):
        self._dir = tempfile.TemporaryDirectory(prefix="vidllm-uploads-")
        self.root = Path(self._dir.name)
        self.limit = limit
        self._files: dict[str, tuple[Path, str]] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes, filename: str) -> dict[str, Any]:
        with self._lock:
            if len(self._files) >= self.limit:
                raise RequestError(
                    429, f"{self.limit} uploads are stored already; delete one first", "too_many_files"
                )
            file_id = f"file-{secrets.token_hex(12)}"
            path = self.root / file_id
            path.write_bytes(data)
            self._files[file_id] = (path, filename)
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "filename": filename,
            "purpose": "vision",
        }

    def path(self, file_id: str) -> Path:
        with self._lock:
            entry = self._files.get(file_id)
        if entry is None:
            raise RequestError(
                404, f"no uploaded file {file_id!r} (upload with POST /v1/files)", "file_not_found"
            )
        return entry[0]

    def delete(self, file_id: str) -> None:
        with self._lock:
            entry = self._files.pop(file_id, None)
        if entry is None:
            raise RequestError(404, f"no uploaded file {file_id!r}", "file_not_found")
        entry[0].unlink(missing_ok=True)

    def close(self) -> None:
        self._dir.cleanup()


def _int_field(body: dict, name: str, limit: int, *, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise RequestError(
            400, f"{name} must be an integer in [{minimum}, {limit}], got {value!r}", param=name
        )
    return value


def resolve_local_video(url: str, root: Path | None) -> Path:
    """A local path from a request, refused unless it resolves (symlinks included) under ``root``."""
    if root is None:
        raise RequestError(
            403,
            "local video paths are disabled on this server (start it with --video-root)",
            "path_not_allowed",
        )
    raw = url[len("file://") :] if url.startswith("file://") else url
    candidate = Path(raw)
    resolved_root = root.resolve()
    resolved = (candidate if candidate.is_absolute() else resolved_root / candidate).resolve()
    if not resolved.is_relative_to(resolved_root):
        raise RequestError(
            403, f"the video path {raw!r} is outside the server's video root", "path_not_allowed"
        )
    if not resolved.is_file():
        raise RequestError(404, f"no video file {raw!r} under the server's video root", "video_not_found")
    return resolved


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:[<type>];base64,<data>`` URL, refused before decoding when too large."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError(400, "a data URL must look like data:video/mp4;base64,<data>", param="video_url")
    if len(payload) * 3 // 4 > max_bytes:
        raise RequestError(
            413,
            f"the base64 video is about {len(payload) * 3 // 4} bytes; the limit is {max_bytes}",
            "video_too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"the video's base64 data is malformed: {exc}", param="video_url") from exc
    if not data:
        raise RequestError(400, "the base64 video is empty", "missing_video", "video_url")
    return data


def parse_chat_request(body: Any, config: ServerConfig, uploads: UploadStore) -> ChatRequest:
    """Validate a chat-completions body; raises :class:`RequestError` with the reason."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != config.model_name:
        raise RequestError(
            404,
            f"the model {model!r} does not exist; this server serves {config.model_name!r}",
            "model_not_found",
            "model",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", param="messages")
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not user:
        raise RequestError(400, "no user message: ask a question about a video", param="messages")
    content = user[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise RequestError(400, "a message's content must be a string or a list of parts", param="messages")
    texts: list[str] = []
    videos: list[Any] = []
    for part in parts:
        if not isinstance(part, dict):
            raise RequestError(400, "every content part must be an object with a 'type'", param="messages")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RequestError(400, "a text part needs a string 'text'", param="messages")
            texts.append(part["text"])
        elif kind == "video_url":
            url = (
                (part.get("video_url") or {}).get("url") if isinstance(part.get("video_url"), dict) else None
            )
            if not isinstance(url, str) or not url:
                raise RequestError(400, "a video_url part needs video_url.url", "missing_video", "video_url")
            if url.startswith("data:"):
                videos.append(decode_data_url(url, config.max_video_bytes))
            elif url.startswith("file-"):
                videos.append(uploads.path(url))
            elif url.startswith(("http://", "https://")):
                raise RequestError(
                    400, "remote video URLs are not fetched; send the data or upload it", param="video_url"
                )
            else:
                videos.append(resolve_local_video(url, config.video_root))
        elif kind == "file":
            file_id = (part.get("file") or {}).get("file_id") if isinstance(part.get("file"), dict) else None
            if not isinstance(file_id, str):
                raise RequestError(400, "a file part needs file.file_id", "missing_video", "file")
            videos.append(uploads.path(file_id))
        else:
            raise RequestError(400, f"unsupported content part type {kind!r} (use text, video_url or file)")
    if not videos:
        raise RequestError(400, "no video in the request: add a video_url or file part", "missing_video")
    if len(videos) > 1:
        raise RequestError(400, f"one video per request, got {len(videos)}", param="messages")
    question = " ".join(t.strip() for t in texts).strip()
    if not question:
        raise RequestError(
            400, "the question is empty: add a text part that asks about the video", "empty_question"
        )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        body = {**body, "max_tokens": max_tokens}
    reducer = body.get("reducer", "free-video-llm")
    if reducer not in REDUCERS:
        raise RequestError(
            400, f"unknown reducer {reducer!r}; choose one of {', '.join(REDUCERS)}", param="reducer"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be true or false", param="stream")
    return ChatRequest(
        video=videos[0],
        question=question,
        stream=stream,
        max_new_tokens=_int_field(body, "max_tokens", config.max_new_tokens),
        budget=_int_field(body, "budget", config.max_budget),
        reducer=reducer,
        num_frames=_int_field(body, "num_frames", config.max_num_frames),
    )


# -- the app -----------------------------------------------------------------------------------------


def _usage(model, answer) -> dict[str, int]:
    completion = getattr(answer, "completion_tokens", None)
    if completion is None:  # the transformers backend does not return ids: count the answer's tokens
        completion = len(model.tokenizer(answer.text, add_special_tokens=False)["input_ids"])
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
        "visual_tokens": answer.visual_tokens,
        "uniform_visual_tokens": answer.uniform_tokens,
    }


def _details(answer) -> dict[str, Any]:
    return {
        "frames": {path: [f.index for f in frames] for path, frames in answer.frames.items()},
        "timings": answer.timings,
        "reducer": answer.reducer,
    }


def create_app(model, config: ServerConfig):
    """The Starlette app serving ``model`` (a ``VideoLLM`` or the vLLM backend)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from vidllm.video import VideoError

    uploads = UploadStore(config.max_uploads)
    # The transformers backend generates one request at a time; vLLM batches concurrent ones.
    serial = threading.Lock() if getattr(model, "backend", "hf") != "vllm" else None

    def error(exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        over = declared is not None and declared.isdigit() and int(declared) > config.max_request_bytes
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                over = over or size > config.max_request_bytes
                if not over:
                    chunks.append(chunk)
                elif size > 4 * config.max_request_bytes:
                    break
                # An over-limit body is read and dropped (up to 4x the limit): a client that sends
                # its whole body before reading the reply (urllib, requests) then gets the 413,
                # not a connection reset from a server that closed with unread data.
        except ClientDisconnect as exc:
            if not over:
                raise RequestError(400, "the client disconnected during the request") from exc
        if over:
            raise RequestError(
                413,
                f"the request is {declared} bytes; the limit is {config.max_request_bytes}"
                if declared is not None and declared.isdigit()
                else f"the request is over the limit of {config.max_request_bytes} bytes",
                "request_too_large",
            )
        return b"".join(chunks)

    def start(request: ChatRequest) -> Iterator[str]:
        return model.stream_answer(
            request.video,
            request.question,
            budget=request.budget,
            reducer=request.reducer,
            max_new_tokens=request.max_new_tokens,
            num_frames=request.num_frames,
        )

    def first_step(stream: Iterator[str]) -> tuple[str | None, Any]:
        """Run the pipeline to its first piece (or to the end); errors here are the request's fault."""
        try:
            return next(stream), None
        except StopIteration as stop:
            return None, stop.value

    def translate(exc: Exception) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        if isinstance(exc, VideoError):
            return RequestError(422, f"the video cannot be used: {exc}", "invalid_video")
        if isinstance(exc, (ValueError, TypeError)):
            return RequestError(400, str(exc))
        logger.error("request failed", exc_info=exc)
        return RequestError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")

    async def run_first(request: ChatRequest):
        def work():
            stream = start(request)
            if serial is None:
                return stream, *first_step(stream)
            serial.acquire()
            try:
                return stream, *first_step(stream)
            except BaseException:
                serial.release()
                raise

        return await run_in_threadpool(work)

    async def chat_completions(request: Request):
        created = int(time.time())
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from exc
            chat = parse_chat_request(body, config, uploads)
            stream, first, done = await run_first(chat)
        except Exception as exc:
            return error(translate(exc))

        def finish_lock() -> None:
            if serial is not None:
                serial.release()

        if not chat.stream:
            try:
                while done is None:
                    _, done = await run_in_threadpool(first_step, stream)
            except Exception as exc:
                return error(translate(exc))
            finally:
                finish_lock()
            answer = done
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": config.model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer.text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(model, answer),
                    "vidllm": _details(answer),
                }
            )

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": config.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n"

        async def events():
            answer = done
            try:
                yield chunk({"role": "assistant", "content": ""})
                if first is not None:
                    yield chunk({"content": first})
                    while answer is None:
                        piece, answer = await run_in_threadpool(first_step, stream)
                        if piece is not None:
                            yield chunk({"content": piece})
                yield chunk({}, "stop", usage=_usage(model, answer), vidllm=_details(answer))
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                stream.close()
                raise
            except Exception as exc:  # headers are sent: report in-band, as OpenAI's streams do
                failure = translate(exc)
                yield f"data: {json.dumps(failure.body())}\n\n"
            finally:
                finish_lock()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def list_models(request: Request):
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": config.model_name, "object": "model", "created": 0, "owned_by": "vidllm"}],
            }
        )

    async def upload_file(request: Request):
        try:
            declared = request.headers.get("content-length")
            limit = config.max_video_bytes + (1 << 20)  # the form's own bytes besides the file
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise RequestError(
                    413,
                    f"the upload is {declared} bytes; the limit is {config.max_video_bytes}",
                    "video_too_large",
                )
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("multipart/form-data"):
                raise RequestError(415, "upload a video as multipart/form-data with a 'file' field")
            try:
                form = await request.form(max_files=1, max_fields=8, max_part_size=limit)
            except Exception as exc:  # python-multipart and starlette raise several kinds
                raise RequestError(400, f"the multipart form cannot be read: {exc}") from exc
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(400, "the form has no 'file' field with a video", "missing_video", "file")
            data = await upload.read(config.max_video_bytes + 1)
            if len(data) > config.max_video_bytes:
                raise RequestError(
                    413, f"the video is over the limit of {config.max_video_bytes} bytes", "video_too_large"
                )
            if not data:
                raise RequestError(400, "the uploaded file is empty", "missing_video", "file")
            return JSONResponse(uploads.add(data, upload.filename or "video"))
        except RequestError as exc:
            return error(exc)

    async def delete_file(request: Request):
        try:
            uploads.delete(request.path_params["file_id"])
        except RequestError as exc:
            return error(exc)
        return JSONResponse({"id": request.path_params["file_id"], "object": "file", "deleted": True})

    async def not_found(request: Request, exc):
        return error(RequestError(404, f"no route {request.method} {request.url.path}", "not_found"))

    async def wrong_method(request: Request, exc):
        return error(
            RequestError(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        uploads.close()

    app = Starlette(
        routes=[
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/files", upload_file, methods=["POST"]),
            Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        ],
        exception_handlers={404: not_found, 405: wrong_method},
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.config = config
    return app


__all__ = [
    "REDUCERS",
    "ChatRequest",
    "RequestError",
    "ServerConfig",
    "UploadStore",
    "create_app",
    "decode_data_url",
    "parse_chat_request",
    "resolve_local_video",
]
