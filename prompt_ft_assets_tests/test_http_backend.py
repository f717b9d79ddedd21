"""The OpenAI-compatible HTTP backend against a real llama-cpp-python server on 127.0.0.1, serving
the real SmolLM2 GGUF and protected by a bearer token, on real CoLA sentences."""

import csv
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest

from prompt_ft_assets.llama_batch import GenerationRequest
from prompt_ft_assets.model_files import resolve_gguf
from prompt_ft_assets.openai_backend import OpenAIChatBackend, ServerError
from prompt_ft_assets.prompt_runner import run_prompt_partition
from prompt_ft_assets.prompting import answer_grammar
from prompt_ft_assets.spec import ExperimentSpec
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.templates import load_promptsource_templates, select_templates

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

pytestmark = pytest.mark.slow

TOKEN_VARIABLE = "PROMPT_FT_TEST_SERVER_TOKEN"
STARTUP_TIMEOUT_S = 180
EXAMPLES = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spec(server_url: str | None, sha256: str | None, api_key_env: str | None = TOKEN_VARIABLE) -> ExperimentSpec:
    model = {**SMOLLM2, "backend": {"parallel": 2, "api_key_env": api_key_env}}
    if server_url is not None:
        model["source"] = {"server_url": server_url, "model_file_sha256": sha256, "server_model": "smollm2"}
    return ExperimentSpec.model_validate(
        {"name": "http", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [model],
         "prompting": {"runs": 1, "max_rationale_chars": 40}}
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A llama-cpp-python server with the SmolLM2 GGUF on a free port; stopped after the module."""
    local = _spec(None, None)
    model_path = resolve_gguf(local, local.prompt_models[0])

    token = secrets.token_hex(16)
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--api_key", token, "--verbose", "False"]
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)

    # hashlib here: file_sha256 would cache the digest in the project's state folder.
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    yield {"url": url, "token": token, "sha256": sha256, "process": process}

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _examples(cola_dir) -> pd.DataFrame:
    with (cola_dir / "validation.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:EXAMPLES]
    return pd.DataFrame({"idx": range(EXAMPLES), "label": [int(r[1]) for r in rows], "sentence": [r[3] for r in rows],
                         "source": [r[0] for r in rows]})


def test_served_partition_hides_token(server, cola_dir, state_dir, monkeypatch, caplog):
    """A partition answered by the server is valid, cached, and stores and logs no token."""
    monkeypatch.setenv(TOKEN_VARIABLE, server["token"])
    caplog.set_level("DEBUG")
    spec = _spec(server["url"], server["sha256"])
    template = select_templates(load_promptsource_templates("glue", "cola"), ["Make sense yes no"])[0]
    store = ResultsStore(state_dir / "results")
    key = "glue_cola|smollm2-135m__make_sense_yes_no__r0"
    logged = []

    frame = run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, _examples(cola_dir), store,
                                 key, log=logged.append)

    assert len(frame) == EXAMPLES
    assert frame["idx"].is_unique
    assert set(frame["backend"]) == {"openai_http"}
    assert frame["valid"].all(), frame["raw_output"].tolist()  # the server applied the JSON grammar
    assert set(frame["finish_reason"]) <= {"stop", "length"}
    assert (frame["prompt_tokens"] > 0).all()
    assert not frame["from_cache"].any()
    store.write("prompt_predictions", key, frame)
    token = server["token"].encode()
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path
    assert server["token"] not in caplog.text + "\n".join(logged)
    assert server["token"] not in frame.to_json()

    # Cached answers need neither the token nor a request.
    monkeypatch.delenv(TOKEN_VARIABLE)
    again = run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, _examples(cola_dir), store, key)
    assert again["from_cache"].all()
    assert again["raw_output"].tolist() == frame["raw_output"].tolist()


def _request() -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": "Is 'The cat sat.' good English? Answer in JSON."}], 1,
                             answer_grammar(["no", "yes"], 20))


def test_missing_token_variable_is_named(server, monkeypatch):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    backend = OpenAIChatBackend(server["url"], "smollm2", 2, 60, TOKEN_VARIABLE, "grammar")
    with pytest.raises(ServerError, match=f"{TOKEN_VARIABLE} .*is not set"):
        list(backend.generate([_request()], 0.2, 40))


def test_wrong_token_is_rejected_without_echoing_it(server, monkeypatch):
    wrong = secrets.token_hex(16)
    monkeypatch.setenv(TOKEN_VARIABLE, wrong)
    backend = OpenAIChatBackend(server["url"], "smollm2", 2, 60, TOKEN_VARIABLE, "grammar")
    with pytest.raises(ServerError, match="HTTP 401") as failure:
        list(backend.generate([_request(), _request()], 0.2, 40))
    assert TOKEN_VARIABLE in str(failure.value)
    assert wrong not in str(failure.value)


def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    backend = OpenAIChatBackend(url, "smollm2", 1, 10, None, "grammar")
    with pytest.raises(ServerError, match="is not reachable.*server_url"):
        list(backend.generate([_request()], 0.2, 40))
