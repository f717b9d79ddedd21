from dagster import Definitions

from prompt_ft_assets.definitions import defs

EXPECTED_ASSETS = {
    "dataset",
    "prompt_templates",
    "prompt_predictions",
    "prompt_run_metrics",
    "vote_aggregates",
    "finetuned_encoder",
    "finetune_metrics",
    "dataset_statistics",
    "score_calibration",
    "domain_metrics",
    "contamination_probe",
    "summary_tables",
    "report",
}


def test_definitions_load():
    Definitions.validate_loadable(defs)


def test_every_study_asset_is_defined():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert EXPECTED_ASSETS <= keys
    assert any(key.startswith("figure_") for key in keys)


def test_study_jobs_resolve():
    for name in ("data_job", "statistics_job", "prompted_job", "calibration_job", "votes_job", "finetune_job",
                 "domain_job", "contamination_job", "analysis_job"):
        assert defs.resolve_job_def(name).name == name
