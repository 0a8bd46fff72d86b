"""Weight-decay parameter groups, as the BAR release builds its AdamW optimizer.

    release_no_decay(release_name, ndim) -> bool      the release's exemption rule, on a release parameter name
    release_name(name) -> str                         this project's parameter name -> the release's name for it
    decay_split(model) -> (decayed names, exempt names)
    param_groups(model, weight_decay) -> [{"params": decayed, "weight_decay": wd}, {"params": exempt, ...: 0.0}]
    decay_report(model) -> {"decayed": n_params, "exempt": n_params, "decayed_tensors": .., "exempt_tensors": ..}

The release (utils/train_utils.py, `create_optimizer`, used for the tokenizer and the generator alike) exempts from
weight decay every trainable parameter with fewer than 2 dimensions and every one whose name contains `norm`, `ln` or
`embed` (case-insensitive) or `bias`; all other trainable parameters decay. The rule is a substring match on the
release's own module names, so it reaches further than "norms, biases and embeddings": `ln` matches the AdaLN
modulation layers (`adaLN_modulation`, `adaln_before_head`), and `embed` matches the MBM head's output layer
(`lm_head.output_embed`) and its mask-ratio embedding MLP (`lm_head.t_embedder.mlp`).

This project's names differ (`blocks.i.ada` for `blocks.i.adaLN_modulation.1`, `token_embed.proj` for
`input_merge`, `head.out` for `lm_head.output_embed`, ...), so the same substring rule on our names would decay a
different set. Here each of our names is first translated to the release's (`release_name`: the inverse of
bar.model.release_keys's key mapping for the backbone and the MBM head) and the release's rule is applied to that.
The decayed set of a BAR generator with the MBM head is then exactly the release's (tests/training/test_optim.py
checks it against the release's key names through bar.model.release_keys).

Heads the release does not have (softmax, bitwise, diffusion) are named by role, as the release names the MBM head's
modules: `head.out` (the layer that gives the token's logits or values) -> `lm_head.output_embed` (exempt),
`head.in_proj` -> `lm_head.input_proj`, `head.t_mlp` (timestep MLP) -> `lm_head.t_embedder.mlp` (exempt),
`head.blocks.i.norm` -> `lm_head.transformer.i.in_ln`, any `ada` / `final_ada` module -> `adaLN_modulation.1`
(exempt). So every head's AdaLN layers, timestep embedding and output layer are treated alike in a head comparison.
Any other module (a tokenizer, say) is matched on its own name.

Parameters with requires_grad=False are in no group (the release filters them the same way; its frozen Fourier
frequencies `lm_head.t_embedder.W` are a buffer here).
"""

from __future__ import annotations

import torch.nn as nn

from bar.model.release_keys import release_name

EXEMPT_SUBSTRINGS = ("norm", "ln", "embed")   # matched on the lower-cased name; `bias` is matched as written

def release_no_decay(name: str, ndim: int) -> bool:
    """The release's rule: no weight decay for 0/1-dim parameters and names containing norm / ln / embed (any case)
    or bias."""
    low = name.lower()
    return ndim < 2 or any(s in low for s in EXEMPT_SUBSTRINGS) or "bias" in name


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether our parameter `name` gets weight decay (the release's rule on the release's name for it)."""
    return not release_no_decay(release_name(name), param.ndim)


def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """(decayed, exempt) names of the trainable parameters of `model`, in model order."""
    decayed: list[str] = []
    exempt: list[str] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decayed if decays(name, p) else exempt).append(name)
    return decayed, exempt


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight matrices with `weight_decay`, the release's exemptions with 0. Each group also carries
    `names` (ignored by torch.optim) for reporting."""
    params = dict(model.named_parameters())
    decayed, exempt = decay_split(model)
    return [{"params": [params[n] for n in decayed], "weight_decay": float(weight_decay), "names": decayed},
            {"params": [params[n] for n in exempt], "weight_decay": 0.0, "names": exempt}]


def decay_report(model: nn.Module) -> dict[str, int]:
    """Parameter counts of the two groups (works on the meta device)."""
    params = dict(model.named_parameters())
    decayed, exempt = decay_split(model)
    return {"decayed": sum(params[n].numel() for n in decayed), "exempt": sum(params[n].numel() for n in exempt),
            "decayed_tensors": len(decayed), "exempt_tensors": len(exempt)}
