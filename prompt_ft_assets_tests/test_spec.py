from pathlib import Path

import pytest
import yaml

from prompt_ft_assets.spec import SpecError, load_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["quickstart.yaml", "cola_pilot.yaml"])
def test_checked_in_specs_validate(name):
    spec = load_spec(PROJECT_ROOT / "experiments" / name)
    assert spec.datasets[0].id == "glue_cola"


def test_pilot_spec_matches_reference_study():
    spec = load_spec(PROJECT_ROOT / "experiments" / "cola_pilot.yaml")
    assert len(spec.prompt_models) >= 18
    assert spec.prompting.runs == 10
    assert [e.name for e in spec.encoders] == [f"ettin-{size}" for size in ("17m", "32m", "68m", "150m", "400m", "1b")]
    assert len(spec.finetune.seeds) == 10
    assert (spec.finetune.num_epochs, spec.finetune.learning_rate, spec.finetune.batch_size, spec.finetune.weight_decay) == (
        5, 2e-5, 16, 0.01
    )
    moe = {m.name for m in spec.prompt_models if m.is_moe}
    assert moe == {"qwen3-30b-a3b", "gemma-4-26b-a4b-it"}


def _write(tmp_path, data):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base():
    quickstart = yaml.safe_load((PROJECT_ROOT / "experiments" / "quickstart.yaml").read_text())
    return quickstart


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(unknown_key=1), "unknown_key: unknown key"),
        (lambda d: d["prompting"].update(runs=0), "prompting.runs"),
        (lambda d: d["prompting"].update(runs=-3), "prompting.runs"),
        (lambda d: d["prompt_models"][0].update(temperature=3.5), "prompt_models.0.temperature"),
        (lambda d: d["prompt_models"][0].update(name="Bad Name"), "'Bad Name' is invalid"),
        (lambda d: d["prompt_models"][1].update(name=d["prompt_models"][0]["name"]), "appears twice"),
        (lambda d: d["prompt_models"][0]["source"].update(path="x.gguf"), "exactly one of package, path or hf_repo"),
        (lambda d: d["encoders"][0]["source"].update(package="no-such-encoder"), "encoders.0.source.package"),
        (lambda d: d["finetune"].update(k_fold=1), "k_fold 1 is invalid"),
        (lambda d: d["datasets"][0].update(eval_limit=0), "eval_limit"),
    ],
)
def test_invalid_spec_rejected(tmp_path, change, message):
    data = _base()
    change(data)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(_write(tmp_path, data))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_spec_not_a_mapping(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(path)


def test_relative_paths_resolve_against_spec_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPT_FT_DATASETS_DIR", raising=False)
    spec = load_spec(_write(tmp_path, _base()))
    assert spec.resolve_path("data/x") == (tmp_path / "data" / "x").resolve()
    monkeypatch.setenv("PROMPT_FT_DATASETS_DIR", "/somewhere")
    assert spec.resolve_path("${PROMPT_FT_DATASETS_DIR:-fallback}/glue_cola") == Path("/somewhere/glue_cola")
