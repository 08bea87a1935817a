"""Our video LLM as an lmms-eval model, so lmms-eval users can run the token reducer on its tasks.

lmms-eval (EvolvingLMMs-Lab/lmms-eval, 0.7) finds external models through the entry-point group
``lmms_eval.models``; ``pyproject.toml`` points it at :func:`manifest`, which names
:class:`VidLLM` under the id ``vidllm``. Install with ``pip install 'vidllm[lmms-eval]'`` and run::

    python -m lmms_eval --model vidllm \\
        --model_args pretrained=default,reducer=free-video-llm,budget=512 \\
        --tasks mvbench --output_path logs/ --log_samples

The class implements lmms-eval's ``lmms`` interface: ``generate_until`` (each request's args are
``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``; the first visual is the video, or a
list of PIL images is taken as its frames), ``loglikelihood`` (the continuation's log-probability
after the reduced video and the context, and whether greedy decoding would produce it), and
``generate_until_multi_round``, which lmms-eval's own video models do not support either and which
raises ``NotImplementedError`` with that explanation. Under ``accelerate launch`` the process
index and count come from accelerate, and lmms-eval shards requests by them.

:func:`eval.lmms_eval_task.write_synthetic_task` writes a local lmms-eval task over the synthetic
world's written test split, which the slow test runs through lmms-eval's own CLI.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

try:
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError as exc:  # the module is only imported by lmms-eval itself, or by tests that have it
    raise ImportError(
        "eval.lmms_eval_model needs lmms-eval: pip install 'vidllm[lmms-eval]' (see REFERENCE.md for "
        "installing it beside the CPU torch)"
    ) from exc

logger = logging.getLogger(__name__)

MODEL_ID = "vidllm"


def manifest():
    """The ``lmms_eval.models`` entry point's payload: our model under the id ``vidllm``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID, simple_class_path="eval.lmms_eval_model.VidLLM", aliases=("vidllm_free",)
    )


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


class VidLLM(_LmmsBase):
    """lmms-eval adapter of :class:`vidllm.model.VideoLLM` (``--model vidllm``).

    Model args: ``pretrained`` (bundled name or directory, default ``default``), ``reducer``
    (``free-video-llm`` / ``uniform``), ``budget`` (visual tokens), ``num_frames``, ``device``,
    ``max_new_tokens`` (when the task gives none), ``backend`` (``hf`` / ``vllm``).
    """

    def __init__(
        self,
        pretrained: str = "default",
        reducer: str = "free-video-llm",
        budget: int | str | None = None,
        num_frames: int | str | None = None,
        device: str | None = None,
        max_new_tokens: int | str = 32,
        backend: str = "hf",
        batch_size: int | str = 1,
        **unused: Any,
    ) -> None:
        super().__init__()
        import vidllm

        if unused:
            logger.warning("vidllm for lmms-eval ignores model args %s", sorted(unused))
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            state = PartialState()
            self._rank, self._world_size = state.process_index, state.num_processes
            device = device or str(state.device)
        self.model = vidllm.load(str(pretrained), backend=backend, device=device)
        self.reducer = reducer
        self.budget = None if budget in (None, "", "None") else int(budget)
        self.num_frames = None if num_frames in (None, "", "None") else int(num_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size_per_gpu = int(batch_size)
        core = getattr(self.model, "vision", self.model)  # the vLLM backend keeps its VideoLLM here
        core.resolve_reducer(self.reducer, self.budget, self.num_frames)  # fail at start-up, not per request

    # -- inputs --------------------------------------------------------------------------------

    @staticmethod
    def _video(visuals: Any) -> Any:
        """The video of a request: a path (the usual video task), or PIL images as frames."""
        if isinstance(visuals, list | tuple):
            if not visuals:
                raise ValueError("the request has no visual input; vidllm answers questions about videos")
            if all(hasattr(v, "convert") for v in visuals):  # PIL images
                frames = [np.asarray(v.convert("RGB")) for v in visuals]
                if len({f.shape for f in frames}) > 1:
                    raise ValueError("the images of a request differ in size; pass a video instead")
                return np.stack(frames)
            return VidLLM._video(visuals[0])
        return visuals

    def _visuals(self, doc_to_visual, doc_id, task, split) -> Any:
        return self._video(doc_to_visual(self.task_dict[task][split][doc_id]))

    # -- lmms interface ------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="vidllm answering"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            try:
                answer = self.model.answer(
                    self._visuals(doc_to_visual, doc_id, task, split),
                    context,
                    budget=self.budget,
                    reducer=self.reducer,
                    num_frames=self.num_frames,
                    max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                )
                text = answer.text
            except Exception as exc:  # an unreadable video is a wrong answer, not a crashed run
                logger.warning("%s/%s doc %s: %s: %s", task, split, doc_id, type(exc).__name__, exc)
                text = ""
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            results.append(text)
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        import torch

        if getattr(self.model, "backend", "hf") != "hf":
            raise NotImplementedError(
                "loglikelihood scores continuations with the full transformers LM: use backend=hf "
                "(the vLLM backend serves generation only)"
            )
        results = []
        tokenizer = self.model.tokenizer
        embed = self.model.lm.get_input_embeddings()
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(doc)
            prepared = self.model.prepare(
                self._visuals(doc_to_visual, doc_id, task, split),
                context,
                budget=self.budget,
                reducer=self.reducer,
                num_frames=self.num_frames,
            )
            ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not ids:
                results.append((0.0, True))
                continue
            with torch.inference_mode():
                cont = torch.tensor(ids, device=self.model.device)
                embeds = torch.cat([prepared.embeds, embed(cont)])[None]
                logits = self.model.lm(inputs_embeds=embeds).logits[0, prepared.embeds.shape[0] - 1 : -1]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                total = float(logprobs.gather(1, cont[:, None]).sum())
                greedy = bool((logprobs.argmax(dim=-1) == cont).all())
            results.append((total, greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(
            "vidllm answers one question per video; multi-round tasks are not supported (as with "
            "lmms-eval's own video models)"
        )
