"""The checked-in deploy/ files against the config schemas of Dagster and its k8s and Celery libraries."""

import copy
import importlib
import os
import subprocess
import sys

import pytest
import yaml
from dagster import Definitions, validate_run_config
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster_celery.cli import get_validated_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

from prompt_ft_assets.definitions import defs
from prompt_ft_assets.executors import EXECUTOR_NAMES, ExecutorConfigError, executor_by_name, executor_from_environment

from .conftest import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
RUN_CONFIGS = {"k8s": DEPLOY / "run_config" / "k8s_job_executor.yaml", "celery": DEPLOY / "run_config" / "celery_executor.yaml"}
GPU_OPS = ("finetuned_encoder", "finetune_selection")
ENVIRONMENT = {
    "PROMPT_FT_CELERY_BROKER": "pyamqp://guest@broker.example:5672//",
    "PROMPT_FT_CELERY_BACKEND": "redis://redis.example:6379/1",
    "PROMPT_FT_IMAGE": "registry.example/prompt-ft:1",
    "PROMPT_FT_K8S_NAMESPACE": "prompt-ft",
    "DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "secret", "DAGSTER_PG_HOST": "postgres.example",
    "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_PORT": "5432",
}


@pytest.fixture
def deploy_environment(monkeypatch):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def _load(path):
    return yaml.safe_load(path.read_text())


def _study_jobs(executor_name):
    """The project's study jobs, resolved with the named executor as PROMPT_FT_EXECUTOR would load them."""
    definitions = Definitions(assets=defs.assets, jobs=defs.jobs, resources=defs.resources,
                              executor=executor_by_name(executor_name))
    return [definitions.resolve_job_def(job.name) for job in defs.jobs]


@pytest.mark.parametrize("name", EXECUTOR_NAMES)
def test_executor_by_name(name):
    assert executor_by_name(name).name == name


def test_unknown_executor_rejected(monkeypatch):
    monkeypatch.setenv("PROMPT_FT_EXECUTOR", "kubernetes")
    with pytest.raises(ExecutorConfigError) as raised:
        executor_from_environment()
    assert "PROMPT_FT_EXECUTOR='kubernetes' is not an executor" in str(raised.value)
    assert "multiprocess, in_process, k8s, celery" in str(raised.value)


def test_unset_executor_keeps_default(monkeypatch):
    monkeypatch.delenv("PROMPT_FT_EXECUTOR", raising=False)
    assert executor_from_environment() is None


def test_definitions_load_configured_executor():
    # A fresh interpreter, because the definitions read PROMPT_FT_EXECUTOR when the module is imported.
    script = ("from prompt_ft_assets.definitions import defs\n"
              "print(sorted({defs.resolve_job_def(job.name).executor_def.name for job in defs.jobs}))")
    completed = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                               env={**os.environ, "PROMPT_FT_EXECUTOR": "k8s"}, cwd=PROJECT_ROOT, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "['k8s']"


@pytest.mark.parametrize("executor_name", sorted(RUN_CONFIGS))
def test_run_config_valid_for_every_study_job(executor_name, deploy_environment):
    run_config = _load(RUN_CONFIGS[executor_name])
    jobs = _study_jobs(executor_name)

    assert {job.executor_def.name for job in jobs} == {executor_name}
    for job in jobs:
        validate_run_config(job, run_config)


def test_misspelled_executor_field_rejected(deploy_environment):
    run_config = copy.deepcopy(_load(RUN_CONFIGS["k8s"]))
    run_config["execution"]["config"]["per_step_k8s_confg"] = run_config["execution"]["config"].pop("per_step_k8s_config")
    finetune_job = next(job for job in _study_jobs("k8s") if job.name == "finetune_job")

    with pytest.raises(DagsterInvalidConfigError, match="per_step_k8s_confg"):
        validate_run_config(finetune_job, run_config)


def test_k8s_per_step_config_names_study_ops():
    per_step = _load(RUN_CONFIGS["k8s"])["execution"]["config"]["per_step_k8s_config"]
    op_names = {node.name for job in _study_jobs("k8s") for node in job.nodes}

    assert set(per_step) == set(GPU_OPS)
    assert set(per_step) <= op_names


@pytest.mark.parametrize("op_name", GPU_OPS)
def test_finetune_step_pod_gets_gpu_node(op_name):
    """Merge the step's config the way the k8s executor does and build the Kubernetes Job from it."""
    executor_config = _load(RUN_CONFIGS["k8s"])["execution"]["config"]
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config["step_k8s_config"]))
    context = context.merge(
        K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config["per_step_k8s_config"][op_name]))
    )
    job_config = DagsterK8sJobConfig(job_image="registry.example/prompt-ft:1", dagster_home="/opt/dagster/dagster_home",
                                     instance_config_map="prompt-ft-dagster-instance")

    kubernetes_job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-test",
                                               user_defined_k8s_config=context.run_k8s_config, pod_name="dagster-step-test")

    pod = kubernetes_job.spec.template.spec
    container = pod.containers[0]
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    assert container.resources.requests == {"cpu": "4", "memory": "16Gi"}


def test_prompted_step_pod_has_no_gpu():
    executor_config = _load(RUN_CONFIGS["k8s"])["execution"]["config"]
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config["step_k8s_config"]))
    job_config = DagsterK8sJobConfig(job_image="registry.example/prompt-ft:1", instance_config_map="prompt-ft-dagster-instance")

    kubernetes_job = construct_dagster_k8s_job(job_config, [], "dagster-step-prompted",
                                               user_defined_k8s_config=context.run_k8s_config, pod_name="dagster-step-prompted")

    pod = kubernetes_job.spec.template.spec
    assert pod.node_selector is None
    assert pod.containers[0].resources.limits is None
    assert pod.containers[0].resources.requests == {"cpu": "4", "memory": "8Gi"}


@pytest.mark.parametrize("instance_file", ["dagster.postgres.yaml", "dagster.k8s.yaml"])
def test_instance_file_matches_dagster_schema(instance_file, deploy_environment, tmp_path):
    (tmp_path / "dagster.yaml").write_text((DEPLOY / instance_file).read_text())

    settings, instance_class = dagster_instance_config(str(tmp_path))

    assert instance_class is None
    assert settings["telemetry"] == {"enabled": False}
    assert settings["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"


def test_k8s_run_launcher_config_valid(deploy_environment):
    launcher = _load(DEPLOY / "dagster.k8s.yaml")["run_launcher"]
    launcher_class = getattr(importlib.import_module(launcher["module"]), launcher["class"])

    result = process_config(launcher_class.config_type(), launcher["config"])

    assert launcher_class is K8sRunLauncher
    assert result.success, result.errors
    assert result.value["job_image"] == ENVIRONMENT["PROMPT_FT_IMAGE"]
    assert result.value["job_namespace"] == ENVIRONMENT["PROMPT_FT_K8S_NAMESPACE"]


def test_celery_worker_reads_run_config(deploy_environment):
    config = get_validated_config(str(RUN_CONFIGS["celery"]))

    assert config["broker"] == ENVIRONMENT["PROMPT_FT_CELERY_BROKER"]
    assert config["backend"] == ENVIRONMENT["PROMPT_FT_CELERY_BACKEND"]
