"""Asset jobs, one per stage of the study and partitions definition.

A Dagster run covers one partition of assets that share a partitions definition, so the study
runs as stages: data per dataset, prompted runs, votes per dataset, finetunes, then analysis.
"""

from dagster import AssetSelection, define_asset_job

data_job = define_asset_job("data_job", selection=AssetSelection.assets("dataset", "prompt_templates"))
prompted_job = define_asset_job("prompted_job", selection=AssetSelection.assets("prompt_predictions", "prompt_run_metrics"))
votes_job = define_asset_job("votes_job", selection=AssetSelection.assets("vote_aggregates"))
finetune_job = define_asset_job("finetune_job", selection=AssetSelection.assets("finetuned_encoder", "finetune_metrics"))
analysis_job = define_asset_job("analysis_job", selection=AssetSelection.groups("analysis"))

STUDY_JOBS = [data_job, prompted_job, votes_job, finetune_job, analysis_job]
