"""Versions, commit and settings stored with every result row."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import subprocess

from .paths import project_root

_TRACKED_PACKAGES = ("dagster", "duckdb", "numpy", "pandas", "scikit-learn", "torch", "transformers", "llama-cpp-python")


@functools.cache
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _TRACKED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@functools.cache
def git_commit() -> str:
    """The project's git commit, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root(), capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def provenance_columns(settings: dict[str, object]) -> dict[str, str]:
    """Columns that make a stored row reproducible: its settings, library versions and commit."""
    return {
        "settings_json": json.dumps(settings, sort_keys=True, default=str),
        "versions_json": json.dumps(library_versions(), sort_keys=True),
        "git_commit": git_commit(),
    }
