"""The libraries' noise, quieted in every process that trains or reports: the hub kept offline, no
per-run mmengine warnings (they would break the progress bar)."""
from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    logging.getLogger("mmengine").setLevel(logging.ERROR)
