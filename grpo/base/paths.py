"""Where grpo-lab keeps what it computes once and reuses: $GRPO_CACHE, else ~/.cache/grpo-lab
(warm starts, GGUF conversions)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("GRPO_CACHE", Path.home() / ".cache" / "grpo-lab"))
