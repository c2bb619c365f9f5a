"""Command-line flags into a config dataclass (tyro), with a parse error as one `grpo: error: ...` line."""

from __future__ import annotations


def parse_flags(cls, args: list[str], prog: str, **kwargs):
    """tyro.cli, with a parse error turned into one GrpoError line instead of tyro's boxed message
    (--help still prints in full)."""
    import contextlib
    import io
    import re

    import tyro

    from grpo import GrpoError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(cls, args=args, prog=prog, **kwargs)
    except SystemExit as exit_info:
        if not exit_info.code:
            raise
        # The box's first section is the message: its lines up to the first rule, borders stripped.
        lines = []
        for line in captured.getvalue().splitlines()[1:]:
            text = line.strip().strip("│").strip()
            if not text or set(text) <= set("─╰╯"):
                break
            lines.append(text)
        message = re.sub(r"\s+", " ", " ".join(lines)) or captured.getvalue().strip() or "bad arguments"
        raise GrpoError(message) from None
