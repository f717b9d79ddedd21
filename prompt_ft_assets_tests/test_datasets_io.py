import numpy as np
import pytest

from prompt_ft_assets.datasets_io import DatasetError, load_dataset_frame, stratified_sample
from prompt_ft_assets.spec import ExperimentSpec


def _spec(folder, **dataset_changes):
    dataset = {
        "id": "toy",
        "source": {"local_dir": str(folder), "file_columns": ["source", "label", "star", "sentence"]},
        "text_fields": ["sentence"],
        "label_names": ["unacceptable", "acceptable"],
        "metadata_fields": ["source"],
        "promptsource": {"dataset": "glue", "subset": "cola"},
        **dataset_changes,
    }
    return ExperimentSpec.model_validate({"name": "t", "datasets": [dataset], "spec_dir": str(folder)})


def test_real_cola_loads(cola_dir):
    spec = _spec(cola_dir, eval_limit=100, eval_seed=0)
    frame = load_dataset_frame(spec, spec.datasets[0])
    train = frame[frame["split"] == "train"]
    validation = frame[frame["split"] == "validation"]
    assert len(train) == 8551
    assert len(validation) == 1043
    assert validation["label"].value_counts().to_dict() == {1: 721, 0: 322}
    assert validation.iloc[0]["sentence"] == "The sailors rode the breeze clear of the rocks."
    assert int(validation["in_sample"].sum()) == 100
    assert validation["source"].iloc[-1] in {"clc95", "c-05", "j_71", "s_97", "swb04", "w_80"}


def test_stratified_sample_keeps_balance_and_seed():
    labels = np.array([0] * 300 + [1] * 700)
    first = stratified_sample(labels, 100, seed=5)
    assert len(first) == 100
    assert (labels[first] == 0).sum() == 30
    assert first.tolist() == stratified_sample(labels, 100, seed=5).tolist()
    assert first.tolist() != stratified_sample(labels, 100, seed=6).tolist()


def _write_split(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())


GOOD_TRAIN = "a\t1\t\tGood sentence.\nb\t0\t*\tBad sentence it.\n"


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ("a\t1\t\tFine.\nb\t7\t*\tWrong label.\n", r"row 2 \(line 2\) has label '7'"),
        ("a\t1\t\tFine.\nb\t0\t*\t   \n", r"row 2 \(line 2\) has empty text"),
        ("a\t1\t\tFine.\nb\t0\tToo few fields\n", "line 2 has 3 fields but 4 are expected"),
        (b"a\t1\t\tFine.\nb\t0\t*\tBad \xff byte.\n", "line 2 is not valid UTF-8"),
        ("", "is empty"),
    ],
)
def test_bad_split_file_rejected(tmp_path, validation, message):
    folder = tmp_path / "toy"
    _write_split(folder, "train.tsv", GOOD_TRAIN)
    _write_split(folder, "validation.tsv", validation)
    spec = _spec(folder)
    with pytest.raises(DatasetError, match=message) as raised:
        load_dataset_frame(spec, spec.datasets[0])
    assert "validation.tsv" in str(raised.value)


def test_missing_column_rejected(tmp_path):
    folder = tmp_path / "toy"
    _write_split(folder, "train.tsv", "sentence\tlabel\nGood.\t1\n")
    _write_split(folder, "validation.tsv", "sentence\tlabel\nGood.\t1\n")
    spec = _spec(folder, source={"local_dir": str(folder)}, metadata_fields=[], text_fields=["text"])
    with pytest.raises(DatasetError, match=r"column\(s\) \['text'\] missing"):
        load_dataset_frame(spec, spec.datasets[0])


def test_duplicate_ids_rejected(tmp_path):
    folder = tmp_path / "toy"
    _write_split(folder, "train.tsv", "index\tsentence\tlabel\n0\tA.\t1\n1\tB.\t0\n")
    _write_split(folder, "validation.tsv", "index\tsentence\tlabel\n0\tA.\t1\n0\tB.\t0\n")
    spec = _spec(folder, source={"local_dir": str(folder)}, metadata_fields=[])
    with pytest.raises(DatasetError, match=r"row 2 \(line 3\) repeats index '0' of row 1 \(line 2\)"):
        load_dataset_frame(spec, spec.datasets[0])


def test_string_labels_map_to_indices(tmp_path):
    folder = tmp_path / "toy"
    rows = "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tnot_entailment\n"
    _write_split(folder, "train.tsv", rows)
    _write_split(folder, "validation.tsv", rows)
    spec = _spec(
        folder, source={"local_dir": str(folder)}, metadata_fields=[], text_fields=["sentence1", "sentence2"],
        label_names=["entailment", "not_entailment"],
    )
    frame = load_dataset_frame(spec, spec.datasets[0])
    assert frame["label"].tolist() == [0, 1, 0, 1]
