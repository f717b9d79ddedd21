"""Plain-text completion with the batched llama.cpp engine: no chat template, base-model style.

`CompletionLlama` is a `BatchedLlama` whose renderer tokenizes a prompt as it is, with only the
special tokens the GGUF is configured to add (BOS for gemma). Generation and continuation scoring then run
through the same batched decode loops as prompted runs.
"""

from __future__ import annotations

from pathlib import Path

from .llama_batch import BatchedLlama, RenderedChat

PLAIN_ROLE = "user"


def plain_messages(prompt: str) -> list[dict[str, str]]:
    """Wrap a plain prompt as the single message CompletionLlama expects. No chat template is applied to it."""
    return [{"role": PLAIN_ROLE, "content": prompt}]


class PlainTextRenderer:
    """Tokenizes the one message's text verbatim, in place of a chat handler."""

    def __init__(self, llama):
        self._llama = llama

    def render(self, messages: list[dict[str, str]]) -> RenderedChat:
        if len(messages) != 1:
            raise ValueError(f"plain completion takes exactly one message with the prompt text, got {len(messages)}")
        text = messages[0]["content"].encode("utf-8")
        # add_bos=True adds the special tokens the model is configured to add, which may be none.
        tokens = self._llama.tokenize(text, add_bos=True, special=False)
        return RenderedChat(text=text, tokens=tuple(tokens), stop=(), add_bos=True)

    def continuation(self, rendered: RenderedChat, answer: str) -> list[int]:
        """Return the tokens of answer after the prompt, tokenized together with it so a token merged
        across the boundary is scored as the model reads it."""
        whole = self._llama.tokenize(rendered.text + answer.encode("utf-8"), add_bos=rendered.add_bos, special=False)
        if tuple(whole[: len(rendered.tokens)]) == rendered.tokens and len(whole) > len(rendered.tokens):
            return list(whole[len(rendered.tokens) :])
        return list(self._llama.tokenize(answer.encode("utf-8"), add_bos=False, special=False))


class CompletionLlama(BatchedLlama):
    """A GGUF model that completes plain text prompts and scores plain text continuations."""

    def __init__(self, model_path: Path, n_ctx: int, n_threads: int | None, chat_format: str | None, parallel: int):
        super().__init__(model_path, n_ctx, n_threads, chat_format, parallel=parallel)
        self.renderer = PlainTextRenderer(self._llama)
