"""Which engine answers a prompt model's requests: batched llama.cpp in this process, or an
OpenAI-compatible server named by the model's source.server_url.

`plan_backend` is cheap (no model is loaded): it gives the model file's sha256 and the settings
that go into cache keys, so cached answers are found before anything is loaded. `open_backend`
loads the model or prepares the HTTP client only when answers are missing.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from .llama_batch import MIN_P, TOP_K, TOP_P, BatchedLlama
from .model_files import file_sha256, resolve_gguf
from .openai_backend import OpenAIChatBackend
from .spec import ExperimentSpec, PromptModelSpec

BATCHED_KIND = "llama_cpp_batched"


@dataclass(frozen=True)
class BackendPlan:
    kind: str
    model_sha256: str
    # The GGUF path, or the server URLs joined by commas, for provenance.
    location: str
    # Everything besides the request that changes an answer; part of every cache key.
    cache_settings: dict[str, object]


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def plan_backend(spec: ExperimentSpec, model: PromptModelSpec) -> BackendPlan:
    """Choose the engine for model and return its weights' sha256 and cache settings, without loading anything."""
    if model.served:
        client = _http_client(model)
        return BackendPlan(client.kind, str(model.source.model_file_sha256), ",".join(model.source.servers),
                           client.cache_settings())
    path = resolve_gguf(spec, model)
    settings = {"kind": BATCHED_KIND, "llama_cpp_python": _llama_cpp_version(), "n_ctx": spec.prompting.n_ctx,
                "top_k": TOP_K, "top_p": TOP_P, "min_p": MIN_P}
    return BackendPlan(BATCHED_KIND, file_sha256(path), str(path), settings)


def _http_client(model: PromptModelSpec) -> OpenAIChatBackend:
    backend = model.backend
    return OpenAIChatBackend(
        server_url=model.source.servers,
        server_model=model.source.server_model or model.name,
        parallel=backend.parallel,
        timeout_s=backend.timeout_s,
        api_key_env=backend.api_key_env,
        grammar_field=backend.grammar_field,
    )


def open_backend(spec: ExperimentSpec, model: PromptModelSpec, plan: BackendPlan):
    """Load the model into a BatchedLlama, or prepare an OpenAIChatBackend. The caller closes it."""
    if plan.kind == BATCHED_KIND:
        return BatchedLlama(Path(plan.location), spec.prompting.n_ctx, spec.prompting.n_threads, model.chat_format,
                            parallel=model.backend.parallel)
    return _http_client(model)
