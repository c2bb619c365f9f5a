"""Ablation experiments: each module declares a base config, arms, seeds and the budget it holds fixed."""
