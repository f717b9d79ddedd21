"""The report's tables, computed from stored rows: the final comparison, paired tests, costs, flags
and run settings.

Every function takes frames read from the results store and returns a new frame. Nothing here
reads files or calls Dagster. Prompted macro F1 means are over runs and encoder means over seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .statistics import Interval, bootstrap_mean_interval, mcnemar_exact, paired_bootstrap_f1_difference
from .summaries import FLAG_COLUMNS
from .voting import majority_vote

# The prompted side of each paired test: the majority vote over every run of the best configuration.
PROMPTED_PAIRING = "majority vote over all runs of the best (model, template); ties go to the smallest label"
ENCODER_PAIRING = "each seed separately"
SECONDS_PER_THOUSAND = 1000.0
CONFIG_KEYS = ["dataset", "method", "model", "template"]


@dataclass(frozen=True)
class StatisticsSettings:
    """Seeds and resample counts of every bootstrap in the report."""

    seed: int = 0
    mean_resamples: int = 10_000
    paired_resamples: int = 2_000


def finetuned_systems(frame: pd.DataFrame) -> pd.Series:
    """Name each finetuned configuration: the encoder, plus its train size when it used a subset.

    Runs of one encoder on different train sizes are different systems, so they never share a
    mean, an interval or a paired test.
    """
    names = frame["encoder"].astype(str)
    if "train_size" not in frame:
        return names
    sizes = pd.to_numeric(frame["train_size"], errors="coerce")
    subset = sizes.notna()
    return names.where(~subset, names + " (" + sizes.where(subset, 0).astype(int).astype(str) + " train examples)")


def _interval_columns(interval: Interval) -> dict[str, float | int]:
    # One run or seed has no spread to resample, so its interval is left undefined (NaN).
    low, high = (interval.low, interval.high) if interval.n > 1 else (np.nan, np.nan)
    return {"runs_or_seeds": interval.n, "macro_f1_mean": interval.estimate, "ci_low": low, "ci_high": high}


def best_prompted_configs(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Pick, per dataset, the (method, model, template) with the highest mean macro F1 over its runs.

    Ties go to the first configuration in sorted order. Choosing on the evaluation split makes
    this an optimistic estimate of prompting, as the summary tables state.
    """
    if run_metrics.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "runs", "macro_f1_mean"])
    means = (
        run_metrics.groupby(CONFIG_KEYS, sort=True)
        .agg(runs=("run", "nunique"), macro_f1_mean=("macro_f1", "mean"))
        .reset_index()
    )
    best_rows = means.groupby("dataset", sort=True)["macro_f1_mean"].idxmax()
    return means.loc[best_rows].reset_index(drop=True)


def final_comparison(
    run_metrics: pd.DataFrame, finetune_metrics: pd.DataFrame, settings: StatisticsSettings
) -> pd.DataFrame:
    """Set the best prompted configuration beside every encoder, per dataset, with bootstrap 95%
    intervals of mean macro F1 over runs (prompted) or seeds (encoders)."""
    rows = []
    for _, best in best_prompted_configs(run_metrics).iterrows():
        runs = run_metrics
        for key in CONFIG_KEYS:
            runs = runs[runs[key] == best[key]]
        interval = bootstrap_mean_interval(runs["macro_f1"], seed=settings.seed, resamples=settings.mean_resamples)
        rows.append(
            {"dataset": best["dataset"], "approach": "prompted (best template)",
             "system": f"{best['model']} / {best['template']}", **_interval_columns(interval),
             "mean_invalid_rate": float(runs["invalid_rate"].mean()), "flagged": int(runs[_flags(runs)].any(axis=1).sum())}
        )
    if not finetune_metrics.empty:
        systems = finetune_metrics.assign(system=finetuned_systems(finetune_metrics))
        for (dataset, system), seeds in systems.groupby(["dataset", "system"], sort=True):
            interval = bootstrap_mean_interval(seeds["macro_f1"], seed=settings.seed, resamples=settings.mean_resamples)
            rows.append(
                {"dataset": dataset, "approach": "finetuned encoder", "system": system, **_interval_columns(interval),
                 "mean_invalid_rate": float(seeds["invalid_rate"].mean()), "flagged": int(seeds[_flags(seeds)].any(axis=1).sum())}
            )
    columns = ["dataset", "approach", "system", "runs_or_seeds", "macro_f1_mean", "ci_low", "ci_high", "mean_invalid_rate", "flagged"]
    return pd.DataFrame(rows, columns=columns).sort_values(["dataset", "approach"], kind="stable").reset_index(drop=True)


def _flags(frame: pd.DataFrame) -> list[str]:
    return [flag for flag in FLAG_COLUMNS if flag in frame.columns]


def voted_predictions(predictions: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Vote per example over the runs of one configuration; return columns idx, label and prediction.

    Only examples answered in every run are voted on, so each vote counts the same runs.
    """
    wide = predictions.pivot(index="idx", columns="run", values="prediction").dropna()
    labels = predictions.drop_duplicates("idx").set_index("idx").loc[wide.index, "label"]
    voted = majority_vote(wide.to_numpy(dtype=np.int64).T, n_classes)
    return pd.DataFrame({"idx": wide.index.to_numpy(), "label": labels.to_numpy(dtype=np.int64), "prediction": voted})


def align_pairs(prompted: pd.DataFrame, encoder: pd.DataFrame) -> pd.DataFrame:
    """Join two prediction frames on idx into columns idx, label, prompted and encoder.

    Raises ValueError when the two disagree on an example's gold label, because then they were
    not evaluated on the same examples.
    """
    merged = prompted.merge(encoder, on="idx", suffixes=("_prompted", "_encoder"))
    mismatched = merged.loc[merged["label_prompted"] != merged["label_encoder"], "idx"].tolist()
    if mismatched:
        raise ValueError(
            f"prompted and finetuned rows disagree on the gold label of examples {mismatched[:10]}; "
            "rematerialize both from the same dataset partition"
        )
    return pd.DataFrame(
        {"idx": merged["idx"], "label": merged["label_prompted"],
         "prompted": merged["prediction_prompted"], "encoder": merged["prediction_encoder"]}
    ).sort_values("idx", kind="stable").reset_index(drop=True)


def paired_tests(
    run_metrics: pd.DataFrame,
    prompt_predictions: pd.DataFrame,
    finetune_predictions: pd.DataFrame,
    n_classes: dict[str, int],
    settings: StatisticsSettings,
) -> pd.DataFrame:
    """Test each encoder seed against the majority vote of the best prompted configuration on the
    same examples: McNemar's exact test and a paired bootstrap of macro F1, encoder minus prompted.

    b counts examples the encoder gets right and the prompted vote gets wrong, c the reverse.
    """
    rows = []
    if finetune_predictions.empty or prompt_predictions.empty:
        return pd.DataFrame()
    for _, best in best_prompted_configs(run_metrics).iterrows():
        chosen = prompt_predictions
        for key in CONFIG_KEYS:
            chosen = chosen[chosen[key] == best[key]]
        classes = n_classes[best["dataset"]]
        prompted = voted_predictions(chosen, classes)
        encoders = finetune_predictions[finetune_predictions["dataset"] == best["dataset"]]
        encoders = encoders.assign(system=finetuned_systems(encoders))
        for (encoder, seed), group in encoders.groupby(["system", "seed"], sort=True):
            pairs = align_pairs(prompted, group[["idx", "label", "prediction"]])
            row = {
                "dataset": best["dataset"], "prompted": f"{best['model']} / {best['template']}",
                "prompted_runs": int(chosen["run"].nunique()), "encoder": encoder, "seed": int(seed), "n": len(pairs),
            }
            if pairs.empty:
                rows.append(row)
                continue
            mcnemar = mcnemar_exact(pairs["label"], pairs["encoder"], pairs["prompted"])
            gap = paired_bootstrap_f1_difference(
                pairs["label"], pairs["encoder"], pairs["prompted"], classes,
                seed=settings.seed, resamples=settings.paired_resamples,
            )
            row.update(
                {"f1_difference": gap.difference, "difference_ci_low": gap.low, "difference_ci_high": gap.high,
                 "bootstrap_p": gap.p_value, "mcnemar_b": mcnemar.b, "mcnemar_c": mcnemar.c, "mcnemar_p": mcnemar.p_value}
            )
            rows.append(row)
    return pd.DataFrame(rows)


def invalid_output_rates(run_metrics: pd.DataFrame, prompt_predictions: pd.DataFrame) -> pd.DataFrame:
    """Summarize, per prompted configuration, the mean and max invalid-output rate over runs and
    the most common reasons an output was invalid."""
    if run_metrics.empty:
        return pd.DataFrame()
    rates = (
        run_metrics.groupby(CONFIG_KEYS, sort=True)
        .agg(runs=("run", "nunique"), invalid_rate_mean=("invalid_rate", "mean"),
             invalid_rate_max=("invalid_rate", "max"), invalid_answers=("n_invalid", "sum"))
        .reset_index()
    )
    reasons: dict[tuple, str] = {}
    if not prompt_predictions.empty and "invalid_reason" in prompt_predictions:
        invalid = prompt_predictions.dropna(subset=["invalid_reason"])
        for keys, group in invalid.groupby(CONFIG_KEYS, sort=True):
            counts = group["invalid_reason"].value_counts().head(3)
            reasons[keys] = "; ".join(f"{reason} ({count})" for reason, count in counts.items())
    rates["top_invalid_reasons"] = [reasons.get(tuple(row), "") for row in rates[CONFIG_KEYS].itertuples(index=False)]
    return rates


PROMPTED_PARTITION_KEYS = ["dataset", "method", "model", "template", "run"]


def busy_seconds(starts, ends) -> float:
    """Return the length of the union of the [start, end] intervals, in seconds.

    Overlapping intervals (outputs generated in one batch) count once, and gaps between them
    (a partition resumed later) count not at all.
    """
    order = np.argsort(np.asarray(starts, dtype=float))
    starts = np.asarray(starts, dtype=float)[order]
    ends = np.asarray(ends, dtype=float)[order]
    total = 0.0
    current_start, current_end = None, None
    for start, end in zip(starts, ends):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return float(total)


def _prompted_seconds(partition: pd.DataFrame) -> tuple[float, str]:
    """Wall seconds one prompted partition spent generating, and how they were measured.

    busy_s, each answer's share of its call's wall time, splits a call that answered several runs
    at once between them; older answers without it fall back to their latency intervals.
    """
    if "busy_s" in partition and partition["busy_s"].notna().all():
        return float(partition["busy_s"].sum()), "busy seconds per answer"
    if "finished_at" in partition and partition["finished_at"].notna().all():
        ends = pd.to_datetime(partition["finished_at"], utc=True).astype("int64").to_numpy() / 1e9
        starts = ends - partition["latency_s"].to_numpy(dtype=float)
        return busy_seconds(starts, ends), "busy wall time"
    return float(partition["latency_s"].sum()), "sum of latencies"


def cost_per_thousand(prompt_predictions: pd.DataFrame, finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """Estimate seconds of compute per 1,000 classifications from stored timings, on the machine
    that ran them.

    Prompted: the wall time during which each partition was generating, from each output's
    finish time (finished_at) and latency, summed over partitions and divided by the outputs.
    A batched backend runs several generations at once, so their latencies overlap and their mean
    would overstate the cost. Without finished_at the latencies are summed, which assumes one
    generation at a time. A cached output keeps the timing of the generation that produced it.
    Finetuned: mean infer_seconds_per_example, with the one-off training time.
    """
    rows = []
    if not prompt_predictions.empty:
        for (dataset, model), group in prompt_predictions.groupby(["dataset", "model"], sort=True):
            measured = [_prompted_seconds(partition) for _, partition in group.groupby(PROMPTED_PARTITION_KEYS)]
            backends = sorted(group["backend"].dropna().astype(str).unique()) if "backend" in group else []
            rows.append(
                {"dataset": dataset, "approach": "prompted", "system": model, "timed_predictions": len(group),
                 "seconds_per_1000": sum(seconds for seconds, _ in measured) / len(group) * SECONDS_PER_THOUSAND,
                 "mean_latency_s": float(group["latency_s"].mean()), "train_seconds_mean": np.nan,
                 "device": ",".join(backends) or "not stored",
                 "basis": ", ".join(sorted({basis for _, basis in measured}))}
            )
    if not finetune_metrics.empty:
        systems = finetune_metrics.assign(system=finetuned_systems(finetune_metrics))
        for (dataset, system), group in systems.groupby(["dataset", "system"], sort=True):
            rows.append(
                {"dataset": dataset, "approach": "finetuned", "system": system, "timed_predictions": int(group["n"].sum()),
                 "seconds_per_1000": float(group["infer_seconds_per_example"].mean()) * SECONDS_PER_THOUSAND,
                 "mean_latency_s": np.nan, "train_seconds_mean": float(group["train_seconds"].mean()),
                 "device": ",".join(sorted(group["device"].astype(str).unique())),
                 "basis": "infer_seconds_per_example"}
            )
    return pd.DataFrame(rows)


def flagged_runs(run_metrics: pd.DataFrame, finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """List every prompted run and finetune seed with a degenerate-run flag set."""
    frames = []
    columns = ["dataset", "approach", "system", "template", "run_or_seed", "macro_f1", "mcc", "mcc_ci_low",
               "mcc_ci_high", "invalid_rate", "flags"]
    if not run_metrics.empty:
        flagged = run_metrics[run_metrics[_flags(run_metrics)].any(axis=1)]
        frames.append(flagged.assign(approach="prompted", system=flagged["model"], run_or_seed=flagged["run"]))
    if not finetune_metrics.empty:
        flagged = finetune_metrics[finetune_metrics[_flags(finetune_metrics)].any(axis=1)]
        frames.append(
            flagged.assign(approach="finetuned", system=finetuned_systems(flagged), template="", run_or_seed=flagged["seed"])
        )
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["dataset", "approach", "system", "template", "run_or_seed"])


def model_settings(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """List each prompt model as stored: size, family, generation, temperature and file hash."""
    if run_metrics.empty:
        return pd.DataFrame()
    columns = ["model", "family", "params_b", "active_params_b", "is_moe", "generation", "temperature", "model_sha256"]
    present = [column for column in columns if column in run_metrics]
    return run_metrics[present].drop_duplicates().sort_values("model").reset_index(drop=True)


def seed_settings(run_metrics: pd.DataFrame, finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """List the sampling seed of each prompted run index and the seeds of each encoder."""
    rows = []
    if not run_metrics.empty:
        for run, group in run_metrics.groupby("run", sort=True):
            seeds = ", ".join(str(seed) for seed in sorted(group["run_seed"].unique()))
            rows.append({"what": f"prompted run {run}", "seeds": seeds})
    if not finetune_metrics.empty:
        systems = finetune_metrics.assign(system=finetuned_systems(finetune_metrics))
        for system, group in systems.groupby("system", sort=True):
            rows.append({"what": f"encoder {system}", "seeds": ", ".join(str(seed) for seed in sorted(group["seed"].unique()))})
    return pd.DataFrame(rows)


def provenance_settings(*frames: pd.DataFrame) -> pd.DataFrame:
    """Count the stored rows per distinct (git_commit, library versions) pair."""
    stacked = [frame[["git_commit", "versions_json"]] for frame in frames if not frame.empty and "git_commit" in frame]
    if not stacked:
        return pd.DataFrame()
    counts = pd.concat(stacked, ignore_index=True).value_counts().reset_index(name="rows")
    counts["versions"] = counts["versions_json"].map(
        lambda text: ", ".join(f"{name} {version}" for name, version in sorted(json.loads(text).items()))
    )
    return counts[["git_commit", "versions", "rows"]]


def finetune_settings(finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """List the distinct finetuning settings per encoder, without the seed, which the seeds table lists."""
    if finetune_metrics.empty:
        return pd.DataFrame()
    rows = []
    for _, row in finetune_metrics.iterrows():
        settings = {key: value for key, value in json.loads(row["settings_json"]).items() if key != "seed"}
        rows.append({"encoder": row["encoder"], "settings": json.dumps(settings, sort_keys=True)})
    return pd.DataFrame(rows).drop_duplicates().reset_index(drop=True)
