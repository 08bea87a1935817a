"""Serving: VidLM on vLLM (``vllm_model``, registered by ``plugin``), the vLLM backend of
``vidllm.load(..., backend="vllm")`` (``backend``) and the OpenAI-compatible server behind
``vidllm serve`` (``server``). Nothing here is imported by ``vidllm`` itself; vLLM is optional."""
