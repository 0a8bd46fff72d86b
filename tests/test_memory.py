"""Training-memory estimate vs measurement (CPU), and how the estimate scales with bits per token per head."""

import pytest
import torch

from bar.heads import build_head
from bar.memory import (estimate_train_memory, measure_peak_train_memory, measure_train_step,
                        train_memory_breakdown)
from conftest import build_model



def test_measure_sees_allocations_and_frees():
    MB = 2 ** 20

    def fn():
        a = torch.empty(4 * MB, dtype=torch.uint8)
        b = torch.empty(8 * MB, dtype=torch.uint8)
        del a
        c = torch.empty(2 * MB, dtype=torch.uint8)
        del b, c

    peak = measure_peak_train_memory(fn)
    assert 12 * MB <= peak < 12 * MB + 64 * 1024


def test_softmax_estimate_matches_measurement_where_logits_dominate():
    torch.manual_seed(0)
    k, B = 13, 16                                     # C = 8192 codes, 16 x 16 positions
    model = build_model("profile=smoke", f"tokenizer.bits={k}", "head=softmax", "data.num_classes=4")
    parts = train_memory_breakdown(model, B)
    estimate = estimate_train_memory(model, B)
    assert estimate == sum(parts.values())
    assert parts["head_activations"] > 0.7 * estimate  # the logits dominate
    tokens = torch.randint(0, 2, (B, 16, k), dtype=torch.uint8)
    measured = measure_train_step(model, tokens, torch.randint(0, 4, (B,)))
    assert abs(estimate - measured) / measured < 0.25, (estimate, measured)


def test_estimate_scaling_with_bits_per_token():
    def est(head, k):
        model = build_model("profile=tiny", f"tokenizer.bits={k}", f"head={head}", "head.width=256", meta=True)
        return estimate_train_memory(model, 32)

    mbm = [est("mbm", k) for k in (8, 16, 32, 64)]
    assert max(mbm) / min(mbm) < 1.05                  # O(k): nearly flat
    bitwise = [est("bitwise", k) for k in (8, 16, 32, 64)]
    assert max(bitwise) / min(bitwise) < 1.1
    soft = [est("softmax", k) for k in (8, 16, 24, 32)]
    assert soft[1] > 10 * soft[0] and soft[3] / soft[2] > 200   # O(2^k)
    assert soft[3] > 2 ** 40                                    # far beyond any one device


def test_bare_head_estimate_needs_steps():
    head = build_head("bitwise", 8, width=16)
    with pytest.raises(ValueError, match="steps"):
        estimate_train_memory(head, 4)
    parts = train_memory_breakdown(head, 4, steps=10)
    assert parts["backbone_activations"] == 0 and parts["head_activations"] == head.activation_bytes(40)
    n = sum(p.numel() for p in head.parameters())
    assert parts["params"] == 4 * n and parts["optimizer"] == 8 * n
    assert estimate_train_memory(head, 4, steps=10, bytes_per_param=2, bytes_per_act=2) < sum(parts.values())
