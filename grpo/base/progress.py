"""A progress bar over steps, for training and the warm start."""

from __future__ import annotations

import sys


def progress_bar(total: int, initial: int, quiet: bool, desc: str = "grpo"):
    """A tqdm bar over steps (iterable: yields initial .. total - 1), shown only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(range(initial, total), total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())
