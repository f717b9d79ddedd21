"""The executor every study job uses, chosen by PROMPT_FT_EXECUTOR.

A run's `execution:` config must match its job's executor. The code location therefore has to be
loaded with the executor that a run config under deploy/run_config/ configures. With `k8s`, each
step runs in its own Kubernetes Job (dagster-k8s). With `celery`, Celery workers run the steps
(dagster-celery). When the variable is unset, Dagster's default runs steps in subprocesses of the
run worker.
"""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTOR_VARIABLE = "PROMPT_FT_EXECUTOR"
EXECUTOR_NAMES = ("multiprocess", "in_process", "k8s", "celery")


class ExecutorConfigError(ValueError):
    """PROMPT_FT_EXECUTOR names no executor, or the package of the executor it names is missing."""


def executor_by_name(name: str) -> ExecutorDefinition:
    """Look up one of EXECUTOR_NAMES, importing dagster-k8s or dagster-celery only when it is named."""
    if name == "multiprocess":
        return multiprocess_executor
    if name == "in_process":
        return in_process_executor
    try:
        if name == "k8s":
            from dagster_k8s import k8s_job_executor

            return k8s_job_executor
        if name == "celery":
            from dagster_celery import celery_executor

            return celery_executor
    except ImportError as error:
        raise ExecutorConfigError(
            f"{EXECUTOR_VARIABLE}={name!r} needs dagster-{name}, which is not installed ({error}); "
            "install requirements.txt"
        ) from error
    raise ExecutorConfigError(f"{EXECUTOR_VARIABLE}={name!r} is not an executor; use one of {', '.join(EXECUTOR_NAMES)}")


def executor_from_environment() -> ExecutorDefinition | None:
    """Return the executor PROMPT_FT_EXECUTOR names, or None (Dagster's default) when it is unset or empty."""
    name = os.environ.get(EXECUTOR_VARIABLE, "").strip()
    return executor_by_name(name) if name else None
