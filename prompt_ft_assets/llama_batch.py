"""Batched llama.cpp decoding: the examples of one partition share one context and one decode loop.

`BatchedLlama` computes many chat completions at once through llama.cpp's batch API. Each
example is a sequence (a seq id) in a unified KV cache. Every `llama_decode` call advances all
active sequences by one token, and a finished sequence's slot takes the next example at once
(continuous batching). The token prefix that all rendered prompts share (chat header, system
prompt, template text before the example) is decoded once into sequence 0 and attached to every
new sequence with `llama_memory_seq_cp`, which in a unified cache only relabels cells.

Requests with the same prompt, such as the runs of one example that differ only in their seed,
are queued side by side. The first of them (the leader) decodes the prompt; the others that get a
slot while it does (followers) wait, then take a copy of its cells and sample their first token
from the same logits with their own seed. If more requests with that prompt are still queued,
the decoded prompt and its last logits are also parked in a spare sequence, and each of them
starts from that copy when a slot frees. A prompt is then decoded once however many runs it has.

Prompts are rendered by the chat handler that `Llama.create_chat_completion` would use. Each
sequence samples with `create_chat_completion`'s default sampler settings, its own seed and its
own grammar state. The grammar is first checked on a shortlist of the highest logits. Only when
the shortlist has fewer valid tokens than top-k keeps are all tokens that can be valid checked
(see `BatchedLlama._index_vocabulary`). Either way top-k gets the same valid tokens, so one
sequence decoded alone (parallel 1) gives the same text as `create_chat_completion`.

NOTE: llama.cpp's CPU kernels round differently for different batch shapes, so a sequence's
logits depend slightly (by up to about 0.2 nats for SmolLM2-135M Q4_1) on which sequences share its
batches. With parallel above 1 an answer can therefore differ from the sequential one, and a
resumed partition can differ from an uninterrupted one, although each run is reproducible.

Label scoring (`score`) decodes each prompt once with every answer choice branched off it in the
same batch (a prompt token belongs to one sequence per choice) and sums the log-probabilities of
each choice's tokens.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .llama_backend import Generation, load_llama

logger = logging.getLogger(__name__)

# create_chat_completion's sampling defaults; the per-sequence chain reproduces them.
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
TYPICAL_P = 1.0
# Highest-logit tokens checked against the grammar before every token that can be valid is.
GRAMMAR_SHORTLIST = 256
# Sequence 0 contains the shared prompt prefix; examples use sequences 1..parallel.
PREFIX_SEQ = 0
# llama.cpp rounds context sizes up to a multiple of this.
CONTEXT_PAD = 256
DEFAULT_BATCH_TOKENS = 512

_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class BatchDecodeError(RuntimeError):
    """llama_decode failed; the message names the return code and what to change."""


@dataclass(frozen=True)
class RenderedChat:
    """A chat prompt as create_chat_completion would decode it."""

    text: bytes
    tokens: tuple[int, ...]
    stop: tuple[bytes, ...]
    add_bos: bool


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]
    seed: int
    grammar: str | None


@dataclass(frozen=True)
class ScoreRequest:
    messages: list[dict[str, str]]
    choices: list[str]


@dataclass(frozen=True)
class ChoiceScores:
    """Summed log-probability of each answer choice's tokens after the prompt."""

    scores: tuple[float, ...]
    choice_tokens: tuple[int, ...]
    prompt_tokens: int
    latency_s: float

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))


class _Captured(Exception):
    """Raised by the capturing stand-in to stop a chat handler once it has built the prompt."""

    def __init__(self, prompt: list[int], stop: list[str]):
        super().__init__("captured")
        self.prompt = prompt
        self.stop = stop


class _CapturingLlama:
    """Stands in for Llama inside a chat handler: tokenizes with the real model, then captures
    the prompt tokens and stop strings the handler would pass to create_completion."""

    def __init__(self, llama):
        self._llama = llama
        self.verbose = False
        self.text = b""
        self.add_bos = False

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self.text, self.add_bos = text, add_bos
        return self._llama.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, prompt, stop=None, **_: object):
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        raise _Captured(list(prompt), list(stop))

    def __getattr__(self, name: str):
        return getattr(self._llama, name)


class ChatRenderer:
    """Renders chat messages to prompt tokens with the chat handler create_chat_completion uses:
    the named chat_format, else the GGUF's template."""

    def __init__(self, llama):
        from llama_cpp import llama_chat_format

        self._llama = llama
        self._handler = (
            llama.chat_handler
            or llama._chat_handlers.get(llama.chat_format)
            or llama_chat_format.get_chat_completion_handler(llama.chat_format)
        )

    def render(self, messages: list[dict[str, str]]) -> RenderedChat:
        proxy = _CapturingLlama(self._llama)
        try:
            self._handler(llama=proxy, messages=messages)
        except _Captured as captured:
            return RenderedChat(
                text=proxy.text, tokens=tuple(captured.prompt),
                stop=tuple(s.encode("utf-8") for s in captured.stop if s), add_bos=proxy.add_bos,
            )
        raise RuntimeError(
            f"chat format {self._llama.chat_format!r} did not build a text prompt; batched decoding supports "
            "chat formats that render a prompt string (Jinja templates and the named formats such as gemma or chatml)"
        )

    def continuation(self, rendered: RenderedChat, answer: str) -> list[int]:
        """Return the tokens of answer right after the rendered prompt.

        As in lm-evaluation-harness, prompt and answer are tokenized together and the answer's
        tokens are split off, so a token merged across the boundary is scored as the model reads it.
        """
        whole = self._llama.tokenize(rendered.text + answer.encode("utf-8"), add_bos=rendered.add_bos, special=True)
        if tuple(whole[: len(rendered.tokens)]) == rendered.tokens and len(whole) > len(rendered.tokens):
            return list(whole[len(rendered.tokens) :])
        return list(self._llama.tokenize(answer.encode("utf-8"), add_bos=False, special=False))


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all sequences share, leaving at least one token of each to decode
    (the last prompt token must be decoded in the sequence's own batch to give its logits)."""
    if not sequences:
        return 0
    shortest = min(len(sequence) for sequence in sequences)
    first = sequences[0]
    length = 0
    while length < shortest - 1 and all(sequence[length] == first[length] for sequence in sequences):
        length += 1
    return length


def same_prompts_together(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Order request indices so that requests with the same prompt are adjacent, each group where
    its first request was, keeping the order within a group."""
    first_seen: dict[tuple[int, ...], int] = {}
    for index, prompt in enumerate(prompts):
        first_seen.setdefault(tuple(prompt), index)
    return sorted(range(len(prompts)), key=lambda index: first_seen[tuple(prompts[index])])


def plan_feed(pending: Sequence[int], capacity: int) -> list[int]:
    """Return how many pending tokens each sequence decodes in the next batch.

    Sequences that wait for one token (generating) go first so decoding never stalls; prompt
    tokens then fill the remaining capacity in sequence order. A prompt may be split over
    several batches.
    """
    if capacity < 1:
        raise ValueError(f"batch capacity must be at least 1, got {capacity}")
    take = [0] * len(pending)
    left = capacity
    for i, count in enumerate(pending):
        if count == 1 and left > 0:
            take[i], left = 1, left - 1
    for i, count in enumerate(pending):
        if count > 1 and left > 0:
            take[i] = min(count, left)
            left -= take[i]
    return take


def context_size(tokens: int) -> int:
    return int(math.ceil(max(tokens, 1) / CONTEXT_PAD) * CONTEXT_PAD)


def max_new_tokens(prompt_length: int, max_tokens: int, n_ctx: int) -> int:
    """create_completion's bound: max_tokens, cut so prompt and answer fit in n_ctx."""
    if prompt_length >= n_ctx:
        raise ValueError(
            f"the prompt has {prompt_length} tokens but the context window n_ctx is {n_ctx}; "
            "raise prompting.n_ctx in the spec or shorten the template"
        )
    return max_tokens if max_tokens + prompt_length < n_ctx else n_ctx - prompt_length


def log_softmax_at(logits: np.ndarray, tokens: Sequence[int]) -> list[float]:
    """log p(token) under the softmax of one logits row, in float64."""
    row = logits.astype(np.float64)
    peak = row.max()
    normalizer = peak + math.log(np.exp(row - peak).sum())
    return [float(row[token] - normalizer) for token in tokens]


def plan_rounds(choice_counts: Sequence[int], tokens: Sequence[int], seq_budget: int, token_budget: int) -> list[tuple[int, int]]:
    """Split examples into scoring rounds [first, end) that fit the sequence ids and the KV budget.

    Every round holds at least one example, so an example larger than a budget gets a round alone.
    """
    rounds = []
    first = 0
    while first < len(choice_counts):
        end, seqs, used = first, 0, 0
        while end < len(choice_counts):
            fits = seqs + choice_counts[end] <= seq_budget and used + tokens[end] <= token_budget
            if end > first and not fits:
                break
            seqs += choice_counts[end]
            used += tokens[end]
            end += 1
        rounds.append((first, end))
        first = end
    return rounds


class TokenBatch:
    """A llama_batch filled token by token: position, sequence ids and whether to output logits."""

    def __init__(self, capacity: int, max_seq_per_token: int):
        import llama_cpp

        self._lib = llama_cpp
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, max_seq_per_token)
        self.max_seq_per_token = max_seq_per_token
        self.batch.n_tokens = 0

    @property
    def size(self) -> int:
        return int(self.batch.n_tokens)

    def clear(self) -> None:
        self.batch.n_tokens = 0

    def add(self, token: int, pos: int, seq_ids: Sequence[int], logits: bool) -> int:
        if self.size >= self.capacity:
            raise IndexError(f"the batch is full: it has room for {self.capacity} tokens")
        if len(seq_ids) > self.max_seq_per_token:
            raise IndexError(f"a token can belong to at most {self.max_seq_per_token} sequences")
        i = self.size
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = len(seq_ids)
        for k, seq_id in enumerate(seq_ids):
            batch.seq_id[i][k] = seq_id
        batch.logits[i] = 1 if logits else 0
        batch.n_tokens = i + 1
        return i

    def free(self) -> None:
        if self.batch is not None:
            self._lib.llama_batch_free(self.batch)
            self.batch = None


class _SequenceSampler:
    """One sequence's sampler: its grammar state and the create_chat_completion chain
    (top-k, typical, top-p, min-p, temperature, seeded dist; greedy at temperature 0)."""

    def __init__(self, engine: "BatchedLlama", grammar: str | None, temperature: float, seed: int):
        import llama_cpp

        self._lib = llama_cpp
        self._engine = engine
        self.grammar = None
        if grammar:
            self.grammar = llama_cpp.llama_sampler_init_grammar(engine.vocab, grammar.encode("utf-8"), b"root")
            if not self.grammar:
                raise ValueError("llama.cpp could not parse the answer grammar; check prompting.answer_grammar")
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda sampler: llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
        if temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
            self.keep = 1
        else:
            add(llama_cpp.llama_sampler_init_top_k(TOP_K))
            add(llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1))
            add(llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
            add(llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            add(llama_cpp.llama_sampler_init_temp(temperature))
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
            self.keep = TOP_K
        self.vocabulary_checks = 0

    def _accepted_first_bytes(self) -> np.ndarray:
        """Find the bytes the grammar accepts next by checking one single-byte token per byte."""
        probes = self._engine.byte_tokens
        candidates = self._engine.candidates(probes[:, 1], np.zeros(len(probes), dtype=np.single))
        self._lib.llama_sampler_apply(self.grammar, ctypes.byref(candidates.array))
        return probes[np.isfinite(candidates.data["logit"][: len(probes)]), 0]

    def sample(self, logits: np.ndarray) -> int:
        engine = self._engine
        shortlist = min(GRAMMAR_SHORTLIST, logits.shape[0])
        ids = np.argpartition(-logits, shortlist - 1)[:shortlist]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        candidates = engine.candidates(ids, logits[ids])
        if self.grammar is not None:
            self._lib.llama_sampler_apply(self.grammar, ctypes.byref(candidates.array))
            valid = int(np.isfinite(candidates.data["logit"][:shortlist]).sum())
            if valid < self.keep and shortlist < logits.shape[0]:
                # The shortlist has fewer valid tokens than top-k keeps. So every token that can be
                # valid is checked, and top-k gets the same valid tokens as from the whole vocabulary.
                self.vocabulary_checks += 1
                ids = engine.tokens_after(self._accepted_first_bytes())
                candidates = engine.candidates(ids, logits[ids])
                self._lib.llama_sampler_apply(self.grammar, ctypes.byref(candidates.array))
        self._lib.llama_sampler_apply(self.chain, ctypes.byref(candidates.array))
        selected = int(candidates.array.selected)
        token = int(candidates.data["id"][selected])
        if self.grammar is not None:
            self._lib.llama_sampler_accept(self.grammar, token)
        self._lib.llama_sampler_accept(self.chain, token)
        return token

    def free(self) -> None:
        if self.grammar is not None:
            self._lib.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.chain is not None:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None


@dataclass(frozen=True)
class _Parked:
    """A decoded prompt kept in its own sequence, with the logits of its last token."""

    seq_id: int
    n_past: int
    logits: np.ndarray


@dataclass
class _Candidates:
    data: np.ndarray
    array: object


@dataclass
class _Active:
    index: int
    seq_id: int
    prompt: tuple[int, ...]
    max_new: int
    stop: tuple[bytes, ...]
    sampler: _SequenceSampler
    pending: list[int]
    n_past: int
    started: float
    completion: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    # Sequences with the same prompt that wait for this one's prompt to be decoded.
    followers: list["_Active"] = field(default_factory=list)


class BatchedLlama:
    """A loaded GGUF model that decodes many chat requests per llama_decode call."""

    def __init__(
        self,
        model_path: Path,
        n_ctx: int,
        n_threads: int | None,
        chat_format: str | None,
        parallel: int = 8,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ):
        import llama_cpp

        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self._lib = llama_cpp
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.parallel = parallel
        self.batch_tokens = batch_tokens
        self.threads = n_threads or os.cpu_count() or 1
        started = time.perf_counter()
        # The Llama object supplies the model, tokenizer, metadata and chat handler; its own small
        # context is not used for decoding.
        self._llama = load_llama(model_path, CONTEXT_PAD, self.threads, chat_format)
        self.vocab = self._llama._model.vocab
        self.n_vocab = int(self._llama.n_vocab())
        self.all_ids = np.arange(self.n_vocab, dtype=np.intc)
        self.renderer = ChatRenderer(self._llama)
        self._buffers: dict[int, _Candidates] = {}
        self._pieces: dict[int, bytes] = {}
        # prompt_tokens counts the prompt tokens decoded after the shared prefix. shared_prompts counts
        # the requests that took a copy of a decoded prompt instead of decoding it.
        self.stats = {"decode_calls": 0, "decoded_tokens": 0, "prefix_tokens": 0, "prompt_tokens": 0,
                      "vocabulary_checks": 0, "shared_prompts": 0}
        self._index_vocabulary()
        logger.info("loaded %s in %.1f s for batched decoding with %d threads", model_path.name,
                    time.perf_counter() - started, self.threads)

    # -- helpers -----------------------------------------------------------------------------

    def _index_vocabulary(self) -> None:
        """Group tokens by the first byte of the text the grammar matches (special tokens spelled
        out), and find a single-byte token for each byte.

        A token the grammar accepts starts with a byte the grammar accepts, and then the
        single-byte token for that byte is accepted too. So after checking the single-byte tokens,
        only the tokens starting with an accepted byte, the tokens whose first byte has no
        single-byte token, and the end-of-generation tokens can be valid; all others are not.
        Tokens with empty text are never valid.
        """
        buffer = ctypes.create_string_buffer(256)
        first_bytes = np.full(self.n_vocab, -1, dtype=np.int32)
        byte_token: dict[int, int] = {}
        eog = []
        for token in range(self.n_vocab):
            if self._is_eog(token):
                eog.append(token)
                continue
            n = self._lib.llama_token_to_piece(self.vocab, token, buffer, 256, 0, True)
            if n <= 0 or buffer.raw[0] == 0:
                continue
            first = buffer.raw[0]
            first_bytes[token] = first
            if n == 1 and first not in byte_token:
                byte_token[first] = token
        self.byte_tokens = np.array(sorted(byte_token.items()), dtype=np.intc).reshape(-1, 2)
        order = np.argsort(first_bytes, kind="stable")
        counts = np.bincount(first_bytes[first_bytes >= 0], minlength=256)
        starts = np.concatenate([[0], np.cumsum(counts)]) + int((first_bytes < 0).sum())
        self._by_first_byte = [order[starts[b] : starts[b + 1]].astype(np.intc) for b in range(256)]
        unprobed = [self._by_first_byte[b] for b in range(256) if b not in byte_token]
        self._always_checked = np.concatenate([np.array(eog, dtype=np.intc), *unprobed]).astype(np.intc)

    def tokens_after(self, accepted_bytes: np.ndarray) -> np.ndarray:
        """Return every token that can be valid when the grammar accepts these first bytes."""
        return np.concatenate([self._always_checked, *(self._by_first_byte[int(b)] for b in accepted_bytes)])

    def candidates(self, ids: np.ndarray, logits: np.ndarray) -> _Candidates:
        """Fill a llama_token_data_array with ids and their logits, in a buffer reused per array size."""
        size = len(ids)
        buffer = self._buffers.get(size)
        if buffer is None:
            data = np.zeros(size, dtype=_TOKEN_DATA)
            array = self._lib.llama_token_data_array(
                data=data.ctypes.data_as(self._lib.llama_token_data_p), size=size, selected=-1, sorted=False
            )
            buffer = self._buffers[size] = _Candidates(data, array)
        buffer.data["id"] = ids
        buffer.data["logit"] = logits
        buffer.data["p"] = 0.0
        buffer.array.size = size
        buffer.array.selected = -1
        buffer.array.sorted = False
        return buffer

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
            cached = self._pieces[token] = buffer.raw[: max(n, 0)]
        return cached

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def _open_context(self, n_ctx: int, n_seq_max: int):
        from llama_cpp import _internals

        params = self._lib.llama_context_default_params()
        params.n_ctx = context_size(n_ctx)
        # llama.cpp reserves at least one output per sequence, within one batch.
        params.n_batch = max(self.batch_tokens, n_seq_max)
        params.n_ubatch = params.n_batch
        params.n_seq_max = n_seq_max
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        # One cell pool for all sequences: copying the shared prefix only relabels cells.
        params.kv_unified = True
        params.no_perf = True
        # Off, as Llama has it by default: one sequence alone then decodes exactly as
        # create_chat_completion. The CPU flash-attention kernel would skip the masked cells of other
        # sequences, but it moved label scores of SmolLM2 by about 0.3 nats.
        params.flash_attn_type = self._lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        return _internals.LlamaContext(model=self._llama._model, params=params, verbose=False)

    def _decode(self, context, batch: TokenBatch) -> None:
        code = self._lib.llama_decode(context.ctx, batch.batch)
        self.stats["decode_calls"] += 1
        self.stats["decoded_tokens"] += batch.size
        if code != 0:
            raise BatchDecodeError(
                f"llama_decode returned {code} for a batch of {batch.size} tokens; "
                "1 means the KV cache is full: lower the model's backend.parallel or prompting.max_rationale_chars"
            )

    def _decode_prefix(self, context, batch: TokenBatch, tokens: Sequence[int], seq_ids: Sequence[int]) -> None:
        for start in range(0, len(tokens), batch.capacity):
            batch.clear()
            for offset, token in enumerate(tokens[start : start + batch.capacity]):
                batch.add(token, start + offset, seq_ids, False)
            self._decode(context, batch)
        self.stats["prefix_tokens"] += len(tokens)

    def _logits(self, context, index: int) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(context.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # -- generation --------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], temperature: float, max_tokens: int
    ) -> Iterator[tuple[int, Generation]]:
        """Generate an answer to every request, yielding (request index, generation) as each sequence finishes."""
        if not requests:
            return
        rendered = [self.renderer.render(request.messages) for request in requests]
        limits = [max_new_tokens(len(r.tokens), max_tokens, self.n_ctx) for r in rendered]
        prefix = shared_prefix_length([r.tokens for r in rendered])
        slots = min(self.parallel, len(requests))
        per_sequence = max(len(r.tokens) - prefix + limit for r, limit in zip(rendered, limits))
        # Requests not started yet, by prompt: a decoded prompt is parked while some of them remain.
        remaining = Counter(r.tokens for r in rendered)
        spare = min(slots, self._lib.llama_max_parallel_sequences() - slots - 1) if max(remaining.values()) > 1 else 0
        park_ids = list(range(slots + max(spare, 0), slots, -1))
        longest_prompt = max(len(r.tokens) for r in rendered) - prefix
        context = self._open_context(prefix + slots * per_sequence + len(park_ids) * longest_prompt,
                                     slots + 1 + len(park_ids))
        batch = TokenBatch(self.batch_tokens, 1)
        active: dict[int, _Active] = {}
        free = list(range(slots, 0, -1))
        queue = deque(same_prompts_together([r.tokens for r in rendered]))
        # Leaders whose prompt is not decoded yet, by prompt; a request with the same prompt follows one.
        leaders: dict[tuple[int, ...], _Active] = {}
        parks: dict[tuple[int, ...], _Parked] = {}
        try:
            if prefix:
                self._decode_prefix(context, batch, rendered[0].tokens[:prefix], [PREFIX_SEQ])

            while queue or active:
                # A finished sequence's slot takes the next example at once.
                while free and queue:
                    index = queue.popleft()
                    seq_id = free.pop()
                    prompt = rendered[index].tokens
                    remaining[prompt] -= 1
                    sampler = _SequenceSampler(self, requests[index].grammar, temperature, requests[index].seed)
                    if prompt in parks:
                        parked = parks[prompt]
                        sequence = self._unpark(context, index, seq_id, rendered[index], limits[index], sampler, parked)
                        if remaining[prompt] == 0:
                            del parks[prompt]
                            self._lib.llama_memory_seq_rm(context.memory, parked.seq_id, -1, -1)
                            park_ids.append(parked.seq_id)
                        active[seq_id] = sequence
                        finished = self._step(context, sequence, parked.logits, active, free)
                        if finished is not None:
                            yield finished
                    elif prompt in leaders:
                        active[seq_id] = self._follow(context, index, seq_id, rendered[index], limits[index], sampler,
                                                      leaders[prompt])
                    else:
                        leaders[prompt] = active[seq_id] = self._start_sequence(
                            context, index, seq_id, rendered[index], prefix, limits[index], sampler)
                if not active:
                    # Every request started from a parked prompt ended at its first token.
                    continue

                outputs = self._fill_batch(batch, list(active.values()))
                self._decode(context, batch)

                for leader, position in outputs:
                    logits = self._logits(context, position)
                    group = [leader]
                    if leaders.get(leader.prompt) is leader:
                        del leaders[leader.prompt]
                        group += self._fork(context, leader)
                        if remaining[leader.prompt] > 0 and park_ids:
                            parks[leader.prompt] = self._park(context, leader, logits, park_ids.pop())
                    for sequence in group:
                        finished = self._step(context, sequence, logits, active, free)
                        if finished is not None:
                            yield finished
        finally:
            for sequence in active.values():
                sequence.sampler.free()
            batch.free()
            context.close()

    def _step(self, context, sequence: _Active, logits: np.ndarray, active: dict[int, "_Active"],
              free: list[int]) -> tuple[int, Generation] | None:
        """Sample the sequence's next token. When that ends the sequence, free its slot and return
        (request index, generation)."""
        reason = self._advance(sequence, sequence.sampler.sample(logits))
        if reason is None:
            return None
        del active[sequence.seq_id]
        self._lib.llama_memory_seq_rm(context.memory, sequence.seq_id, -1, -1)
        free.append(sequence.seq_id)
        return sequence.index, self._finish(sequence, reason)

    def _park(self, context, leader: _Active, logits: np.ndarray, park_id: int) -> "_Parked":
        """Keep a copy of the leader's decoded prompt and of its last logits for the requests with
        the same prompt that have no slot yet."""
        self._lib.llama_memory_seq_rm(context.memory, park_id, -1, -1)
        self._lib.llama_memory_seq_cp(context.memory, leader.seq_id, park_id, -1, -1)
        return _Parked(seq_id=park_id, n_past=leader.n_past, logits=logits.copy())

    def _unpark(
        self, context, index: int, seq_id: int, rendered: RenderedChat, max_new: int, sampler: "_SequenceSampler",
        parked: "_Parked",
    ) -> _Active:
        """Start seq_id from a parked prompt; its first token is sampled from the parked logits."""
        self._lib.llama_memory_seq_rm(context.memory, seq_id, -1, -1)
        self._lib.llama_memory_seq_cp(context.memory, parked.seq_id, seq_id, -1, -1)
        self.stats["shared_prompts"] += 1
        return _Active(
            index=index, seq_id=seq_id, prompt=rendered.tokens, max_new=max_new, stop=rendered.stop,
            sampler=sampler, pending=[], n_past=parked.n_past, started=time.perf_counter(),
        )

    def _start_sequence(
        self, context, index: int, seq_id: int, rendered: RenderedChat, prefix: int, max_new: int,
        sampler: "_SequenceSampler",
    ) -> _Active:
        """Attach the shared prefix to seq_id and queue the rest of the prompt for decoding."""
        self._lib.llama_memory_seq_rm(context.memory, seq_id, -1, -1)
        if prefix:
            self._lib.llama_memory_seq_cp(context.memory, PREFIX_SEQ, seq_id, -1, -1)
        self.stats["prompt_tokens"] += len(rendered.tokens) - prefix
        return _Active(
            index=index, seq_id=seq_id, prompt=rendered.tokens, max_new=max_new, stop=rendered.stop,
            sampler=sampler, pending=list(rendered.tokens[prefix:]), n_past=prefix, started=time.perf_counter(),
        )

    def _follow(
        self, context, index: int, seq_id: int, rendered: RenderedChat, max_new: int, sampler: "_SequenceSampler",
        leader: _Active,
    ) -> _Active:
        """Make seq_id wait for the leader's prompt, which is the same as its own; nothing is decoded for it."""
        self._lib.llama_memory_seq_rm(context.memory, seq_id, -1, -1)
        follower = _Active(
            index=index, seq_id=seq_id, prompt=rendered.tokens, max_new=max_new, stop=rendered.stop,
            sampler=sampler, pending=[], n_past=0, started=time.perf_counter(),
        )
        leader.followers.append(follower)
        return follower

    def _fork(self, context, leader: _Active) -> list[_Active]:
        """Give each follower a copy of the leader's decoded prompt, before anything is sampled."""
        followers, leader.followers = leader.followers, []
        for follower in followers:
            self._lib.llama_memory_seq_cp(context.memory, leader.seq_id, follower.seq_id, -1, -1)
            follower.n_past = leader.n_past
        self.stats["shared_prompts"] += len(followers)
        return followers

    def _fill_batch(self, batch: TokenBatch, sequences: list[_Active]) -> list[tuple[_Active, int]]:
        """Put the next tokens of each sequence in the batch.

        Returns the sequences that get logits from this batch (the last token of their prompt, or
        their last sampled token), each with the batch row of those logits.
        """
        batch.clear()
        outputs = []
        take = plan_feed([len(sequence.pending) for sequence in sequences], batch.capacity)
        for sequence, count in zip(sequences, take):
            if count == 0:
                continue
            completes = count == len(sequence.pending)
            for offset, token in enumerate(sequence.pending[:count]):
                output = completes and offset == count - 1
                row = batch.add(token, sequence.n_past + offset, [sequence.seq_id], output)
                if output:
                    outputs.append((sequence, row))
            sequence.n_past += count
            del sequence.pending[:count]
        return outputs

    def _advance(self, sequence: _Active, token: int) -> str | None:
        """Record a sampled token; return the finish reason when the sequence is done."""
        if self._is_eog(token):
            return "stop"
        sequence.completion.append(token)
        if sequence.stop:
            sequence.text += self.piece(token)
            for stop in sequence.stop:
                at = sequence.text.find(stop)
                if at != -1:
                    del sequence.text[at:]
                    return "stop_sequence"
        if len(sequence.completion) >= sequence.max_new:
            return "length"
        sequence.pending = [token]
        return None

    def _finish(self, sequence: _Active, reason: str) -> Generation:
        self.stats["vocabulary_checks"] += sequence.sampler.vocabulary_checks
        sequence.sampler.free()
        if reason == "stop_sequence":
            text, reason = bytes(sequence.text), "stop"
        else:
            text = self._llama._model.detokenize(sequence.completion, special=False)
        return Generation(
            text=text.decode("utf-8", errors="ignore"),
            finish_reason=reason,
            prompt_tokens=len(sequence.prompt),
            completion_tokens=len(sequence.completion),
            latency_s=time.perf_counter() - sequence.started,
        )

    # -- label scoring -----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ChoiceScores]:
        """Compute the summed log p(choice tokens | prompt) of every choice of every request.

        Each prompt is decoded once. Its tokens belong to one sequence per choice, and each
        choice's tokens but the last follow in the same batch, so one decode gives every logit
        the scores need.
        """
        if not requests:
            return []
        rendered = [self.renderer.render(request.messages) for request in requests]
        continuations = []
        for chat, request in zip(rendered, requests):
            if not request.choices:
                raise ValueError("label scoring needs at least one answer choice per example; check the template's answer_choices")
            tokens = [self.renderer.continuation(chat, choice) for choice in request.choices]
            for choice, continuation in zip(request.choices, tokens):
                if not continuation:
                    raise ValueError(f"answer choice {choice!r} has no tokens; drop the template or fix its answer_choices")
            max_new_tokens(len(chat.tokens) + max(len(c) for c in tokens) - 1, 0, self.n_ctx)
            continuations.append(tokens)

        prefix = shared_prefix_length([chat.tokens for chat in rendered])
        max_choices = max(len(request.choices) for request in requests)
        seq_budget = max(max_choices, min(self._lib.llama_max_parallel_sequences() - 1, 64))
        needed = [len(chat.tokens) - prefix + sum(len(c) - 1 for c in tokens)
                  for chat, tokens in zip(rendered, continuations)]
        token_budget = max(self.batch_tokens, max(needed))
        rounds = plan_rounds([len(request.choices) for request in requests], needed, seq_budget, token_budget)

        context = self._open_context(prefix + token_budget + CONTEXT_PAD, seq_budget + 1)
        batch = TokenBatch(self.batch_tokens, max_choices)
        totals = [[0.0] * len(request.choices) for request in requests]
        seconds = [0.0] * len(requests)
        try:
            if prefix:
                self._decode_prefix(context, batch, rendered[0].tokens[:prefix], [PREFIX_SEQ])
            for first, end in rounds:
                started = time.perf_counter()
                entries, used_seqs = self._score_entries(context, rendered, continuations, prefix, first, end)
                self._decode_scored(context, batch, entries, totals)
                for seq_id in range(1, used_seqs + 1):
                    self._lib.llama_memory_seq_rm(context.memory, seq_id, -1, -1)
                share = (time.perf_counter() - started) / (end - first)
                for e in range(first, end):
                    seconds[e] = share
        finally:
            batch.free()
            context.close()
        return [
            ChoiceScores(tuple(totals[e]), tuple(len(c) for c in continuations[e]), len(rendered[e].tokens), seconds[e])
            for e in range(len(requests))
        ]

    def _score_entries(self, context, rendered, continuations, prefix: int, first: int, end: int):
        """Build the tokens of one scoring round, each with its position, sequence ids and the
        (example, choice, target token) triples its logits score.

        Example e gets one sequence per choice. Its prompt tokens belong to all of them, and
        choice c's tokens but the last belong to its own sequence.
        """
        entries = []
        next_seq = 1
        for e in range(first, end):
            seq_ids = list(range(next_seq, next_seq + len(continuations[e])))
            next_seq += len(seq_ids)
            for seq_id in seq_ids:
                self._lib.llama_memory_seq_rm(context.memory, seq_id, -1, -1)
                if prefix:
                    self._lib.llama_memory_seq_cp(context.memory, PREFIX_SEQ, seq_id, -1, -1)

            suffix = rendered[e].tokens[prefix:]
            for offset, token in enumerate(suffix):
                targets = []
                if offset == len(suffix) - 1:
                    # The last prompt token's logits give the first token of every choice.
                    targets = [(e, c, continuation[0]) for c, continuation in enumerate(continuations[e])]
                entries.append((token, prefix + offset, seq_ids, targets))

            for c, continuation in enumerate(continuations[e]):
                for j, token in enumerate(continuation[:-1]):
                    entries.append((token, len(rendered[e].tokens) + j, [seq_ids[c]], [(e, c, continuation[j + 1])]))
        return entries, next_seq - 1

    def _decode_scored(self, context, batch: TokenBatch, entries, totals: list[list[float]]) -> None:
        """Decode the entries batch by batch and add each target token's log-probability to its choice."""
        for chunk in range(0, len(entries), batch.capacity):
            batch.clear()
            rows = []
            for token, pos, seq_ids, targets in entries[chunk : chunk + batch.capacity]:
                row = batch.add(token, pos, seq_ids, bool(targets))
                if targets:
                    rows.append((row, targets))
            self._decode(context, batch)
            for row, targets in rows:
                values = log_softmax_at(self._logits(context, row), [target for _, _, target in targets])
                for (e, c, _), value in zip(targets, values):
                    totals[e][c] += value

    def close(self) -> None:
        self._buffers.clear()
        self._llama.close()
