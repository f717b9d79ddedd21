"""Bad dataset files: each is rejected with the file, the row and the fix, and stored rows survive.

The loader cases run load_dataset_frame on real files in every supported format. The asset cases
materialize the `dataset` asset through Dagster on a slice of real CoLA, then corrupt the file and
check that the failed run names the problem and leaves the stored examples file byte-identical.
"""

import json

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, materialize

from prompt_ft_assets import templates as templates_module
from prompt_ft_assets.assets.data import dataset, prompt_templates
from prompt_ft_assets.datasets_io import DatasetError, load_dataset_frame
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import ExperimentSpec, load_spec
from prompt_ft_assets.store import ResultsStore

COLA_COLUMNS = ["source", "label", "original_star", "sentence"]
SLICE_ROWS = 40


def _spec(folder, **changes):
    entry = {
        "id": "toy",
        "source": {"local_dir": str(folder)},
        "text_fields": ["sentence"],
        "label_names": ["unacceptable", "acceptable"],
        "promptsource": {"dataset": "glue", "subset": "cola"},
        **changes,
    }
    return ExperimentSpec.model_validate({"name": "t", "datasets": [entry], "spec_dir": str(folder)})


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _load_error(folder, **changes) -> str:
    spec = _spec(folder, **changes)
    with pytest.raises(DatasetError) as raised:
        load_dataset_frame(spec, spec.datasets[0])
    return str(raised.value)


GOOD_TSV = "sentence\tlabel\nThe cat slept.\t1\nCat the slept.\t0\n"

# (file name, content, expected fragments: the row or line, and the fix)
BAD_FILES = [
    pytest.param("validation.tsv", "sentence\nThe cat slept.\n", [r"column(s) ['label'] missing", "Fix text_fields/label_field"],
                 id="tsv-missing-label-column"),
    pytest.param("validation.tsv", "text\tlabel\nThe cat slept.\t1\n", [r"column(s) ['sentence'] missing"],
                 id="tsv-missing-text-column"),
    pytest.param("validation.tsv", GOOD_TSV + "A dog barked.\tmaybe\n", ["row 3 (line 4) has label 'maybe'", "fix the row or the spec's label_names"],
                 id="tsv-undeclared-label"),
    pytest.param("validation.tsv", GOOD_TSV + "A dog barked.\t2\n", ["row 3 (line 4) has label '2'", "index 0..1"],
                 id="tsv-label-index-out-of-range"),
    pytest.param("validation.tsv", GOOD_TSV + "A dog barked.\t-1\n", ["row 3 (line 4) has label '-1'"],
                 id="tsv-negative-label"),
    pytest.param("validation.tsv", GOOD_TSV + "\t1\n", ["row 3 (line 4) has empty text in field 'sentence'", "remove or fill the row"],
                 id="tsv-empty-text"),
    pytest.param("validation.tsv", GOOD_TSV + "  \t \t1\n", ["line 4 has 3 fields but 2 are expected", "stray tab"],
                 id="tsv-stray-tab"),
    pytest.param("validation.tsv", GOOD_TSV + "   \t1\n", ["row 3 (line 4) has empty text"], id="tsv-whitespace-only-text"),
    pytest.param("validation.tsv", GOOD_TSV + "Only one field\n", ["line 4 has 1 fields but 2 are expected", "set source.file_columns"],
                 id="tsv-too-few-fields"),
    pytest.param("validation.tsv", GOOD_TSV.encode() + b"Caf\xe9 au lait.\t1\n", ["line 4 is not valid UTF-8", "byte 0xe9", "re-encode the file as UTF-8"],
                 id="tsv-latin1-byte"),
    pytest.param("validation.tsv", b"\xff\xfes\x00e\x00n\x00", ["line 1 is not valid UTF-8", "byte 0xff"], id="tsv-utf16"),
    pytest.param("validation.tsv", "id\tsentence\tlabel\n7\tA.\t1\n8\tB.\t0\n7\tC.\t1\n",
                 ["row 3 (line 4) repeats id '7' of row 1 (line 2)", "ids must be unique"], id="tsv-duplicate-id"),
    pytest.param("validation.tsv", "sentence\tsentence\tlabel\nA.\tB.\t1\n", ["repeats a column name"], id="tsv-duplicate-column"),
    pytest.param("validation.tsv", "\n\n", ["is empty"], id="tsv-only-blank-lines"),
    pytest.param("validation.csv", 'sentence,label\n"He said "hi" to me",1\n', ["line 2 cannot be parsed", "quote inside a field must be doubled"],
                 id="csv-stray-quote"),
    pytest.param("validation.csv", 'sentence,label\nFine.,1\n"Never closed,0\nLater.,1\n', ["line 3 cannot be parsed", "unexpected end of data"],
                 id="csv-unclosed-quote"),
    pytest.param("validation.csv", "sentence,label\nOne, two and three,1\n", ["line 2 has 3 fields but 2 are expected", "stray comma or quote"],
                 id="csv-unquoted-comma"),
    pytest.param("validation.jsonl", '{"sentence": "A.", "label": 1}\n{"sentence": "B.", "label": 0\n', ["line 2 is not valid JSON", "one JSON object"],
                 id="jsonl-truncated-line"),
    pytest.param("validation.jsonl", '{"sentence": "A.", "label": 1}\n["B.", 0]\n', ["line 2 is a JSON list, not an object"],
                 id="jsonl-array-line"),
    pytest.param("validation.jsonl", '{"sentence": "A.", "label": 1}\n{"sentence": null, "label": 0}\n', ["row 2 (line 2) has empty text"],
                 id="jsonl-null-text"),
    pytest.param("validation.jsonl", '{"sentence": "A.", "label": 1}\n{"sentence": "B."}\n', ["row 2 (line 2) has no 'label' value", "add the label or remove the row"],
                 id="jsonl-missing-label"),
    pytest.param("validation.parquet", b"PAR1 this is not really parquet", ["is not a readable Parquet file", "write it again"],
                 id="parquet-corrupt"),
]


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_FILES)
def test_bad_split_file_named(tmp_path, robustness_tally, name, content, fragments):
    folder = tmp_path / "toy"
    _write(folder / "train.tsv", GOOD_TSV)
    path = _write(folder / name, content)
    robustness_tally.bad_input()

    message = _load_error(folder)

    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_parquet_null_text_rejected(tmp_path, robustness_tally):
    folder = tmp_path / "toy"
    _write(folder / "train.tsv", GOOD_TSV)
    pd.DataFrame({"sentence": ["A.", None], "label": [1, 0]}).to_parquet(folder / "validation.parquet")
    robustness_tally.bad_input()

    message = _load_error(folder)

    assert "validation.parquet: row 2 has empty text in field 'sentence'" in message


def test_header_row_with_file_columns_rejected(tmp_path, robustness_tally):
    folder = tmp_path / "toy"
    _write(folder / "train.tsv", "sentence\tlabel\nA.\t1\n")
    _write(folder / "validation.tsv", "sentence\tlabel\nA.\t1\n")
    robustness_tally.bad_input()

    message = _load_error(folder, source={"local_dir": str(folder), "file_columns": ["sentence", "label"]})

    assert "train.tsv: line 1 repeats the column names" in message
    assert "remove source.file_columns" in message


def test_byte_order_mark_ignored(tmp_path):
    folder = tmp_path / "toy"
    _write(folder / "train.csv", "\ufeffsentence,label\nA.,1\nB.,0\n")
    _write(folder / "validation.csv", "\ufeffsentence,label\n\"Quoted, with comma\",1\n\"Say \"\"hi\"\"\",0\n")
    spec = _spec(folder)

    frame = load_dataset_frame(spec, spec.datasets[0])

    validation = frame[frame["split"] == "validation"]
    assert validation["sentence"].tolist() == ["Quoted, with comma", 'Say "hi"']
    assert validation["label"].tolist() == [1, 0]


def test_multiline_csv_field_keeps_line_numbers(tmp_path, robustness_tally):
    folder = tmp_path / "toy"
    _write(folder / "train.tsv", GOOD_TSV)
    _write(folder / "validation.csv", 'sentence,label\n"first\nsecond",1\nThird.,7\n')
    robustness_tally.bad_input()

    message = _load_error(folder)

    # The second example starts on line 4 because the first one spans lines 2 and 3.
    assert "row 2 (line 4) has label '7'" in message


# ---- through the Dagster asset, on a slice of real CoLA --------------------------------------


def _cola_slice(cola_dir, folder):
    """The first rows of real CoLA's splits, in the original headerless TSV layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        lines = (cola_dir / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:SLICE_ROWS]
        (folder / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return folder


def _asset_spec(tmp_path, data_folder, templates=None):
    entry = {
        "id": "toy",
        "source": {"local_dir": str(data_folder), "file_columns": COLA_COLUMNS},
        "text_fields": ["sentence"],
        "label_names": ["unacceptable", "acceptable"],
        "metadata_fields": ["source"],
        "promptsource": {"dataset": "glue", "subset": "cola"},
        "templates": templates or ["editing"],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "bad-input", "datasets": [entry]}))
    return path


@pytest.fixture
def cola_slice_store(tmp_path, cola_dir, state_dir):
    """A spec on a real CoLA slice, an ephemeral instance and a results store holding its examples."""
    data_folder = _cola_slice(cola_dir, tmp_path / "cola_slice")
    spec_path = _asset_spec(tmp_path, data_folder)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    resources = {
        "experiment": ExperimentResource(spec_path=str(spec_path)),
        "results": ResultsStoreResource(root=str(tmp_path / "results")),
    }
    first = materialize([dataset], partition_key="toy", instance=instance, resources=resources)
    assert first.success
    return {"data": data_folder, "spec": spec_path, "instance": instance, "resources": resources,
            "store": ResultsStore(tmp_path / "results")}


def failure_messages(result) -> str:
    """The messages of every step failure of a run, with their chained causes."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def _bad_validation_rows(good: str) -> dict[str, tuple[str, list[str]]]:
    """Copies of a good validation file with one bad row each, and the fragments each error must contain."""
    lines = good.splitlines(keepends=True)

    def swap(position: int, line: str) -> str:
        return "".join(lines[:position] + [line] + lines[position + 1 :])

    return {
        "undeclared label": (swap(4, "gj04\tyes\t\tA sentence.\n"), ["row 5 (line 5) has label 'yes'", "fix the row or the spec's label_names"]),
        "whitespace text": (swap(9, "gj04\t1\t\t   \n"), ["row 10 (line 10) has empty text in field 'sentence'", "remove or fill the row"]),
        "missing field": (swap(2, "gj04\t1\tA sentence without its star column.\n"), ["line 3 has 3 fields but 4 are expected", "fix the row"]),
        "extra field": (swap(7, "gj04\t1\t\tA sentence\twith a tab.\n"), ["line 8 has 5 fields but 4 are expected", "stray tab"]),
        "not utf-8": (good[:500] + "\udcff" + good[500:], ["is not valid UTF-8", "re-encode the file as UTF-8"]),
    }


def test_dataset_asset_failure_keeps_stored_examples(cola_slice_store, robustness_tally):
    store = cola_slice_store["store"]
    stored = store.path("examples", "toy")
    before = stored.read_bytes()
    validation = cola_slice_store["data"] / "validation.tsv"
    good = validation.read_text(encoding="utf-8")

    for case, (content, fragments) in _bad_validation_rows(good).items():
        validation.write_bytes(content.encode("utf-8", "surrogateescape"))
        robustness_tally.bad_input()

        result = materialize(
            [dataset], partition_key="toy", instance=cola_slice_store["instance"],
            resources=cola_slice_store["resources"], raise_on_error=False,
        )

        assert not result.success, case
        message = failure_messages(result)
        assert str(validation) in message, case
        for fragment in fragments:
            assert fragment in message, (case, message)
        assert "Traceback" not in message, case
        assert stored.read_bytes() == before, case
        assert not list(stored.parent.glob("*.tmp")), case

    kept = store.read("examples", "toy")
    robustness_tally.rows(expected=2 * SLICE_ROWS, stored=len(kept))
    assert len(kept) == 2 * SLICE_ROWS
    assert kept.groupby("split")["idx"].nunique().to_dict() == {"train": SLICE_ROWS, "validation": SLICE_ROWS}


def test_dataset_asset_rejects_duplicate_ids(cola_slice_store, robustness_tally, tmp_path):
    """A JSON-lines copy of the slice with a repeated id fails, and the TSV-built examples stay."""
    store = cola_slice_store["store"]
    before = store.path("examples", "toy").read_bytes()
    folder = tmp_path / "jsonl_slice"
    folder.mkdir()
    for split in ("train", "validation"):
        frame = pd.read_csv(cola_slice_store["data"] / f"{split}.tsv", sep="\t", header=None, names=COLA_COLUMNS,
                            quoting=3, keep_default_na=False)
        frame.insert(0, "id", range(len(frame)))
        if split == "validation":
            frame.loc[12, "id"] = 3
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps(record) + "\n" for record in frame.to_dict("records")), encoding="utf-8"
        )
    spec = yaml.safe_load(cola_slice_store["spec"].read_text())
    spec["datasets"][0]["source"] = {"local_dir": str(folder)}
    cola_slice_store["spec"].write_text(yaml.safe_dump(spec))
    robustness_tally.bad_input()

    result = materialize(
        [dataset], partition_key="toy", instance=cola_slice_store["instance"],
        resources=cola_slice_store["resources"], raise_on_error=False,
    )

    assert not result.success
    message = failure_messages(result)
    assert "validation.jsonl: row 13 (line 13) repeats id 3 of row 4 (line 4)" in message
    assert "remove the duplicate row or renumber it" in message
    assert store.path("examples", "toy").read_bytes() == before


EVIL_TEMPLATES = """\
dataset: glue
subset: cola
templates:
  aaaa0001: !Template
    answer_choices: no ||| yes
    id: aaaa0001
    jinja: 'Is this fine? {{sentence}} ||| {{ answer_choices[label] }}'
    name: plain
  bbbb0002: !Template
    answer_choices: no ||| yes
    id: bbbb0002
    jinja: '{{ sentence.__class__.__mro__[1].__subclasses__() }} ||| {{ answer_choices[label] }}'
    name: reach for internals
"""


def test_prompt_templates_asset_names_unsafe_template(cola_slice_store, robustness_tally, tmp_path, monkeypatch):
    """A template folder with one template that reaches for Python internals fails by that template's name."""
    template_root = tmp_path / "templates"
    _write(template_root / "glue" / "cola" / "templates.yaml", EVIL_TEMPLATES)
    monkeypatch.setattr(templates_module, "promptsource_templates_dir", lambda: template_root)
    _asset_spec(tmp_path, cola_slice_store["data"], templates=["plain", "reach for internals"])
    robustness_tally.bad_input()

    result = materialize(
        [dataset, prompt_templates], partition_key="toy", instance=cola_slice_store["instance"],
        resources=cola_slice_store["resources"], raise_on_error=False,
    )

    assert not result.success
    assert result.get_failed_step_keys() == {"prompt_templates"}
    message = failure_messages(result)
    assert "template 'reach for internals' (glue/cola) failed to render" in message
    assert "SecurityError" in message
    assert not cola_slice_store["store"].exists("prompt_templates", "toy")
