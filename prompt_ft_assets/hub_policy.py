"""Offline by default: a spec whose data and models are all local runs with HF_HUB_OFFLINE=1.

`prompt-ft run` applies the policy before anything runs, and `ExperimentResource.load` applies it
in every run process, so runs launched from a plain `dagster dev` are offline too.
"""

from __future__ import annotations

import logging
import os

from .spec import hub_sources

logger = logging.getLogger(__name__)

OFFLINE_VARIABLE = "HF_HUB_OFFLINE"
# Messages already logged in this process, so each run's assets do not repeat them.
_announced: set[str] = set()


def apply_hub_policy(spec) -> bool:
    """Set HF_HUB_OFFLINE=1 in this process unless the spec names a hub source or the variable is set.

    huggingface_hub, transformers and datasets then make no network request for a spec whose data
    and models are all local. Returns whether offline mode was set here.
    """
    if OFFLINE_VARIABLE in os.environ:
        return False
    sources = hub_sources(spec)
    if sources:
        message = f"the spec reads from the Hugging Face hub ({'; '.join(sources)}), so hub access stays on"
        if message not in _announced:
            _announced.add(message)
            logger.info(message)
        return False
    os.environ[OFFLINE_VARIABLE] = "1"
    logger.info("the spec names no hub source, so %s=1 is set and nothing is downloaded", OFFLINE_VARIABLE)
    return True
