"""grpo-lab: GRPO (Group Relative Policy Optimization) written from scratch in PyTorch.

Shape letters used throughout the package:
    P  prompts in a step
    G  group size (completions sampled per prompt)
    N  = P * G completions in a step
    B  completions in a micro-batch
    T  padded completion length
    L  padded prompt length

Masks are float 0/1 tensors applied by multiplication; a 0 marks a position that is not a
completion token (prompt, left padding, or anything after the first EOS).
"""

__version__ = "0.1.0"


class GrpoError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""

    exit_code = 2


class TrainingDiverged(GrpoError):
    """A non-finite loss, gradient, reward or metric: the run stops, keeping its last good checkpoint."""

    exit_code = 1     # not bad input: the run itself failed
