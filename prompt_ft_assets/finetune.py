"""Finetune an encoder for sequence classification with a plain PyTorch loop.

Batches are padded per batch to their longest example (dynamic padding) and grouped by length,
which on a CPU is several times faster than padding every example to max_length. The same seed
gives the same batches, the same initial classifier head and, on the same machine and thread
count, the same logits.

Any encoder that `AutoModelForSequenceClassification` can build works: BERT, DeBERTa, ModernBERT
(the Ettin encoders), given as a Hugging Face id or a local folder.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .spec import FinetuneSettings

logger = logging.getLogger(__name__)

# Mega-batches of this many batches are sorted by length before they are cut into batches.
LENGTH_GROUP_BATCHES = 50
# Inference batch size; batches are cut from examples sorted by length, so padding stays small.
PREDICT_BATCH_SIZE = 64
# CPU latency is timed with batch size 1 on the first min(this, n) evaluation examples, so that
# the cost per 1,000 classifications is comparable across encoders and with prompted models.
CPU_LATENCY_EXAMPLES = 64
_OFFLINE_VALUES = {"1", "true", "yes", "on"}


class EncoderLoadError(RuntimeError):
    """An encoder whose tokenizer or weights cannot be loaded, with the encoder and the fix."""


@dataclass(frozen=True)
class FinetuneResult:
    predictions: np.ndarray
    logits: np.ndarray
    train_examples: int
    train_steps: int
    train_seconds: float
    train_examples_per_second: float
    infer_seconds_per_example: float
    # Batch size 1 on the CPU over latency_examples evaluation examples; NaN when not measured.
    infer_cpu_seconds_per_example: float
    latency_examples: int
    checkpoint_bytes: int
    params_counted: int
    final_loss: float
    device: str
    torch_threads: int


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of example indices: shuffled, sorted by length inside mega-batches, then batch order shuffled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    group = batch_size * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group].tolist(), key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _load_error(encoder: str, model_name_or_path: str, error: Exception) -> EncoderLoadError:
    if Path(model_name_or_path).exists():
        fix = "check that the folder holds config.json, the weights and the tokenizer files, or save the model there again"
    elif hub_offline():
        fix = (
            "HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache: download it where the hub "
            f"is reachable (`hf download {model_name_or_path}`) and copy the cache here, or set the encoder's "
            "source.path to a local model folder"
        )
    else:
        fix = (
            "the Hugging Face hub is unreachable and the model is not in the local cache: download it where the hub "
            "is reachable, or set the encoder's source.path to a local model folder "
            "(set HF_HUB_OFFLINE=1 to fail at once instead of retrying the download)"
        )
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return EncoderLoadError(f"encoder {encoder!r} ({model_name_or_path}) cannot be loaded: {reason}. Fix: {fix}")


def load_encoder(model_name_or_path: str, n_classes: int, encoder: str | None = None):
    """Load the tokenizer and a sequence-classification model with a new n_classes head.

    A hub id is read from the local cache first, so a cached model loads offline without any
    network request. Raises EncoderLoadError naming the encoder and the fix.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    name = encoder or model_name_or_path
    local_first = [True] if Path(model_name_or_path).exists() or hub_offline() else [True, False]
    last_error: Exception | None = None
    for local_only in local_first:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, local_files_only=local_only)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_name_or_path, num_labels=n_classes, local_files_only=local_only
            )
            return tokenizer, model
        except OSError as error:
            last_error = error
            if local_only and len(local_first) > 1:
                logger.info("encoder %s is not in the local cache; downloading %s", name, model_name_or_path)
        except ValueError as error:
            # transformers raises ValueError for a config whose model type this version cannot build.
            import transformers

            raise EncoderLoadError(
                f"encoder {name!r} ({model_name_or_path}) cannot be built by transformers {transformers.__version__}: "
                f"{str(error).strip().splitlines()[0]}. Fix: upgrade transformers or choose another encoder"
            ) from error
    assert last_error is not None
    raise _load_error(name, model_name_or_path, last_error) from last_error


def _tokenize(tokenizer, texts: list[tuple[str, ...]], max_length: int, input_names: set[str]) -> list[dict[str, list[int]]]:
    if not texts:
        return []
    columns = list(zip(*texts))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    # Drop what the model's forward does not take (ModernBERT has no token_type_ids).
    keys = [key for key in encoded.keys() if key in input_names]
    return [{key: encoded[key][i] for key in keys} for i in range(len(texts))]


def _model_input_names(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def pad_batch(features: list[dict[str, list[int]]], pad_token_id: int, device: str, padding_side: str = "right"):
    """Tensors padded to the longest example of the batch: pad_token_id for input_ids, 0 elsewhere."""
    import torch

    longest = max(len(feature["input_ids"]) for feature in features)
    batch = {}
    for key in features[0]:
        fill = pad_token_id if key == "input_ids" else 0
        values = torch.full((len(features), longest), fill, dtype=torch.long)
        for row, feature in enumerate(features):
            sequence = torch.tensor(feature[key], dtype=torch.long)
            if padding_side == "left":
                values[row, longest - len(sequence) :] = sequence
            else:
                values[row, : len(sequence)] = sequence
        batch[key] = values.to(device)
    return batch


def _pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def predict_logits(model, tokenizer, features: list[dict[str, list[int]]], batch_size: int, device: str) -> np.ndarray:
    """Logits for tokenized examples, batched by length for speed, returned in input order."""
    import torch

    n_labels = model.config.num_labels
    logits = np.empty((len(features), n_labels), dtype=np.float32)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    pad_id = _pad_token_id(tokenizer)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = pad_batch([features[i] for i in index], pad_id, device, tokenizer.padding_side)
            logits[index] = model(**batch).logits.float().cpu().numpy()
    return logits


def predict(model, tokenizer, features: list[dict[str, list[int]]], batch_size: int, device: str) -> np.ndarray:
    """Class indices for tokenized examples, in input order."""
    return predict_logits(model, tokenizer, features, batch_size, device).argmax(axis=1)


def cpu_seconds_per_example(model, tokenizer, features: list[dict[str, list[int]]], n_examples: int) -> float:
    """Mean wall time of one classification on the CPU with batch size 1, over the first n_examples.

    The model is moved to the CPU. One untimed example warms up the kernels first.
    """
    import torch

    chosen = features[:n_examples]
    if not chosen:
        return float("nan")
    model.to("cpu")
    model.eval()
    pad_id = _pad_token_id(tokenizer)
    with torch.inference_mode():
        model(**pad_batch(chosen[:1], pad_id, "cpu"))
        started = time.perf_counter()
        for feature in chosen:
            model(**pad_batch([feature], pad_id, "cpu"))
        elapsed = time.perf_counter() - started
    return elapsed / len(chosen)


def _optimizer(model, settings: FinetuneSettings):
    import torch

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel computes the same AdamW update faster. For MiniLM-L6 on one thread of a
    # 2-core AMD EPYC it took 17 ms per step against 110 ms for the default (foreach) kernel.
    try:
        return torch.optim.AdamW(groups, lr=settings.learning_rate, fused=True)
    except (RuntimeError, TypeError) as error:
        logger.info("fused AdamW is not available here (%s); using the default implementation", error)
        return torch.optim.AdamW(groups, lr=settings.learning_rate)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def save_checkpoint(model, tokenizer, checkpoint_dir: Path) -> int:
    """Save the model and tokenizer through a temporary folder and a rename; return the folder's size in bytes."""
    temporary = checkpoint_dir.with_name(f".{checkpoint_dir.name}.{os.getpid()}.tmp")
    previous = checkpoint_dir.with_name(f".{checkpoint_dir.name}.{os.getpid()}.old")
    # finetuned_encoder holds the partition's lock, so these siblings were left by killed runs.
    for suffix in ("tmp", "old"):
        for leftover in checkpoint_dir.parent.glob(f".{checkpoint_dir.name}.*.{suffix}"):
            shutil.rmtree(leftover, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    # The old folder is moved aside in one rename before it is deleted, so a kill at any moment
    # leaves a whole checkpoint (old or new) at checkpoint_dir, or none between the two renames.
    if checkpoint_dir.exists():
        os.replace(checkpoint_dir, previous)
    os.replace(temporary, checkpoint_dir)
    shutil.rmtree(previous, ignore_errors=True)
    return _folder_bytes(checkpoint_dir)


def _measure_checkpoint_bytes(model, tokenizer) -> int:
    with tempfile.TemporaryDirectory(prefix="checkpoint-size-") as folder:
        return save_checkpoint(model, tokenizer, Path(folder) / "model")


def train_and_predict(
    model_name_or_path: str,
    train_texts: list[tuple[str, ...]],
    train_labels: list[int],
    eval_texts: list[tuple[str, ...]],
    n_classes: int,
    settings: FinetuneSettings,
    seed: int,
    checkpoint_dir: Path | None,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    encoder: str | None = None,
    latency_examples: int = CPU_LATENCY_EXAMPLES,
    measure_checkpoint: bool = True,
    device: str | None = None,
) -> FinetuneResult:
    """Train on the train examples and predict the evaluation examples.

    The checkpoint is saved to checkpoint_dir when given. When measure_checkpoint is set and no
    folder is given, it is saved to a temporary folder only to measure its size. CPU latency is
    timed on the first min(latency_examples, n) evaluation examples; 0 skips it.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    if len(train_texts) != len(train_labels):
        raise ValueError(f"{len(train_texts)} train texts but {len(train_labels)} labels; pass one label per text")
    if not train_texts:
        raise ValueError("no train examples; check train_limit, train_sizes and k_fold in the spec")
    seed_everything(seed)
    device = device or pick_device()
    tokenizer, model = load_encoder(model_name_or_path, n_classes, encoder)
    model.to(device)
    input_names = _model_input_names(model)
    pad_id = _pad_token_id(tokenizer)

    train_features = _tokenize(tokenizer, train_texts, settings.max_length, input_names)
    eval_features = _tokenize(tokenizer, eval_texts, settings.max_length, input_names)
    lengths = [len(feature["input_ids"]) for feature in train_features]
    epochs = math.ceil(settings.num_epochs)
    steps_per_epoch = math.ceil(len(train_features) / settings.batch_size)
    total_steps = max(1, round(settings.num_epochs * steps_per_epoch))
    optimizer = _optimizer(model, settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total_steps), total_steps)
    labels = torch.tensor(train_labels, dtype=torch.long)

    started = time.perf_counter()
    step, seen, loss_value = 0, 0, float("nan")
    model.train()
    for epoch in range(epochs):
        for batch_index in length_grouped_batches(lengths, settings.batch_size, seed + epoch):
            if step >= total_steps:
                break
            batch = pad_batch([train_features[i] for i in batch_index], pad_id, device, tokenizer.padding_side)
            batch["labels"] = labels[batch_index].to(device)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch_index)
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, total_steps, loss_value)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - started

    infer_started = time.perf_counter()
    logits = predict_logits(model, tokenizer, eval_features, PREDICT_BATCH_SIZE, device)
    infer_seconds = time.perf_counter() - infer_started

    checkpoint_bytes = 0
    if checkpoint_dir is not None:
        checkpoint_bytes = save_checkpoint(model, tokenizer, checkpoint_dir)
    elif measure_checkpoint:
        checkpoint_bytes = _measure_checkpoint_bytes(model, tokenizer)
    n_latency = min(latency_examples, len(eval_features))
    cpu_latency = cpu_seconds_per_example(model, tokenizer, eval_features, n_latency) if n_latency > 0 else float("nan")
    return FinetuneResult(
        predictions=logits.argmax(axis=1),
        logits=logits,
        train_examples=seen,
        train_steps=step,
        train_seconds=train_seconds,
        train_examples_per_second=seen / train_seconds if train_seconds > 0 else float("nan"),
        infer_seconds_per_example=infer_seconds / max(1, len(eval_features)),
        infer_cpu_seconds_per_example=cpu_latency,
        latency_examples=n_latency,
        checkpoint_bytes=checkpoint_bytes,
        params_counted=int(sum(parameter.numel() for parameter in model.parameters())),
        final_loss=loss_value,
        device=device,
        torch_threads=torch.get_num_threads(),
    )
