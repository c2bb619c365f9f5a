"""A sampler of one's own, in one file: what a new sampler takes (grpo/engine/sampler.py's docstring says what it implements).

Importing this module registers `--sampler full_forward`: no KV cache, the whole sequence through the
model's forward at every new token (slow, and simple enough to check by eye). It records every
`sync_weights` call and every `generate`, so tests/test_sampler_registry.py can check when the trainer
syncs it and that it draws from what it was synced to.
"""

from __future__ import annotations

import torch

from grpo.engine.sampler import Rollout, Sampler, TokenStream, prompt_positions
from grpo.setup.sampler_registry import register_sampler

NAME = "full_forward"


@register_sampler(NAME)
class FullForwardSampler(Sampler):
    built: list[FullForwardSampler] = []     # every instance, so a test finds the one a run built

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        self.built.append(self)
        # ("sync", module, a copy of its weights) and ("generate", module the rollout was drawn from), in order.
        self.events: list[tuple] = []

    def sync_weights(self, policy: torch.nn.Module) -> None:
        self.events.append(("sync", policy, {k: v.detach().clone() for k, v in policy.state_dict().items()}))
        super().sync_weights(policy)

    def generate(self, prompt_ids, prompt_mask, **kwargs) -> Rollout:
        self.events.append(("generate", self.model))
        return super().generate(prompt_ids, prompt_mask, **kwargs)

    @torch.inference_mode()
    def generate_from(self, model, prompt_ids, prompt_mask, *, max_new_tokens: int, temperature: float,
                      generator, eos_token_id: int, pad_token_id: int, min_new_tokens: int = 0,
                      greedy: bool = False) -> Rollout:
        # TokenStream bans EOS before min_new_tokens, draws at the temperature, pads after EOS and returns
        # the drawn tokens' log-probs under the distribution it drew from (what Rollout.logp must hold).
        stream = TokenStream(prompt_ids.shape[0], prompt_ids.device, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, temperature=temperature, generator=generator,
                             greedy=greedy, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        ids, mask = prompt_ids, prompt_mask.long()
        while True:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask)).logits[:, -1]
            token, done = stream.push(logits)
            if done:
                return stream.rollout(prompt_ids, prompt_mask)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
