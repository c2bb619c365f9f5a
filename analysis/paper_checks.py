"""The report's "Paper checks" table, read from the paper_checks.json that experiments.paper_checks writes.

Each row of the file is one published claim: id, claim, source, quantity, kind (E exact / S statistical),
verdict, measured (one line: the float error of an exact check, or the interval of a statistical one),
error and tolerance (exact checks), note (why contradicted, not applicable or not run; our reading),
sweep, arms, steps and seeds (statistical checks). The table shows them as they are; nothing is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.load import AnalysisError

CHECKS_FILE = "paper_checks.json"
VERDICT_ORDER = ["held", "not detected at this budget", "contradicted", "not applicable", "not run"]
HEADER = ["ID", "claim", "source", "quantity", "measured", "verdict", "budget and notes"]


def load_paper_checks(paths) -> list[dict]:
    """The rows of every <path>/paper_checks.json among `paths` (directories), in order; [] when there is none.

    Raises AnalysisError for a file that is not JSON or has no list of checks with an id and a verdict."""
    rows = []
    for path in paths:
        file = Path(path) / CHECKS_FILE
        if not file.is_file():
            continue
        try:
            checks = json.loads(file.read_text())["checks"]
            if not all(isinstance(row, dict) and "id" in row and "verdict" in row for row in checks):
                raise TypeError("a check without id or verdict")
        except (ValueError, KeyError, TypeError) as err:
            raise AnalysisError(f"{file} is not a paper checks file ({type(err).__name__}: {err})") from None
        rows += checks
    return rows


def _budget(row: dict) -> str:
    """Seeds, steps and sweep of an S claim, then the note."""
    parts = []
    if row.get("kind") == "S":
        parts.append(f"seeds {row.get('seeds') or 'none'}, steps {row.get('steps') or 'none'}, "
                     f"sweep {row.get('sweep') or 'none'}")
    if row.get("note"):
        parts.append(row["note"])
    return "; ".join(parts)


def summary_text(rows: list[dict]) -> str:
    """'On this harness, N claims: a held, b contradicted, ...', verdicts in VERDICT_ORDER then any others."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    order = [v for v in VERDICT_ORDER if v in counts] + sorted(v for v in counts if v not in VERDICT_ORDER)
    return f"On this harness, {len(rows)} claims: " + ", ".join(f"{counts[v]} {v}" for v in order) + "."


def paper_checks_section(rows: list[dict]) -> list[tuple]:
    """Report blocks: heading, summary, what the verdicts mean, and the table (one row per claim)."""
    table = [[row["id"], row.get("claim", ""), row.get("source", ""), row.get("quantity", ""),
              row.get("measured", ""), row["verdict"], _budget(row)] for row in rows]
    return [("h", 2, "Paper checks"),
            ("p", summary_text(rows) + " Exact (E) claims are identities checked on grpo-lab's own functions to "
                  "the stated float tolerance; statistical (S) claims are directions read off seeded runs."),
            ("table", HEADER, table)]
