"""The warm start's loss in micro-batches: the same loss and gradients as each demonstration run on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grpo.engine.models import build_model
from grpo.engine.warmstart import demonstration_loss_backward

VOCAB, PAD = 12, 0


def left_padded(rows: list[list[int]], demo_lengths: list[int]):
    """(ids, attention, loss_mask) as `demonstration_batch` builds them: left padding, the loss on each row's
    last `demo_lengths` tokens."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    loss_mask = torch.zeros(len(rows), width)
    for i, (row, demo) in enumerate(zip(rows, demo_lengths)):
        ids[i, width - len(row):] = torch.tensor(row)
        attention[i, width - len(row):] = 1
        loss_mask[i, width - demo:] = 1
    return ids, attention, loss_mask


def each_row_alone(model, rows: list[list[int]], demo_lengths: list[int]) -> torch.Tensor:
    """The mean cross-entropy over all demonstration tokens, every row run unpadded on its own."""
    losses = []
    for row, demo in zip(rows, demo_lengths):
        ids = torch.tensor([row])
        logits = model(input_ids=ids).logits[0, :-1]
        losses.append(F.cross_entropy(logits, ids[0, 1:], reduction="none")[-demo:])
    return torch.cat(losses).mean()


ROWS = [[3, 4, 5], [1, 2, 3, 4, 5, 6, 7], [7, 8, 9, 10, 11], [5, 6]]
DEMOS = [2, 3, 4, 1]        # demonstration tokens per row: 10 in all


def test_micro_batched_loss_and_gradients_equal_each_row_alone():
    model = build_model("tiny", VOCAB, seed=0)
    expected = each_row_alone(model, ROWS, DEMOS)
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for micro_batch in (1, 2, 4):
        loss = demonstration_loss_backward(model, *left_padded(ROWS, DEMOS), micro_batch=micro_batch)
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        for p, g in zip(model.parameters(), expected_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
        model.zero_grad(set_to_none=True)


def test_micro_batches_take_the_shortest_rows_first_each_cut_to_its_longest():
    # Lengths 3, 7, 5, 2 -> sorted rows 3 (2 tokens), 0 (3), 2 (5), 1 (7); in pairs: widths 3 and 7.
    model = build_model("tiny", VOCAB, seed=0)
    seen = []
    forward = model.forward
    model.forward = lambda input_ids, **kw: (seen.append(input_ids.tolist()), forward(input_ids=input_ids, **kw))[1]
    demonstration_loss_backward(model, *left_padded(ROWS, DEMOS), micro_batch=2)
    assert seen == [[[PAD, 5, 6], [3, 4, 5]], [[PAD, PAD, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7]]]
