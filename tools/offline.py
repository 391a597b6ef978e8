"""The environment that keeps every project command off the network.

Tests, the demo and CI run tiny local models only, so any hub request is a bug: these variables make the
Hugging Face, datasets and ModelScope clients fail fast instead of retrying against an unreachable hub.
Users training real models from a hub id simply do not set them.
"""

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def offline_env(base=None, **extra) -> dict:
    """A copy of `base` (default: os.environ) with the offline variables and `extra` set."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env
