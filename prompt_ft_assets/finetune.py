"""Finetune an encoder for sequence classification with a plain PyTorch loop.

Batches are padded per batch to their longest example (dynamic padding) and grouped by length,
which on a CPU is several times faster than padding every example to max_length. The same seed
gives the same batches, the same initial classifier head and the same metrics.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .spec import FinetuneSettings

logger = logging.getLogger(__name__)

# Mega-batches of this many batches are sorted by length before they are cut into batches.
LENGTH_GROUP_BATCHES = 50


@dataclass(frozen=True)
class FinetuneResult:
    predictions: np.ndarray
    train_examples: int
    train_seconds: float
    train_examples_per_second: float
    infer_seconds_per_example: float
    checkpoint_bytes: int
    final_loss: float
    device: str


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


def _tokenize(tokenizer, texts: list[tuple[str, ...]], max_length: int) -> list[dict[str, list[int]]]:
    columns = list(zip(*texts))
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{key: encoded[key][i] for key in keys} for i in range(len(texts))]


def _collate(tokenizer, features: list[dict[str, list[int]]], labels: list[int] | None, device):
    import torch

    batch = tokenizer.pad(features, padding=True, return_tensors="pt")
    batch = {key: value.to(device) for key, value in batch.items()}
    if labels is not None:
        batch["labels"] = torch.tensor(labels, dtype=torch.long, device=device)
    return batch


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict(model, tokenizer, features: list[dict[str, list[int]]], batch_size: int, device: str) -> np.ndarray:
    """Class indices for tokenized examples, batched by length for speed, returned in input order."""
    import torch

    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    predictions = np.empty(len(features), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            logits = model(**_collate(tokenizer, [features[i] for i in index], None, device)).logits
            predictions[index] = logits.argmax(dim=-1).cpu().numpy()
    return predictions


def _optimizer(model, settings: FinetuneSettings):
    import torch

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


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
) -> FinetuneResult:
    """Train on the train examples, save the checkpoint, and predict the evaluation examples."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    seed_everything(seed)
    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, num_labels=n_classes)
    model.to(device)

    train_features = _tokenize(tokenizer, train_texts, settings.max_length)
    eval_features = _tokenize(tokenizer, eval_texts, settings.max_length)
    lengths = [len(feature["input_ids"]) for feature in train_features]
    epochs = math.ceil(settings.num_epochs)
    steps_per_epoch = math.ceil(len(train_features) / settings.batch_size)
    total_steps = max(1, round(settings.num_epochs * steps_per_epoch))
    optimizer = _optimizer(model, settings)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_ratio * total_steps), total_steps)

    started = time.perf_counter()
    step, seen, loss_value = 0, 0, float("nan")
    model.train()
    for epoch in range(epochs):
        for batch_index in length_grouped_batches(lengths, settings.batch_size, seed + epoch):
            if step >= total_steps:
                break
            batch = _collate(tokenizer, [train_features[i] for i in batch_index], [train_labels[i] for i in batch_index], device)
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
    train_seconds = time.perf_counter() - started

    infer_started = time.perf_counter()
    predictions = predict(model, tokenizer, eval_features, max(settings.batch_size, 32), device)
    infer_seconds = time.perf_counter() - infer_started

    checkpoint_bytes = 0
    if checkpoint_dir is not None:
        temporary = checkpoint_dir.with_name(f".{checkpoint_dir.name}.{os.getpid()}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        os.replace(temporary, checkpoint_dir)
        checkpoint_bytes = _folder_bytes(checkpoint_dir)
    return FinetuneResult(
        predictions=predictions,
        train_examples=seen,
        train_seconds=train_seconds,
        train_examples_per_second=seen / train_seconds if train_seconds > 0 else float("nan"),
        infer_seconds_per_example=infer_seconds / max(1, len(eval_features)),
        checkpoint_bytes=checkpoint_bytes,
        final_loss=loss_value,
        device=device,
    )
