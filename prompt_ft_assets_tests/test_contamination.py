"""Contamination probe: sentence halves, seeded controls, overlap scores, the paired bootstrap
difference, the table beside prompted F1, the spec section and the stage planning. The slow test
probes real CoLA sentences with the real SmolLM2 GGUF."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from prompt_ft_assets.contamination import (
    REAL,
    SHUFFLED,
    SWAPPED,
    ProbeInputError,
    build_probe_items,
    common_prefix_words,
    derangement,
    exact_match,
    lcs_ratio,
    normalize_words,
    paired_difference,
    separate_equal_targets,
    shuffle_words,
    split_sentence,
    summarize_probe,
)
from prompt_ft_assets.contamination_plots import contamination_figure
from prompt_ft_assets.contamination_tables import contamination_table
from prompt_ft_assets.spec import ContaminationSettings, SpecError, load_spec

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

SENTENCES = [
    "The sailors rode the breeze clear of the rocks.",
    "John left.",
    "Bill ate the peaches and Harry the grapes.",
    "Mary thinks that Sue likes herself.",
    "The more you eat, the fatter you get.",
    "Who did you say left early?",
    "It is raining .",
    "Sarah sang a song to the children.",
    "Fred gave Sue a book yesterday.",
    "The cat which chased the mouse slept.",
]


def _evaluation(labels=None) -> pd.DataFrame:
    labels = labels or [i % 2 for i in range(len(SENTENCES))]
    return pd.DataFrame({"idx": range(100, 100 + len(SENTENCES)), "label": labels, "sentence": SENTENCES})


# -- halving and normalization --------------------------------------------------------------------


def test_split_sentence_odd_length():
    halves = split_sentence("The cat which chased the mouse slept.", 4)
    assert halves.prompt == "The cat which"
    assert halves.continuation == ["chased", "the", "mouse", "slept."]


def test_split_sentence_even_length():
    halves = split_sentence("Fred gave Sue a book yesterday.", 4)
    assert halves.prompt == "Fred gave Sue"
    assert halves.continuation == ["a", "book", "yesterday."]


def test_split_sentence_too_short():
    assert split_sentence("John left.", 4) is None
    assert split_sentence("John left.", 2).prompt == "John"


def test_split_sentence_punctuation_only_half():
    # Whitespace tokens "it", "rains", ".", "!" leave only punctuation in the second half.
    assert split_sentence("It rains . !", 4) is None


def test_normalize_words_strips_case_and_punctuation():
    assert normalize_words("  The Cat, \u201cslept\u201d ... now.") == ["the", "cat", "slept", "now"]


# -- overlap scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generated", "target", "expected"),
    [
        (" a book yesterday. Then he left", "a book yesterday.", True),
        ("A BOOK, yesterday", "a book yesterday.", True),
        (" a book", "a book yesterday.", False),
        (" a novel yesterday.", "a book yesterday.", False),
        ("", "a book yesterday.", False),
        ("anything", ". !", False),
    ],
)
def test_exact_match(generated, target, expected):
    assert exact_match(generated, target) is expected


def test_common_prefix_words():
    assert common_prefix_words(" a book today", "a book yesterday.") == 2
    assert common_prefix_words(" the book", "a book yesterday.") == 0
    assert common_prefix_words(" a book yesterday. More", "a book yesterday.") == 3


def test_lcs_ratio_values():
    assert lcs_ratio(" a book yesterday.", "a book yesterday.") == 1.0
    assert lcs_ratio(" nothing alike here", "a book yesterday.") == 0.0
    # "a" and "yesterday" in order: 2 of 3 target words.
    assert lcs_ratio(" a yesterday novel", "a book yesterday.") == pytest.approx(2 / 3)
    assert lcs_ratio("x", ". !") == 0.0


def test_lcs_ratio_cuts_generation_to_target_length():
    # The target's words appear, but only after the first three generated words.
    assert lcs_ratio(" x y z a book yesterday", "a book yesterday.") == 0.0


# -- controls ---------------------------------------------------------------------------------------


def test_shuffle_words_changes_order_and_keeps_words():
    words = ["a", "book", "yesterday."]
    for seed in range(20):
        shuffled = shuffle_words(words, np.random.default_rng(seed))
        assert shuffled != words
        assert Counter(shuffled) == Counter(words)


def test_shuffle_words_identical_words():
    assert shuffle_words(["no", "no"], np.random.default_rng(0)) == ["no", "no"]


def test_derangement_has_no_fixed_point():
    for seed in range(10):
        partner = derangement(7, np.random.default_rng(seed))
        assert sorted(partner.tolist()) == list(range(7))
        assert all(partner[i] != i for i in range(7))


def test_derangement_needs_two():
    with pytest.raises(ProbeInputError, match="at least 2 sentences"):
        derangement(1, np.random.default_rng(0))


def test_probe_items_drop_short_sentences():
    items = build_probe_items(_evaluation(), "sentence", 100, 0, 4, [SHUFFLED, SWAPPED])
    idx = [item.idx for item in items]
    # "John left." (idx 101) has 2 tokens and "It is raining ." (idx 106) 4 tokens.
    assert 101 not in idx
    assert 106 in idx
    assert len(items) == 9
    assert idx == sorted(idx)


def test_probe_items_stratified_sample():
    labels = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    items = build_probe_items(_evaluation(labels), "sentence", 6, 3, 2, [SWAPPED])
    assert len(items) == 6
    # 3 of 10 sentences are label 0, so 6 draws keep 30% of them, rounded: 2.
    assert Counter(item.label for item in items) == {0: 2, 1: 4}


def test_probe_items_controls_with_fixed_seed():
    first = build_probe_items(_evaluation(), "sentence", 100, 5, 4, [SHUFFLED, SWAPPED])
    again = build_probe_items(_evaluation(), "sentence", 100, 5, 4, [SHUFFLED, SWAPPED])
    other = build_probe_items(_evaluation(), "sentence", 100, 6, 4, [SHUFFLED, SWAPPED])
    assert [item.targets for item in first] == [item.targets for item in again]
    assert [item.targets for item in first] != [item.targets for item in other]
    for item in first:
        assert Counter(item.targets[SHUFFLED].split()) == Counter(item.targets[REAL].split())
        assert item.targets[SHUFFLED] != item.targets[REAL]
        assert item.sources[SHUFFLED] == item.idx
        assert item.sources[SWAPPED] != item.idx
    real_by_idx = {item.idx: item.targets[REAL] for item in first}
    for item in first:
        assert item.targets[SWAPPED] == real_by_idx[item.sources[SWAPPED]]


def test_probe_items_control_streams_independent():
    both = build_probe_items(_evaluation(), "sentence", 100, 5, 4, [SHUFFLED, SWAPPED])
    only_swapped = build_probe_items(_evaluation(), "sentence", 100, 5, 4, [SWAPPED])
    assert [item.targets[SWAPPED] for item in both] == [item.targets[SWAPPED] for item in only_swapped]
    assert all(SHUFFLED not in item.targets for item in only_swapped)


def test_equal_targets_get_other_partners():
    targets = ["the book", "the book", "a cat", "her dog"]
    # 0 and 1 share their second half, and the cycle 0 -> 1 -> 2 -> 3 -> 0 gives 0 the words of 1.
    partner = separate_equal_targets(np.array([1, 2, 3, 0]), targets)
    assert sorted(partner.tolist()) == [0, 1, 2, 3]
    for i, other in enumerate(partner):
        assert other != i
        assert targets[other] != targets[i]


def test_probe_items_skip_repeated_sentences():
    evaluation = _evaluation()
    evaluation.loc[9, "sentence"] = evaluation.loc[0, "sentence"]
    items = build_probe_items(evaluation, "sentence", 100, 0, 4, [SWAPPED])
    assert [item.idx for item in items].count(100) == 1
    assert 109 not in [item.idx for item in items]


def test_probe_items_too_few_sentences():
    with pytest.raises(ProbeInputError, match="lower contamination.min_words"):
        build_probe_items(_evaluation(), "sentence", 100, 0, 9, [SWAPPED])


# -- paired bootstrap difference and summary ---------------------------------------------------------


def test_paired_difference_constant_gap():
    result = paired_difference([1, 1, 1, 1], [0, 0, 0, 0], seed=0, resamples=500)
    assert result.difference == 1.0
    assert (result.low, result.high) == (1.0, 1.0)
    assert (result.real_mean, result.control_mean, result.n) == (1.0, 0.0, 4)


def test_paired_difference_interval_covers_zero_without_gap():
    real = [1, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    control = [0, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    result = paired_difference(real, control, seed=0, resamples=2000)
    assert result.difference == pytest.approx(0.0)
    assert result.low < 0.0 < result.high


def test_paired_difference_is_seeded():
    real, control = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 0]
    assert paired_difference(real, control, 3, 1000) == paired_difference(real, control, 3, 1000)


def test_paired_difference_needs_pairs():
    with pytest.raises(ValueError, match="must be paired"):
        paired_difference([1, 0], [1], seed=0, resamples=100)


def _probe_rows(real_matches: list[bool], control_matches: list[bool], model: str = "m") -> pd.DataFrame:
    rows = []
    for i, (real, control) in enumerate(zip(real_matches, control_matches)):
        for condition, matched, logprob in ((REAL, real, -2.0), (SWAPPED, control, -4.0)):
            rows.append({"dataset": "d", "model": model, "model_sha256": "ab" * 32, "idx": i, "condition": condition,
                         "exact_match": matched, "lcs_ratio": 1.0 if matched else 0.25, "logprob_per_token": logprob})
    return pd.DataFrame(rows)


def test_summary_flags_clear_reproduction():
    summary = summarize_probe(_probe_rows([True] * 12 + [False] * 8, [False] * 20), seed=0, resamples=1000)
    [row] = summary.to_dict("records")
    assert (row["control"], row["n_examples"]) == (SWAPPED, 20)
    assert row["real_exact_match"] == pytest.approx(0.6)
    assert row["control_exact_match"] == 0.0
    assert row["exact_match_difference_low"] > 0.0
    assert row["logprob_per_token_difference"] == pytest.approx(2.0)
    assert row["flag_reproduced"] is True


def test_summary_no_flag_without_gap():
    matches = [True, False, False, False, False] * 4
    summary = summarize_probe(_probe_rows(matches, matches), seed=0, resamples=1000)
    assert summary["exact_match_difference"].tolist() == [0.0]
    assert summary["flag_reproduced"].tolist() == [False]


# -- table beside prompted F1, and its figure --------------------------------------------------------


def _run_metrics() -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "d", "model": "m", "method": "generate", "shots": 0, "run": 0, "macro_f1": 0.40,
         "flag_one_class": True, "flag_near_chance": False},
        {"dataset": "d", "model": "m", "method": "generate", "shots": 0, "run": 1, "macro_f1": 0.50,
         "flag_one_class": False, "flag_near_chance": False},
        # k-shot runs stay out of the mean.
        {"dataset": "d", "model": "m", "method": "generate", "shots": 4, "run": 0, "macro_f1": 0.90,
         "flag_one_class": True, "flag_near_chance": True},
    ])


def test_table_joins_mean_prompted_f1():
    summary = summarize_probe(
        pd.concat([_probe_rows([True, False] * 5, [False] * 10), _probe_rows([False] * 10, [False] * 10, model="n")]),
        seed=0, resamples=200,
    )
    table = contamination_table(summary, _run_metrics()).set_index("model")
    assert table.loc["m", "prompted_macro_f1"] == pytest.approx(0.45)
    assert table.loc["m", "prompted_runs"] == 2
    assert table.loc["m", "prompted_methods"] == "generate"
    assert table.loc["m", "prompted_flagged_runs"] == 1
    assert np.isnan(table.loc["n", "prompted_macro_f1"])
    assert table.loc["n", "prompted_runs"] == 0


def test_table_without_prompted_runs():
    summary = summarize_probe(_probe_rows([True, False] * 5, [False] * 10), seed=0, resamples=200)
    table = contamination_table(summary, pd.DataFrame())
    assert table["prompted_runs"].tolist() == [0]
    assert table["prompted_flagged_runs"].tolist() == [0]
    assert table["prompted_macro_f1"].isna().all()
    assert contamination_table(pd.DataFrame(), _run_metrics()).empty


def test_figure_drawn_with_and_without_f1(tmp_path):
    summary = summarize_probe(_probe_rows([True] * 8 + [False] * 2, [False] * 10), seed=0, resamples=200)
    with_f1 = contamination_figure(contamination_table(summary, _run_metrics()), "title", tmp_path / "a.png")
    without = contamination_figure(contamination_table(summary, pd.DataFrame()), "title", tmp_path / "b.png")
    empty = contamination_figure(pd.DataFrame(), "title", tmp_path / "c.png")
    for path in (with_f1, without, empty):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- spec section and stage planning ----------------------------------------------------------------


def _write_spec(tmp_path, contamination, models=None) -> str:
    spec = {"name": "c", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [SMOLLM2] if models is None else models}
    if contamination is not None:
        spec["contamination"] = contamination
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_spec_without_contamination(tmp_path):
    assert load_spec(_write_spec(tmp_path, None)).contamination is None


def test_spec_contamination_defaults(tmp_path):
    settings = load_spec(_write_spec(tmp_path, {})).contamination
    assert settings == ContaminationSettings(examples=100, seed=0, max_new_tokens=24, min_words=4,
                                             controls=["shuffled", "swapped"], bootstrap_resamples=2000)


@pytest.mark.parametrize(
    ("contamination", "message"),
    [
        ({"examples": 1}, "examples 1 is too small"),
        ({"max_new_tokens": 0}, "max_new_tokens 0 is out of range"),
        ({"min_words": 1}, "min_words 1 is too small"),
        ({"controls": ["paraphrase"]}, "control 'paraphrase' is unknown"),
        ({"controls": []}, "controls is empty"),
        ({"controls": ["swapped", "swapped"]}, "contain a duplicate"),
        ({"bootstrap_resamples": 10}, "bootstrap_resamples 10 is too small"),
        ({"exampels": 10}, "did you mean 'examples'"),
    ],
)
def test_spec_contamination_rejected(tmp_path, contamination, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write_spec(tmp_path, contamination))


def test_spec_contamination_needs_models(tmp_path):
    with pytest.raises(SpecError, match="no prompt_models to probe"):
        load_spec(_write_spec(tmp_path, {}, models=[]))


def test_spec_contamination_rejects_served_model(tmp_path):
    served = {**SMOLLM2, "source": {"server_url": "http://127.0.0.1:8080/v1", "model_file_sha256": "a" * 64}}
    with pytest.raises(SpecError, match="served over HTTP"):
        load_spec(_write_spec(tmp_path, {}, models=[served]))


def test_contamination_stage_planned_after_data(tmp_path):
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    from prompt_ft_assets.missing_runs import plan_missing_runs
    from prompt_ft_assets.partitions import contamination_dataset_ids, sync_partitions

    spec = load_spec(_write_spec(tmp_path, {"examples": 10}))
    assert contamination_dataset_ids(spec) == ["glue_cola"]
    assert contamination_dataset_ids(load_spec(_write_spec(tmp_path, None))) == []
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    jobs = lambda: {(run.job_name, run.partition_key) for run in plan_missing_runs(instance, spec)}  # noqa: E731
    assert ("contamination_job", "glue_cola") not in jobs()
    instance.report_runless_asset_event(AssetMaterialization(asset_key=AssetKey("prompt_templates"), partition="glue_cola"))
    assert ("contamination_job", "glue_cola") in jobs()
    instance.report_runless_asset_event(AssetMaterialization(asset_key=AssetKey("contamination_probe"), partition="glue_cola"))
    assert ("contamination_job", "glue_cola") not in jobs()


def test_cli_stage_order():
    from prompt_ft_assets.cli import SKIPPED_WHEN_DONE, STAGES

    assert STAGES.index("contamination") == STAGES.index("prompted") + 1
    assert "contamination" in SKIPPED_WHEN_DONE


# -- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_probe_stores_rows_with_real_smollm2(tmp_path, state_dir, cola_dir):
    from dagster import DagsterInstance, materialize

    from prompt_ft_assets.assets.contamination import contamination_probe
    from prompt_ft_assets.assets.data import dataset
    from prompt_ft_assets.partitions import sync_partitions
    from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
    from prompt_ft_assets.store import ResultsStore

    spec_path = _write_spec(tmp_path, {"examples": 6, "seed": 0, "max_new_tokens": 8, "bootstrap_resamples": 200})
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    resources = {"experiment": ExperimentResource(spec_path=str(spec_path)),
                 "results": ResultsStoreResource(root=str(state_dir / "results"))}
    assert materialize([dataset], partition_key="glue_cola", instance=instance, resources=resources).success
    result = materialize([contamination_probe], partition_key="glue_cola", instance=instance, resources=resources)
    assert result.success

    store = ResultsStore(state_dir / "results")
    rows = store.read("contamination_probe", "glue_cola")
    assert len(rows) == 6 * 3
    assert set(rows["condition"]) == {REAL, SHUFFLED, SWAPPED}
    for column in ("model", "idx", "prompt", "target", "generated", "exact_match", "prefix_words", "lcs_ratio",
                   "logprob_sum", "logprob_per_token", "target_tokens", "seed", "max_new_tokens", "model_sha256",
                   "settings_json", "versions_json", "git_commit"):
        assert column in rows
    assert set(rows["model"]) == {"smollm2-135m"}
    assert rows["model_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (rows["seed"] == 0).all()
    assert (rows["logprob_sum"] < 0).all()
    assert (rows["completion_tokens"] <= 8).all()
    # Every condition of a sentence is compared with the same greedy completion.
    assert (rows.groupby("idx")["generated"].nunique() == 1).all()

    examples = store.read("examples", "glue_cola")
    sentences = examples[examples["split"] == "validation"].set_index("idx")["sentence"]
    real = rows[rows["condition"] == REAL]
    for row in real.itertuples():
        assert f"{row.prompt} {row.target}" == " ".join(sentences[row.idx].split())

    summary = store.read("contamination_summary", "glue_cola")
    assert sorted(summary["control"]) == [SHUFFLED, SWAPPED]
    assert (summary["n_examples"] == 6).all()
    # A real continuation is more fluent than a shuffled one, so the model gives it a higher log-probability.
    shuffled = summary.set_index("control").loc[SHUFFLED]
    assert shuffled["real_logprob_per_token"] > shuffled["control_logprob_per_token"]
