"""Data assets: the dataset's examples and its promptsource templates."""


import json

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from ..dataset_quality import MIN_CLASS_SHARE, DatasetQuality, dataset_quality
from ..datasets_io import load_dataset_frame
from ..partitions import DATASET_PARTITIONS
from ..previews import markdown_preview
from ..resources import ExperimentResource, ResultsStoreResource
from ..templates import check_answer_choices, load_promptsource_templates, render, select_templates
from .partition_lock import exclusive_partition

EXAMPLES_TABLE = "examples"
TEMPLATES_TABLE = "prompt_templates"


DATASET_CHECKS = [
    AssetCheckSpec("no_empty_text", asset="dataset", description="No example has empty or whitespace-only text."),
    AssetCheckSpec("labels_declared", asset="dataset", description="Every label is one of the spec's label_names."),
    AssetCheckSpec("label_balance", asset="dataset", description=f"Each class has at least {MIN_CLASS_SHARE:.0%} of each split."),
    AssetCheckSpec("no_conflicting_duplicates", asset="dataset", description="No text appears twice with different labels."),
    AssetCheckSpec("no_split_overlap", asset="dataset", description="No evaluation text also appears in the train split."),
]


def quality_check_results(quality: DatasetQuality) -> list[AssetCheckResult]:
    """Empty text and undeclared labels are errors; imbalance, duplicates and overlap are reported as warnings."""
    return [
        AssetCheckResult(check_name="no_empty_text", passed=quality.empty_texts == 0,
                         metadata={"empty_texts": quality.empty_texts}),
        AssetCheckResult(check_name="labels_declared", passed=quality.undeclared_labels == 0,
                         metadata={"undeclared_labels": quality.undeclared_labels}),
        AssetCheckResult(check_name="label_balance", severity=AssetCheckSeverity.WARN,
                         passed=min(quality.min_class_share.values()) >= MIN_CLASS_SHARE,
                         metadata={"min_class_share": MetadataValue.json(quality.min_class_share)}),
        AssetCheckResult(check_name="no_conflicting_duplicates", severity=AssetCheckSeverity.WARN,
                         passed=sum(quality.conflicting_duplicates.values()) == 0,
                         metadata={"duplicated_texts": MetadataValue.json(quality.duplicated_texts),
                                   "conflicting_duplicates": MetadataValue.json(quality.conflicting_duplicates)}),
        AssetCheckResult(check_name="no_split_overlap", severity=AssetCheckSeverity.WARN,
                         passed=quality.eval_texts_in_train == 0,
                         metadata={"eval_texts_in_train": quality.eval_texts_in_train}),
    ]


def example_fields(row: pd.Series, text_fields: list[str]) -> dict[str, object]:
    """The fields a template sees: the text fields and the label index."""
    fields: dict[str, object] = {field: row[field] for field in text_fields}
    fields["label"] = int(row["label"])
    return fields


@asset(partitions_def=DATASET_PARTITIONS, group_name="data", kinds={"duckdb", "parquet"}, check_specs=DATASET_CHECKS)
@exclusive_partition
def dataset(context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource) -> MaterializeResult:
    """The train and evaluation splits, one row per example: dataset, split, idx, text fields, label.

    `in_sample` marks the stratified evaluation sample (eval_limit) and train sample (train_limit).
    """
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    frame = load_dataset_frame(spec, config)
    path = results.store().write(EXAMPLES_TABLE, context.partition_key, frame)

    counts = frame.groupby(["split", "in_sample"]).size()
    context.log.info("stored %d examples of %s in %s", len(frame), config.id, path)
    evaluation = frame[(frame["split"] == config.eval_split) & frame["in_sample"]]
    balance = evaluation["label_name"].value_counts().to_dict()
    quality = dataset_quality(frame, config)
    return MaterializeResult(
        check_results=quality_check_results(quality),
        metadata={
            "rows": len(frame),
            "train_rows": int((frame["split"] == config.train_split).sum()),
            "eval_rows": int((frame["split"] == config.eval_split).sum()),
            "eval_sample_rows": len(evaluation),
            "train_sample_rows": int(counts.get((config.train_split, True), 0)),
            "eval_label_balance": MetadataValue.json({str(k): int(v) for k, v in balance.items()}),
            "quality": MetadataValue.json(quality.as_dict()),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(evaluation[["split", "idx", *config.text_fields, "label_name"]])),
        }
    )


@asset(partitions_def=DATASET_PARTITIONS, deps=[dataset], group_name="data", kinds={"parquet"})
def prompt_templates(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """The dataset's promptsource templates (id, name, jinja, answer choices), each rendered once.

    Rendering the first evaluation example in the Jinja sandbox checks every template before any
    model runs; a template whose answer choices do not cover the labels is rejected.
    """
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    store = results.store()
    examples = store.read(EXAMPLES_TABLE, context.partition_key)
    first = examples[examples["split"] == config.eval_split].iloc[0]
    templates = select_templates(
        load_promptsource_templates(config.promptsource.dataset, config.promptsource.subset), config.templates
    )
    rows = []
    for template in templates:
        check_answer_choices(template, config.label_names)
        rendered = render(template, example_fields(first, config.text_fields))
        rows.append(
            {
                "dataset": config.id,
                "template_id": template.id,
                "template": template.slug,
                "name": template.name,
                "jinja": template.jinja,
                "answer_choices": json.dumps(rendered.answer_choices),
                "example_prompt": rendered.prompt,
                "example_target": rendered.target,
            }
        )
    frame = pd.DataFrame(rows)
    path = store.write(TEMPLATES_TABLE, context.partition_key, frame)
    context.log.info("stored %d templates of %s", len(frame), config.id)
    return MaterializeResult(
        metadata={
            "templates": len(frame),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["template", "answer_choices", "example_prompt"]])),
        }
    )
