"""Odd model outputs: never a crash, stored raw, classified valid or invalid with a reason, and
counted per partition in prompt_run_metrics."""

import json

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, MultiPartitionKey, materialize

from prompt_ft_assets import prompt_runner
from prompt_ft_assets.assets.data import dataset, prompt_templates
from prompt_ft_assets.assets.prompted import evaluation_examples, prompt_predictions, prompt_run_metrics
from prompt_ft_assets.parsing import INVALID_LABEL, parse_answer
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.prompt_backends import plan_backend
from prompt_ft_assets.prompt_runner import CACHE_TABLE, GENERATE
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.templates import load_promptsource_templates, select_templates

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

CHOICES = ["no", "yes"]
DEEP_NESTING = "[" * 5000 + "]" * 5000

# (raw output, finish reason, expected reason, expected class index); "ok" is the only valid reason.
RAW_OUTPUTS = [
    ('{"rationale": "Subject and verb agree.", "label": "yes"}', "stop", "ok", 1),
    ("", "stop", "empty", INVALID_LABEL),
    ('{"rationale": "The verb agr', "length", "truncated_json", INVALID_LABEL),
    ("yes", "stop", "not_json", INVALID_LABEL),
    ('{"rationale": "x", "label": "no", "confidence": 0.9}', "stop", "ok", 0),
    ('{"rationale": "x", "label": "YES"}', "stop", "ok", 1),
    ('{"rationale": "x", "label": "\\"no\\""}', "stop", "ok", 0),
    ('{"rationale": "x", "label": "yes."}', "stop", "ok", 1),
    ('{"rationale": "x", "label": "correct"}', "stop", "label_not_in_choices", INVALID_LABEL),
    ('{"rationale": "half an emoji \\ud83d", "label": "no"}', "stop", "ok", 0),
    (DEEP_NESTING, "length", "not_json", INVALID_LABEL),
    ('["yes"]', "stop", "json_not_object", INVALID_LABEL),
    ('{"rationale": "x", "label": 1}', "stop", "label_not_string", INVALID_LABEL),
    ('{"rationale": "x"}', "stop", "missing_label_key", INVALID_LABEL),
    ('Sure! ```json\n{"rationale": "x", "label": "no"}\n```', "stop", "ok", 0),
]


@pytest.mark.parametrize(
    "raw",
    [
        DEEP_NESTING,
        '{"label": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"rationale": "\\udc00", "label": "\\ud800yes"}',
        "NaN",
        '{"label": NaN}',
        '{"label": 1e999}',
        "}{",
        "\x00",
        '{"label": "yes"}{"label": "no"}',
        '{"label": null}',
        '{"label": {"value": "yes"}}',
        '{"rationale": "' + "x" * 200_000 + '", "label": "no"}',
        "\ufeff{\"label\": \"yes\"}",
    ],
    ids=["deep-array", "deep-label", "lone-surrogates", "nan", "nan-label", "infinite-label", "reversed-braces",
         "nul", "two-objects", "null-label", "object-label", "huge-rationale", "byte-order-mark"],
)
def test_odd_output_parsed_and_storable(tmp_path, robustness_tally, raw):
    robustness_tally.bad_input()

    parsed = parse_answer(raw, CHOICES)

    assert parsed.valid == (parsed.reason == "ok")
    assert (parsed.label_index == INVALID_LABEL) != parsed.valid
    row = {"raw_output": raw, "rationale": parsed.rationale, "label_text": parsed.label_text,
           "prediction": parsed.label_index, "valid": parsed.valid, "invalid_reason": parsed.reason}
    stored = ResultsStore(tmp_path).write("prompt_predictions", "odd", pd.DataFrame([row]))
    assert pd.read_parquet(stored)["raw_output"].iloc[0] == raw


@pytest.mark.parametrize(("raw", "finish", "reason", "index"), RAW_OUTPUTS)
def test_prepared_output_reason(raw, finish, reason, index):
    parsed = parse_answer(raw, CHOICES)

    assert parsed.reason == reason
    assert parsed.label_index == index


def _spec(folder, eval_limit):
    entry = {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": eval_limit, "templates": ["editing"]}
    spec = {"name": "odd-outputs", "datasets": [entry], "prompt_models": [SMOLLM2],
            "prompting": {"runs": 1, "max_rationale_chars": 16}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _prepared_cache_rows(spec, store: ResultsStore) -> pd.DataFrame:
    """One cache row per evaluation example under the product's own cache key, holding a prepared output.

    The keys come from prompt_runner's key function, so no model runs. The row layout is the one
    the generate path writes.
    """
    config = spec.datasets[0]
    model = spec.prompt_models[0]
    template = select_templates(load_promptsource_templates("glue", "cola"), ["editing"])[0]
    examples = evaluation_examples(store.read("examples", "glue_cola"), config.eval_split)
    plan = plan_backend(spec, model)
    pending = prompt_runner._pending_examples(
        spec, config, model, template, examples, plan, GENERATE, spec.prompting.base_seed
    )
    assert len(pending) == len(RAW_OUTPUTS)
    rows = []
    for item, (raw, finish, _, _) in zip(pending, RAW_OUTPUTS):
        rows.append({
            "cache_key": item.key, "model_sha256": plan.model_sha256, "seed": item.seed,
            "temperature": model.temperature, "created_at": pd.Timestamp.now(tz="UTC"), "backend": plan.kind,
            "method": GENERATE, "choice_scores": None, "text": raw, "finish_reason": finish,
            "prompt_tokens": 100, "completion_tokens": len(raw) // 4, "latency_s": 0.0,
        })
    return pd.DataFrame(rows)


def _no_model(*args, **kwargs):
    raise AssertionError("a model was opened: the prepared cache keys do not match the keys prompt_runner computes")


def test_prompted_partition_counts_invalid_answers(tmp_path, state_dir, robustness_tally, monkeypatch):
    """prompt_predictions and prompt_run_metrics built from a prepared cache of odd raw outputs."""
    spec_path = _spec(tmp_path, len(RAW_OUTPUTS))
    spec = load_spec(spec_path)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    results_root = tmp_path / "results"
    resources = {"experiment": ExperimentResource(spec_path=str(spec_path)),
                 "results": ResultsStoreResource(root=str(results_root))}
    store = ResultsStore(results_root)
    partition = MultiPartitionKey({"dataset": "glue_cola", "prompt_run": "smollm2-135m__editing__r0"})
    assert materialize([dataset, prompt_templates], partition_key="glue_cola", instance=instance, resources=resources).success
    cache = _prepared_cache_rows(spec, store)
    store.write(CACHE_TABLE, f"{cache['model_sha256'].iloc[0][:16]}+prepared", cache)
    monkeypatch.setattr(prompt_runner, "open_backend", _no_model)
    robustness_tally.bad_input(len(RAW_OUTPUTS))

    result = materialize([prompt_predictions, prompt_run_metrics], partition_key=str(partition), instance=instance,
                         resources=resources, raise_on_error=False)

    assert result.success, [event.step_failure_data.error.message for event in result.get_step_failure_events()]
    predictions = store.read("prompt_predictions", str(partition)).sort_values("idx").reset_index(drop=True)
    robustness_tally.rows(expected=len(RAW_OUTPUTS), stored=predictions["idx"].nunique())
    assert len(predictions) == len(RAW_OUTPUTS)
    assert predictions["idx"].is_unique
    assert predictions["from_cache"].all()
    assert predictions["raw_output"].tolist() == [raw for raw, _, _, _ in RAW_OUTPUTS]
    expected_reasons = [None if reason == "ok" else reason for _, _, reason, _ in RAW_OUTPUTS]
    assert predictions["invalid_reason"].tolist() == expected_reasons
    assert predictions["prediction"].tolist() == [index for _, _, _, index in RAW_OUTPUTS]
    assert predictions["valid"].tolist() == [reason == "ok" for _, _, reason, _ in RAW_OUTPUTS]
    assert predictions.loc[9, "rationale"] == "half an emoji ?"

    metrics = store.read("prompt_run_metrics", str(partition)).iloc[0]
    n_invalid = sum(reason != "ok" for _, _, reason, _ in RAW_OUTPUTS)
    assert metrics["n_invalid"] == n_invalid
    assert metrics["invalid_rate"] == pytest.approx(n_invalid / len(RAW_OUTPUTS))
    assert metrics["truncated_answers"] == 2
    assert json.loads(metrics["invalid_reasons"]) == {
        "empty": 1, "json_not_object": 1, "label_not_in_choices": 1, "label_not_string": 1,
        "missing_label_key": 1, "not_json": 2, "truncated_json": 1,
    }
    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    assert checks["invalid_rate_below_bound"] is False
    assert checks["predictions_cover_evaluation_sample"] is True
