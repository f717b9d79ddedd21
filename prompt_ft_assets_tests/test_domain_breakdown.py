"""Domain breakdown: the spec's domain block, the labels on real CoLA, per-domain metric rows, the
by_domain table and figure, and the domain_metrics asset on a real store."""

import numpy as np
import pandas as pd
import pytest
import yaml

from prompt_ft_assets.assets.analysis import _draw
from prompt_ft_assets.breakdown_tables import domain_table
from prompt_ft_assets.datasets_io import normalize_split, read_split_file
from prompt_ft_assets.domains import DomainError, domain_labels, domain_metric_rows
from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.spec import DatasetSpec, DomainSpec, SpecError, load_spec

from .study_specs import REGISTRY_ENTRIES

COLA_OUT_OF_DOMAIN = ["clc95", "c-05", "j_71", "s_97", "swb04", "w_80"]
COLA_DOMAIN = {"field": "source", "out_of_domain": COLA_OUT_OF_DOMAIN}


def _write(tmp_path, dataset: dict):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "datasets": [dataset]}))
    return path


def test_domain_block_loads(tmp_path):
    spec = load_spec(_write(tmp_path, {**REGISTRY_ENTRIES["glue_cola"], "domain": COLA_DOMAIN}))
    assert spec.datasets[0].domain == DomainSpec(field="source", out_of_domain=COLA_OUT_OF_DOMAIN)


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ({"field": "genre", "out_of_domain": ["x"]}, "domain.field 'genre' is not in metadata_fields"),
        ({"field": "source", "out_of_domain": []}, "out_of_domain"),
        ({"field": "source", "out_of_domain": ["a", "b"], "in_domain": ["b"]}, r"\['b'\] are listed as both"),
        ({"field": "source", "out_of_domain": ["a"], "outside": ["b"]}, "unknown key"),
    ],
)
def test_invalid_domain_rejected(tmp_path, domain, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, {**REGISTRY_ENTRIES["glue_cola"], "domain": domain}))


def test_checked_in_cola_entry_names_domain():
    from prompt_ft_assets.spec import expand_datasets

    from .conftest import PROJECT_ROOT

    entries = expand_datasets({"dataset_registry": "datasets", "datasets": ["glue_cola"]}, PROJECT_ROOT / "experiments")
    config = DatasetSpec.model_validate(entries[0])
    assert config.domain == DomainSpec(field="source", out_of_domain=COLA_OUT_OF_DOMAIN)


def test_cola_validation_domains(cola_dir):
    config = DatasetSpec.model_validate({**REGISTRY_ENTRIES["glue_cola"], "domain": COLA_DOMAIN})
    path = cola_dir / "validation.tsv"
    validation = normalize_split(read_split_file(path, config.source.file_columns), config, "validation", str(path))
    labels = domain_labels(validation["source"], config.domain)
    # Rows 1-527 are GLUE's in_domain_dev and rows 528-1043 its out_of_domain_dev.
    assert labels.value_counts().to_dict() == {"in_domain": 527, "out_of_domain": 516}
    assert (labels.iloc[:527] == "in_domain").all()
    assert (labels.iloc[527:] == "out_of_domain").all()


def test_unlisted_value_rejected_with_in_domain_list():
    domain = DomainSpec(field="source", out_of_domain=["b"], in_domain=["a"])
    assert domain_labels(pd.Series(["a", "b"]), domain).tolist() == ["in_domain", "out_of_domain"]
    with pytest.raises(DomainError, match=r"\['c'\] are in neither"):
        domain_labels(pd.Series(["a", "b", "c"]), domain)


def _predictions() -> tuple[pd.DataFrame, pd.Series]:
    """Ten examples: right on every in-domain row, one class on the out-of-domain rows."""
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    predictions = labels.copy()
    predictions[5:] = 1
    domains = pd.Series(["in_domain"] * 5 + ["out_of_domain"] * 5, index=range(100, 110))
    return pd.DataFrame({"idx": range(100, 110), "label": labels, "prediction": predictions}), domains


def test_domain_rows_overall_and_per_domain():
    frame, domains = _predictions()
    rows = {row["domain"]: row for row in domain_metric_rows(frame, domains, 2, seed=0)}
    assert list(rows) == ["all", "in_domain", "out_of_domain"]
    overall = classification_metrics(frame["label"], frame["prediction"], 2)
    assert rows["all"]["macro_f1"] == overall.macro_f1
    assert rows["in_domain"]["n"] + rows["out_of_domain"]["n"] == rows["all"]["n"] == 10
    assert rows["in_domain"]["macro_f1"] == 1.0
    assert rows["out_of_domain"]["flag_one_class"]
    assert not rows["in_domain"]["flag_one_class"]


def test_domain_rows_reject_unknown_idx():
    frame, domains = _predictions()
    with pytest.raises(DomainError, match="have no domain"):
        domain_metric_rows(frame.assign(idx=frame["idx"] + 50), domains, 2, seed=0)


def _domain_metric_table() -> pd.DataFrame:
    rows = []
    for method, calibration, model, train_size, base in (
        ("score", "raw", "smollm2", "", 0.4), ("score", "threshold", "smollm2", "", 0.5),
        ("finetune", "raw", "minilm", "all", 0.6), ("finetune", "raw", "minilm", "64", 0.1),
    ):
        for run in (0, 1):
            for domain, shift in (("all", 0.0), ("in_domain", 0.05), ("out_of_domain", -0.05)):
                f1 = base + shift + 0.01 * run
                rows.append({"dataset": "glue_cola", "method": method, "calibration": calibration, "model": model,
                             "template": "t", "shots": 0, "run": run, "train_size": train_size, "domain": domain,
                             "macro_precision": f1, "macro_recall": f1, "macro_f1": f1,
                             "flag_one_class": domain == "out_of_domain", "flag_near_chance": False,
                             "flag_high_invalid": False})
    return pd.DataFrame(rows)


def test_domain_table_groups_systems_and_domains():
    table = domain_table(_domain_metric_table())
    assert len(table) == 3 * 3
    finetune = table[table["method"] == "finetune"].set_index("domain")
    assert finetune.loc["in_domain", "macro_f1_mean"] == pytest.approx(0.655)
    assert finetune["n"].tolist() == [2, 2, 2]
    score_out = table[(table["method"] == "score") & (table["domain"] == "out_of_domain")]
    assert score_out["flagged_runs"].tolist() == [2, 2]


def test_domain_figure_drawn(tmp_path):
    path = _draw("f1_by_domain", domain_table(_domain_metric_table()), tmp_path / "f1_by_domain.png")
    assert path.stat().st_size > 10_000
    empty = _draw("f1_by_domain", pd.DataFrame(), tmp_path / "empty.png")
    assert empty.is_file()


def test_domain_metrics_asset_on_real_store(tmp_path, state_dir, cola_dir):
    from dagster import DagsterInstance, materialize

    from prompt_ft_assets.assets.breakdowns import domain_metrics
    from prompt_ft_assets.assets.data import dataset
    from prompt_ft_assets.partitions import sync_partitions
    from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
    from prompt_ft_assets.store import ResultsStore

    path = _write(tmp_path, {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": 40, "domain": COLA_DOMAIN})
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(path))
    resources = {"experiment": ExperimentResource(spec_path=str(path)),
                 "results": ResultsStoreResource(root=str(state_dir / "results"))}
    assert materialize([dataset], partition_key="glue_cola", instance=instance, resources=resources).success
    store = ResultsStore(state_dir / "results")
    examples = store.read("examples", "glue_cola")
    evaluation = examples[(examples["split"] == "validation") & examples["in_sample"]]
    # Constructed predictions on the real evaluation sample: an always-"acceptable" prompted run
    # and a finetune seed that is right on every row.
    prompted = evaluation[["dataset", "idx", "label"]].assign(
        model="smollm2-135m", template="editing", method="score", run=0, shots=0, prediction=1)
    store.write("prompt_predictions", "glue_cola|smollm2-135m__editing__score", prompted)
    finetuned = evaluation[["dataset", "idx", "label"]].assign(encoder="minilm-l6", seed=3, prediction=evaluation["label"])
    finetuned["train_size"] = pd.array([pd.NA] * len(finetuned), dtype="Int64")
    store.write("finetune_predictions", "glue_cola|minilm-l6__nall__s3", finetuned)

    assert materialize([domain_metrics], partition_key="glue_cola", instance=instance, resources=resources).success
    rows = store.read("domain_metrics", "glue_cola")
    assert len(rows) == 2 * 3
    counts = rows[rows["method"] == "finetune"].set_index("domain")["n"].to_dict()
    assert counts["all"] == 40
    assert counts["in_domain"] + counts["out_of_domain"] == 40
    assert set(rows.loc[rows["method"] == "finetune", "macro_f1"]) == {1.0}
    assert rows.loc[rows["method"] == "score", "flag_one_class"].all()
    assert rows.loc[rows["method"] == "finetune", "run_key"].unique().tolist() == ["minilm-l6__nall__s3"]
