"""In-process llama.cpp through llama-cpp-python: the shared model loader, the answer record, and
the sequential generator (one create_chat_completion call per example).

The product decodes prompts in batches (llama_batch.BatchedLlama); the sequential generator is
kept as the reference the batched path is checked against. llama-cpp-python keeps the previous
prompt's tokens in its KV cache and reuses the longest common prefix on the next call.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


def library_version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def load_llama(model_path: Path, n_ctx: int, n_threads: int, chat_format: str | None):
    """A llama_cpp.Llama for model_path; chat_format None uses the chat template in the GGUF."""
    from llama_cpp import Llama  # imported here: loading the shared library is slow

    return Llama(
        model_path=str(model_path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_threads_batch=n_threads,
        chat_format=chat_format,
        verbose=False,
    )


class LlamaCppGenerator:
    """One loaded GGUF model that answers chat messages under a grammar."""

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int | None, chat_format: str | None):
        self.model_path = model_path
        threads = n_threads or os.cpu_count() or 1
        started = time.perf_counter()
        self._llama = load_llama(model_path, n_ctx, threads, chat_format)
        self._grammars: dict[str, object] = {}
        logger.info("loaded %s in %.1f s with %d threads", model_path.name, time.perf_counter() - started, threads)

    def _grammar(self, text: str):
        from llama_cpp import LlamaGrammar

        if text not in self._grammars:
            self._grammars[text] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[text]

    def generate(
        self, messages: list[dict[str, str]], temperature: float, seed: int, max_tokens: int, grammar: str | None
    ) -> Generation:
        started = time.perf_counter()
        response = self._llama.create_chat_completion(
            messages=messages,
            temperature=temperature,
            seed=seed,
            max_tokens=max_tokens,
            grammar=self._grammar(grammar) if grammar else None,
        )
        latency = time.perf_counter() - started
        choice = response["choices"][0]
        usage = response.get("usage", {})
        return Generation(
            text=choice["message"].get("content") or "",
            finish_reason=str(choice.get("finish_reason")),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=latency,
        )

    def close(self) -> None:
        close = getattr(self._llama, "close", None)
        if close is not None:
            close()
