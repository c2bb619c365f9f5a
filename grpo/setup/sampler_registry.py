"""The sampler registry: --sampler name -> sampler class (the interface is in grpo/engine/sampler.py's docstring).

The classes live with the engine (grpo/engine/sampler.py, grpo/engine/fast_sampler.py: layer 4) and register here with
`@register_sampler("name")`; this module sits below the config (layer 3), so `TrainConfig` checks --sampler
without importing any sampler. The config is often built before the built-in samplers' modules are
imported, so their names are also declared here, in BUILTIN_SAMPLERS: registering a name from a grpo
module that is not declared there is an error, and tests/test_registries.py holds the two equal. A sampler
of one's own (a file outside grpo/, imported before the config is built) needs only its decorator.
"""

from __future__ import annotations

from grpo import GrpoError

AUTO = "auto"   # not a class: the trainer picks `static` where fast_sampler supports the model, else `hf`
BUILTIN_SAMPLERS = ("hf", "static")
SAMPLERS: dict[str, type] = {}   # filled by @register_sampler as the sampler modules are imported


def register_sampler(name: str):
    """Class decorator: make the class `--sampler name` (its `name` attribute is set to it)."""

    def register(cls: type) -> type:
        if name == AUTO or name in SAMPLERS:
            raise ValueError(f"sampler name {name!r} is taken")
        if cls.__module__.startswith("grpo.") and name not in BUILTIN_SAMPLERS:
            raise ValueError(f"built-in sampler {name!r} must be declared in BUILTIN_SAMPLERS")
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return register


def sampler_names() -> list[str]:
    """The values --sampler takes: auto, the built-in samplers and any registered since."""
    return [AUTO, *BUILTIN_SAMPLERS, *sorted(set(SAMPLERS) - set(BUILTIN_SAMPLERS))]


def check_sampler_name(name: str) -> None:
    """GrpoError (one line, listing the names) unless --sampler `name` is known."""
    if name not in sampler_names():
        raise GrpoError(f"unknown --sampler {name!r}; choose from {', '.join(sampler_names())}")
