"""The interface every token head implements, and the CFG combination they share."""

from __future__ import annotations

import torch
import torch.nn as nn

from bar.model.layers import modulate


def guide(out_B2: torch.Tensor, cfg_scale: torch.Tensor | float | None) -> torch.Tensor:
    """The CFG combination every head uses: rows [:B] conditional, [B:] unconditional -> u + s * (c - u)."""
    if cfg_scale is None:
        return out_B2
    B = out_B2.shape[0] // 2
    c, u = out_B2[:B], out_B2[B:]
    return u + cfg_scale * (c - u)


class AdaLNBlock(nn.Module):
    """x + gate * mlp(modulate(norm(x), shift, scale)), given its modulation (shift, scale, gate) = ada(SiLU(s)) for
    the head's condition s (the residual block of the MBM and diffusion heads; AdaLN-Zero when ada starts at 0)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, width: int):
        super().__init__()
        self.norm, self.mlp, self.ada = norm, mlp, nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = mod.chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class TokenHead(nn.Module):
    """Base class of all heads: subclasses set `width` (W, the condition width the backbone must produce) and
    `token_dim` (k: bits per AR step, or channels) and implement `loss`, `check_schedule`, `draw_noise`,
    `sample_with_noise` (and `sampling_constants`, `sampling_passes` where the defaults do not fit).

    One sampler per head, `sample_with_noise`: its randomness comes in as `noise` (drawn up front by `draw_noise`),
    its shapes are fixed by the schedule and it never synchronises with the host, so the decoder can compile it.
    CFG: cfg_scale None -> cond is (B, W); a scale (0-d tensor) -> cond is (2B, W), rows [:B] conditional, [B:]
    unconditional (null class), combined by `guide`; the head returns B tokens."""

    width: int
    token_dim: int
    # how a schedule error names token_dim; the generator builder sets it when tokens are grouped
    token_dim_name: str = "bits_per_token"
    # what the head's tokens are: "bits" (uint8 in {0, 1}) or "continuous" (float channels); the generator builder
    # picks the backbone's input embedding from it
    token_kind: str = "bits"
    # the keyword options the sampling methods and `check_schedule` accept (e.g. ("allocation",) for MBM)
    schedule_options: tuple[str, ...] = ()
    # True: the decoder compiles the backbone step and `sample_with_noise` as one graph. False: `sample_with_noise`
    # is a long loop that takes `step_fn=`, the compiled form of its body `denoise_step`
    fused_sample: bool = True

    def loss(self, cond_BLW: torch.Tensor, target_BLk: torch.Tensor, generator: torch.Generator | None = None,
             draws: dict | None = None) -> torch.Tensor:
        """The training loss of conditions (B, L, W) for targets (B, L, k). Heads with random draws (`loss_draws`)
        draw them from `generator` or take them as `draws`; heads without ignore both."""
        raise NotImplementedError

    def loss_draws(self, rows: int, device, generator: torch.Generator | None = None) -> dict:
        """The random draws of `loss` on `rows` token positions, drawn in the order `loss` draws them; `loss(...,
        draws=...)` uses them instead of drawing (what a compiled training step needs). Empty for heads without."""
        return {}

    def check_schedule(self, **schedule) -> None:
        """Raise UserError (one line) if the sampling schedule does not fit this head."""

    def sampling_passes(self, **schedule) -> int:
        """Evaluations of the head network per AR step when sampling (the cost model prices sampling with it)."""
        self.check_schedule(**schedule)
        return 1

    def draw_noise(self, batch: int, temperature: float, generator: torch.Generator | None, device,
                   **schedule) -> list[torch.Tensor]:
        """Every random number one call of `sample_with_noise` uses for `batch` tokens, in a fixed order."""
        raise NotImplementedError

    def sampling_constants(self, temperature: float, device, **schedule) -> dict:
        """The per-call tensors of `sample_with_noise` (temperatures, schedule tables), made once per decode; by
        default the temperature "tau"."""
        return {"tau": torch.tensor(float(temperature), device=device)}

    def sample_with_noise(self, cond_BW: torch.Tensor, cfg_scale: torch.Tensor | None, noise: list[torch.Tensor],
                          consts: dict, **schedule) -> torch.Tensor:
        """Tokens (B, k) for conditions cond_BW (B or 2B rows, see CFG above). Fixed shapes, no host sync."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, cond_BW: torch.Tensor, cfg_scale: float | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, **schedule) -> torch.Tensor:
        """`sample_with_noise` with its noise drawn from `generator` and its constants made here."""
        self.check_schedule(**schedule)
        device = cond_BW.device
        batch = cond_BW.shape[0] // 2 if cfg_scale is not None else cond_BW.shape[0]
        noise = self.draw_noise(batch, temperature, generator, device, **schedule)
        consts = self.sampling_constants(temperature, device, **schedule)
        scale = None if cfg_scale is None else torch.tensor(float(cfg_scale), device=device)
        return self.sample_with_noise(cond_BW, scale, noise, consts, **schedule)
