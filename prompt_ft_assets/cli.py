"""Command line: run an experiment's whole asset graph, open the UI, or validate a spec.

    prompt-ft run experiments/quickstart.yaml     materialize every missing partition, stage by stage
    prompt-ft ui                                  open the Dagster UI on 127.0.0.1
    prompt-ft validate experiments/cola_pilot.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .hub_policy import apply_hub_policy
from .paths import EXPERIMENT_VARIABLE, figures_dir, project_root, reports_dir, tables_dir, views_database

logger = logging.getLogger("prompt_ft_assets.cli")
# The console shows Dagster's INFO lines and up, so the progress bar stays readable. The instance
# still stores every event, DEBUG included, for the UI's run logs.
CONSOLE_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# Stages whose materialized partitions are skipped; the others (votes, domain, analysis) read every
# upstream partition, so they run again whenever `prompt-ft run` runs.
SKIPPED_WHEN_DONE = ("data", "statistics", "prompted", "contamination", "calibration", "selection", "finetune")
STAGES = ["data", "statistics", "prompted", "contamination", "calibration", "votes", "selection", "finetune", "domain",
          "analysis"]


@dataclass
class StageOutcome:
    succeeded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _materialized(instance, asset_key: str) -> set[str]:
    from dagster import AssetKey

    return {str(key) for key in instance.get_materialized_partitions(AssetKey(asset_key))}


def run_experiment(spec_path: Path, force: bool = False, stages: list[str] | None = None, instance=None) -> StageOutcome:
    """Materialize the experiment's partitions stage by stage in this process, recording each run
    in the Dagster instance. Partitions already materialized are skipped unless force is set."""
    os.environ[EXPERIMENT_VARIABLE] = str(spec_path.resolve())
    from dagster import DagsterInstance
    from tqdm import tqdm
    from tqdm.contrib import DummyTqdmFile
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .definitions import defs
    from .instance_home import prepare_dagster_home
    from .partitions import (
        calibration_partition_keys,
        contamination_dataset_ids,
        domain_dataset_ids,
        finetune_partition_keys,
        finetune_selection_partition_keys,
        prompted_partition_keys,
        sync_partitions,
    )
    from .spec import load_spec

    spec = load_spec(spec_path)
    if instance is None:
        prepare_dagster_home()
        instance = DagsterInstance.get()
    added = sync_partitions(instance, spec)
    logger.info("partitions registered: %s", {name: len(keys) for name, keys in added.items()})

    datasets = [dataset.id for dataset in spec.datasets]
    plan = [
        ("data", "data_job", "prompt_templates", datasets),
        ("statistics", "statistics_job", "dataset_statistics", datasets),
        ("prompted", "prompted_job", "prompt_run_metrics", prompted_partition_keys(spec)),
        # Every dataset when the spec has a contamination section; the probe reads only the data.
        ("contamination", "contamination_job", "contamination_probe", contamination_dataset_ids(spec)),
        # Each label-scoring partition, unless prompting.calibration is null.
        ("calibration", "calibration_job", "score_calibration", calibration_partition_keys(spec)),
        ("votes", "votes_job", "vote_aggregates", datasets if spec.prompt_models else []),
        # Hyperparameter selection runs only when the spec sets finetune.grid; finetunes read its choice.
        ("selection", "selection_job", "finetune_selection", finetune_selection_partition_keys(spec)),
        ("finetune", "finetune_job", "finetune_metrics", finetune_partition_keys(spec)),
        # Only datasets whose spec names a domain field.
        ("domain", "domain_job", "domain_metrics", domain_dataset_ids(spec)),
        ("analysis", "analysis_job", None, [None]),
    ]
    outcome = StageOutcome()
    total = sum(len(keys) for _, _, _, keys in plan)
    progress = tqdm(total=total, desc="partitions", unit="run", file=sys.stderr, disable=None)
    # Log lines go through tqdm.write so they print above the bar instead of breaking it.
    with logging_redirect_tqdm(), contextlib.redirect_stderr(DummyTqdmFile(sys.stderr)):
        for stage, job_name, last_asset, keys in plan:
            if stages and stage not in stages:
                progress.update(len(keys))
                continue
            done = _materialized(instance, last_asset) if last_asset and not force else set()
            # A stage reruns when anything upstream ran in this invocation, so votes and analysis stay current.
            for key in keys:
                label = f"{stage}:{key}" if key is not None else stage
                progress.set_postfix_str(label[-60:])
                if key is not None and str(key) in done and stage in SKIPPED_WHEN_DONE:
                    outcome.skipped.append(label)
                    progress.update(1)
                    continue
                started = time.perf_counter()
                result = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, partition_key=str(key) if key is not None else None, raise_on_error=False,
                    run_config=CONSOLE_RUN_CONFIG,
                )
                seconds = time.perf_counter() - started
                if result.success:
                    outcome.succeeded.append(label)
                    logger.info("%s finished in %.1f s", label, seconds)
                else:
                    outcome.failed.append(label)
                    logger.error("%s failed after %.1f s (run %s); see the run's logs in the UI", label, seconds, result.run_id)
                progress.update(1)
    progress.close()
    return outcome


def _print_outputs(outcome: StageOutcome) -> None:
    print(f"\nsucceeded {len(outcome.succeeded)}, skipped (already materialized) {len(outcome.skipped)}, failed {len(outcome.failed)}")
    for label in outcome.failed:
        print(f"  failed: {label}")
    print(f"tables:   {tables_dir()}")
    print(f"figures:  {figures_dir()}")
    print(f"reports:  {reports_dir()}")
    print(f"DuckDB:   {views_database()}")


def _open_ui(port: int, host: str) -> int:
    from .instance_home import prepare_dagster_home

    prepare_dagster_home()
    command = [
        sys.executable, "-m", "dagster", "dev", "-h", host, "-p", str(port),
        "-w", str(project_root() / "workspace.yaml"),
    ]
    print(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
    os.chdir(project_root())
    os.execv(sys.executable, command)
    return 0  # not reached




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prompt-ft", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize an experiment's missing partitions and its tables and figures")
    run.add_argument("spec", type=Path, help="experiment spec YAML, for example experiments/quickstart.yaml")
    run.add_argument("--force", action="store_true", help="rerun partitions that are already materialized")
    run.add_argument(
        "--stage", action="append", choices=STAGES,
        help="run only this stage (repeatable); all stages by default",
    )
    ui = commands.add_parser("ui", help="open the Dagster UI")
    ui.add_argument("--port", type=int, default=3000, help="TCP port (default 3000)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    validate = commands.add_parser("validate", help="load and validate a spec, and count its partitions")
    validate.add_argument("spec", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic logs each storage migration check at INFO, several times per Dagster run.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from .spec import SpecError, load_spec

    if args.command == "ui":
        from .paths import default_experiment

        try:
            apply_hub_policy(load_spec(default_experiment()))
        except SpecError as error:
            # The UI shows the spec's error on the code location; hub access is left as configured.
            logger.warning("the spec the UI loads is invalid: %s", error)
        return _open_ui(args.port, args.host)
    try:
        spec = load_spec(args.spec)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    apply_hub_policy(spec)
    if args.command == "validate":
        from .partitions import (
            calibration_partition_keys,
            finetune_partition_keys,
            finetune_selection_partition_keys,
            prompted_partition_keys,
        )

        print(f"{args.spec}: valid; {len(spec.datasets)} dataset(s), {len(prompted_partition_keys(spec))} prompted "
              f"partitions, {len(calibration_partition_keys(spec))} calibration partitions, "
              f"{len(finetune_partition_keys(spec))} finetune partitions, "
              f"{len(finetune_selection_partition_keys(spec))} hyperparameter selection partitions")
        return 0
    outcome = run_experiment(args.spec, force=args.force, stages=args.stage)
    _print_outputs(outcome)
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
