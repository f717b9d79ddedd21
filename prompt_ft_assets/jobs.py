"""Asset jobs, one per stage of the study and partitions definition.

A Dagster run covers one partition of assets that share a partitions definition, so the study
runs as stages: data and its statistics per dataset, prompted runs, the contamination probe per
dataset, calibration of score partitions, votes per dataset, finetunes, the domain breakdown per
dataset, then analysis.
"""

from dagster import AssetSelection, define_asset_job

STAGE_ASSETS = {
    "data_job": ["dataset", "prompt_templates"],
    "prompted_job": ["prompt_predictions", "prompt_run_metrics"],
    "votes_job": ["vote_aggregates"],
    "selection_job": ["finetune_selection"],
    "finetune_job": ["finetuned_encoder", "finetune_metrics"],
    "statistics_job": ["dataset_statistics"],
    "calibration_job": ["score_calibration"],
    "domain_job": ["domain_metrics"],
    "contamination_job": ["contamination_probe"],
}

data_job = define_asset_job("data_job", selection=AssetSelection.assets(*STAGE_ASSETS["data_job"]))
prompted_job = define_asset_job("prompted_job", selection=AssetSelection.assets(*STAGE_ASSETS["prompted_job"]))
votes_job = define_asset_job("votes_job", selection=AssetSelection.assets(*STAGE_ASSETS["votes_job"]))
selection_job = define_asset_job("selection_job", selection=AssetSelection.assets(*STAGE_ASSETS["selection_job"]))
finetune_job = define_asset_job("finetune_job", selection=AssetSelection.assets(*STAGE_ASSETS["finetune_job"]))
statistics_job = define_asset_job("statistics_job", selection=AssetSelection.assets(*STAGE_ASSETS["statistics_job"]))
calibration_job = define_asset_job("calibration_job", selection=AssetSelection.assets(*STAGE_ASSETS["calibration_job"]))
domain_job = define_asset_job("domain_job", selection=AssetSelection.assets(*STAGE_ASSETS["domain_job"]))
contamination_job = define_asset_job(
    "contamination_job", selection=AssetSelection.assets(*STAGE_ASSETS["contamination_job"])
)
analysis_job = define_asset_job("analysis_job", selection=AssetSelection.groups("analysis"))

STUDY_JOBS = [data_job, statistics_job, prompted_job, contamination_job, calibration_job, votes_job, selection_job,
              finetune_job, domain_job, analysis_job]

