"""The `grpo` command: `grpo train`, `grpo bench`, `grpo sync`, `grpo rescore`.

Every problem with the user's input (a bad flag value, a missing directory, a corrupt checkpoint)
is printed as one line `grpo: error: ...` with exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys

from grpo.setup.flags import parse_flags

USAGE = """usage: grpo {train,bench,sync,rescore} [--help] ...

  train    train a policy with GRPO (grpo train --help lists every flag)
  bench    time GRPO steps on the fixed benchmark workloads (grpo bench --help)
  sync     push offline wandb runs of a run or sweep directory once you are online
  rescore  recompute a run's model-free metrics from its stored rollouts (--store-rollouts) under
           another advantage, aggregation or masking, into <run-dir>/rescore/<name>/ (grpo rescore --help)
"""


def _fail(message: str, code: int = 2) -> int:
    print(f"grpo: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from grpo import GrpoError

    try:
        if command == "train":
            from grpo.setup.config import TrainConfig
            from grpo.run.runner import train

            config = parse_flags(TrainConfig, rest, "grpo train", default=TrainConfig.flag_defaults(rest))
            summary = train(config)
            if summary.get("status") == "finished":
                print(f"run finished: {config.run_dir}" if config.population == 1 else
                      f"runs finished: {config.run_dir}/seed{{{config.seed}..{config.seed + config.population - 1}}}")
            return 0
        if command == "bench":
            from grpo.commands.benchmark import main as bench_main

            return bench_main(rest)
        if command == "sync":
            from grpo.commands.sync import main as sync_main

            return sync_main(rest)
        if command == "rescore":
            from grpo.commands.rescore import main as rescore_main

            return rescore_main(rest)
        return _fail(f"unknown command {command!r}; choose from train, bench, sync, rescore")
    except GrpoError as err:
        return _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume from the last checkpoint", 130)


if __name__ == "__main__":
    sys.exit(main())
