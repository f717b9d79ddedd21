"""Answers from an OpenAI-compatible chat server (llama.cpp's server, llama-cpp-python's, vLLM).

Requests go to `<server_url>/chat/completions`, several at once from a thread pool, with the same
sampler settings as the in-process path and the answer grammar in the request field the server
reads (`grammar` for llama.cpp). The bearer token is read from the environment variable the spec
names, when a request is sent; it is never logged, stored or put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Iterator, Sequence

from .llama_backend import Generation
from .llama_batch import MIN_P, TOP_K, TOP_P, GenerationRequest
from .server_pool import ServerPool

logger = logging.getLogger(__name__)

KIND = "openai_http"


class ServerError(RuntimeError):
    """A server request that failed, with the URL, the status and what to do."""


class OpenAIChatBackend:
    """Chat completions from a server or a pool of servers, `parallel` requests in flight at a time in all.

    With several server URLs, each request goes to the server with the fewest requests in flight.
    """

    kind = KIND

    def __init__(
        self,
        server_url: str | Sequence[str],
        server_model: str,
        parallel: int,
        timeout_s: float,
        api_key_env: str | None,
        grammar_field: str | None,
    ):
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.pool = ServerPool([server_url] if isinstance(server_url, str) else list(server_url))
        self.server_model = server_model
        self.parallel = parallel
        self.timeout_s = timeout_s
        self.api_key_env = api_key_env
        self.grammar_field = grammar_field

    def cache_settings(self) -> dict[str, object]:
        """What besides the request changes an answer; the URL and the token do not."""
        return {"kind": KIND, "server_model": self.server_model, "grammar_field": self.grammar_field,
                "top_k": TOP_K, "top_p": TOP_P, "min_p": MIN_P}

    def _token(self) -> str | None:
        if self.api_key_env is None:
            return None
        token = os.environ.get(self.api_key_env)
        if not token:
            raise ServerError(
                f"environment variable {self.api_key_env} (backend.api_key_env) is not set; export the server's "
                "token in it before the run"
            )
        return token

    def _redact(self, text: str, token: str | None) -> str:
        return text.replace(token, f"<{self.api_key_env}>") if token else text

    def request_body(self, request: GenerationRequest, temperature: float, max_tokens: int) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.server_model,
            "messages": request.messages,
            "temperature": temperature,
            "seed": request.seed,
            "max_tokens": max_tokens,
            "top_k": TOP_K,
            "top_p": TOP_P,
            "min_p": MIN_P,
            "repeat_penalty": 1.0,
            "stream": False,
        }
        if request.grammar and self.grammar_field:
            body[self.grammar_field] = request.grammar
        return body

    def _post(self, body: dict[str, object]) -> tuple[dict, float, str]:
        """Send one request to the least busy server; returns the payload, the latency and the endpoint."""
        token = self._token()
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode("utf-8")
        with self.pool.lease() as base_url:
            endpoint = base_url + "/chat/completions"
            http_request = urllib.request.Request(endpoint, data=data, headers=headers, method="POST")
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                detail = self._redact(error.read().decode("utf-8", errors="replace")[:300], token)
                hint = (
                    f"check the token in {self.api_key_env}" if error.code in (401, 403) and self.api_key_env
                    else "set backend.api_key_env to the variable holding the server's token" if error.code in (401, 403)
                    else "check source.server_model and the server's log"
                )
                raise ServerError(f"{endpoint} returned HTTP {error.code}: {detail}; {hint}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                # NOTE: a request to an unreachable server fails the partition instead of moving to another
                # server of the pool; the rerun finds the answers already cached and sends only the rest.
                reason = self._redact(str(getattr(error, "reason", error)), token)
                raise ServerError(
                    f"{endpoint} is not reachable ({reason}); start the server or fix source.server_url "
                    f"(source.server_urls for a pool), or raise backend.timeout_s (now {self.timeout_s:g} s)"
                ) from None
            except json.JSONDecodeError as error:
                raise ServerError(f"{endpoint} returned invalid JSON ({error}); is it an OpenAI-compatible server?") from None
            return payload, time.perf_counter() - started, endpoint

    def generate_one(self, request: GenerationRequest, temperature: float, max_tokens: int) -> Generation:
        payload, latency, endpoint = self._post(self.request_body(request, temperature, max_tokens))
        try:
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            return Generation(
                text=choice["message"].get("content") or "",
                finish_reason=str(choice.get("finish_reason")),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                latency_s=latency,
            )
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise ServerError(
                f"{endpoint} returned a response without choices[0].message ({type(error).__name__}: {error}); "
                "is it an OpenAI-compatible chat server?"
            ) from None

    def generate(
        self, requests: Sequence[GenerationRequest], temperature: float, max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        """Answer every request, `parallel` at a time; yields (request index, generation) as each returns."""
        if not requests:
            return
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="prompt-http")
        in_flight: dict[Future, int] = {}
        queue = iter(range(len(requests)))
        try:
            # Keep at most `parallel` requests submitted, so a failure stops the rest quickly.
            for index in queue:
                in_flight[pool.submit(self.generate_one, requests[index], temperature, max_tokens)] = index
                if len(in_flight) >= self.parallel:
                    break
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    index = in_flight.pop(future)
                    generation = future.result()
                    following = next(queue, None)
                    if following is not None:
                        in_flight[pool.submit(self.generate_one, requests[following], temperature, max_tokens)] = following
                    yield index, generation
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def score(self, requests):
        raise ServerError("label scoring needs the model in this process because an HTTP server does not return the log-probabilities of answer choices")

    def close(self) -> None:
        """Nothing to release: each request opens its own connection."""
