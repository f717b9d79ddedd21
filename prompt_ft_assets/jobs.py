"""Asset jobs, one per stage of the study and partitions definition.

A Dagster run covers one partition of assets that share a partitions definition, so the study
runs as stages: data per dataset, prompted runs, votes per dataset, finetunes, then analysis.
"""

from dagster import AssetSelection, define_asset_job

STAGE_ASSETS = {
    "data_job": ["dataset", "prompt_templates"],
    "prompted_job": ["prompt_predictions", "prompt_run_metrics"],
    "votes_job": ["vote_aggregates"],
    "selection_job": ["finetune_selection"],
    "finetune_job": ["finetuned_encoder", "finetune_metrics"],
}

data_job = define_asset_job("data_job", selection=AssetSelection.assets(*STAGE_ASSETS["data_job"]))
prompted_job = define_asset_job("prompted_job", selection=AssetSelection.assets(*STAGE_ASSETS["prompted_job"]))
votes_job = define_asset_job("votes_job", selection=AssetSelection.assets(*STAGE_ASSETS["votes_job"]))
selection_job = define_asset_job("selection_job", selection=AssetSelection.assets(*STAGE_ASSETS["selection_job"]))
finetune_job = define_asset_job("finetune_job", selection=AssetSelection.assets(*STAGE_ASSETS["finetune_job"]))
analysis_job = define_asset_job("analysis_job", selection=AssetSelection.groups("analysis"))

STUDY_JOBS = [data_job, prompted_job, votes_job, selection_job, finetune_job, analysis_job]

