"""Step time against group size G and completion length: `grpo bench` over a small grid.

    .venv/bin/python bench/scaling.py [--workload tiny] [--steps 5] [--json-out F]

Prints a table of median s/step (rows: completion length, columns: G) and, beside each, the time
per completion token in microseconds: linear scaling shows as a flat second number.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GROUP_SIZES = (4, 8, 16)
LENGTHS = (16, 32, 64)


def bench(workload: str, group_size: int, length: int, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run([sys.executable, "-m", "grpo.commands.cli", "bench", "--workload", workload, "--group-size",
                        str(group_size), "--completion-len", str(length), "--steps", str(steps),
                        "--threads", str(threads), "--json-out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    cells = {(g, n): bench(args.workload, g, n, args.steps, args.threads) for n in LENGTHS for g in GROUP_SIZES}
    print(f"{args.workload}: median s/step (us per completion token), 8 prompts x G completions of exactly n tokens")
    print("n \\ G  " + "".join(f"{g:>20}" for g in GROUP_SIZES))
    for n in LENGTHS:
        row = []
        for g in GROUP_SIZES:
            s = cells[(g, n)]["median_s_per_step"]
            row.append(f"{s:10.3f} ({s / (8 * g * n) * 1e6:5.0f} us)")
        print(f"{n:<7}" + "".join(f"{cell:>20}" for cell in row))
    if args.json_out:
        args.json_out.write_text(json.dumps({f"G{g}_n{n}": r for (g, n), r in cells.items()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
