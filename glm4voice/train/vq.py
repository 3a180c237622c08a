"""Training-time vector quantiser of the speech tokenizer: EMA codebook, commitment loss, dead-code restarts.

Follows the official WhisperVQ training code as described in SPEC §1.6: the codebook gets no gradients;
per step the assignment counts and summed vectors (over valid positions, all-reduced across ranks)
update ``ema_count`` / ``ema_weight`` with decay 0.99 and Laplace smoothing; codebook = ema_weight /
ema_count; the loss is loss_scale x commit x masked-MSE(hidden, quantized.detach()); every
``restart_interval`` updates, codes whose ema_count fell below decay**restart_interval are re-initialised
to randomly chosen valid hidden states (ema_count reset to 1, ema_weight to the new vector). The
straight-through estimator passes gradients from the quantised output back to the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 16_384  # released quantize_vocab_size
    dim: int = 1280
    decay: float = 0.99  # quantize_ema_decay
    commit: float = 0.25  # quantize_commit_coefficient
    loss_scale: float = 10.0  # quantize_loss_scale
    restart_interval: int = 100  # quantize_restart_interval
    epsilon: float = 1e-5  # Laplace smoothing
    # Codes whose ema_count fell below this are restarted; None = decay**restart_interval (official). Small
    # batches (few positions per step for many codes) need a lower threshold, or live codes get restarted.
    restart_threshold: float | None = None


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantiser whose codebook is an EMA of the vectors assigned to each code.

    Buffers use the official names (``codebook.weight`` is a parameter without gradient in the
    official model; here it is kept as ``codebook`` Embedding so exported state dicts match).
    """

    def __init__(self, cfg: VQConfig, *, device=None, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.dim, device=device, dtype=dtype)
        self.codebook.weight.requires_grad_(False)
        self.register_buffer("ema_count", torch.ones(cfg.codebook_size, device=device, dtype=torch.float32))
        self.register_buffer("ema_weight", self.codebook.weight.detach().clone().float())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long, device=device))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Code ids (N,) of vectors x (N, D): argmin of ||c||^2 + ||x||^2 - 2 x.c (the official form)."""
        return _assign(x, self.codebook.weight)[0]

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None):
        """h: (B, T, D); mask: (B, T) bool of valid positions.

        Returns (quantized with straight-through gradient (B, T, D), ids (B, T), loss scalar, stats dict).
        """
        b, t, d = h.shape
        mask = torch.ones(b, t, dtype=torch.bool, device=h.device) if mask is None else mask.bool()
        flat = h.reshape(-1, d)
        ids = self.nearest(flat.detach().float().to(self.codebook.weight.dtype))
        q = self.codebook(ids).view(b, t, d).to(h.dtype)
        m = mask.unsqueeze(-1).to(h.dtype)
        n_valid = m.sum().clamp_min(1.0)
        loss = self.cfg.loss_scale * self.cfg.commit * (((h - q.detach()) ** 2) * m).sum() / (n_valid * d)
        if self.training:
            self._ema_update(flat.detach().float(), ids, mask.reshape(-1))
        out = h + (q - h).detach()
        valid_ids = ids.view(b, t)[mask]
        stats = {"vq_loss": float(loss.detach()), "codes_used": int(valid_ids.unique().numel())}
        return out, ids.view(b, t), loss, stats

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> None:
        cfg = self.cfg
        x, ids = x[valid], ids[valid]
        onehot_counts = torch.bincount(ids, minlength=cfg.codebook_size).float()
        dw = torch.zeros_like(self.ema_weight).index_add_(0, ids, x)
        _all_reduce(onehot_counts)
        _all_reduce(dw)
        self.ema_count.mul_(cfg.decay).add_(onehot_counts, alpha=1 - cfg.decay)
        total = self.ema_count.sum()
        self.ema_count.copy_((self.ema_count + cfg.epsilon) / (total + cfg.codebook_size * cfg.epsilon) * total)
        self.ema_weight.mul_(cfg.decay).add_(dw, alpha=1 - cfg.decay)
        self.codebook.weight.copy_((self.ema_weight / self.ema_count[:, None]).to(self.codebook.weight.dtype))
        self.updates += 1
        if int(self.updates) % cfg.restart_interval == 0:
            self.restart_dead_codes(x)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, generator: torch.Generator | None = None, noise: float = 0.01) -> None:
        """Data-driven initialisation: every code becomes a random row of x (N, D) plus a little noise (rows are
        reused when N < codebook size). Used after a warm-up without quantisation, so the codebook starts on
        the data manifold instead of collapsing onto one code. Same vectors on every rank."""
        pick = torch.randint(0, x.shape[0], (self.cfg.codebook_size,), generator=generator, device=x.device)
        new = x[pick].float()
        self._set_codebook(new + noise * new.std() * torch.randn(new.shape, generator=generator, device=x.device))

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, *, iters: int = 20, generator: torch.Generator | None = None) -> dict:
        """Data-driven initialisation by k-means over many states x (N, D), N >> codebook size: Lloyd iterations
        from distinct random rows (``kmeans``). One batch (``init_from``) gives about one state per code, so most
        codes start on a single frame; the lessons of the embedded model's card name this switch as what held the
        tokenizer back. Rank 0's centroids are broadcast. Returns the mean squared quantisation error of x under
        the starting rows and under the result, and how many empty clusters were re-seeded."""
        new, stats = kmeans(x.float(), self.cfg.codebook_size, iters=iters, generator=generator)
        self._set_codebook(new)
        return stats

    def _set_codebook(self, new: torch.Tensor) -> None:
        """Rank 0's vectors become every rank's codebook, each code counted once."""
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, 0)
        self.ema_weight.copy_(new)
        self.ema_count.fill_(1.0)
        self.codebook.weight.copy_(new.to(self.codebook.weight.dtype))

    @torch.no_grad()
    def restart_dead_codes(self, x: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Re-initialise codes with ema_count < decay**restart_interval to random rows of x. Returns how many."""
        threshold = self.cfg.restart_threshold
        if threshold is None:
            threshold = self.cfg.decay**self.cfg.restart_interval
        dead = (self.ema_count < threshold).nonzero().flatten()
        if dead.numel() == 0 or x.shape[0] == 0:
            return 0
        # Every rank must pick the same vectors: draw on rank 0's data and broadcast.
        pick = torch.randint(0, x.shape[0], (dead.numel(),), generator=generator, device=x.device)
        new = x[pick].clone()
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new, 0)
        self.ema_weight[dead] = new
        self.ema_count[dead] = 1.0
        self.codebook.weight[dead] = new.to(self.codebook.weight.dtype)
        return int(dead.numel())


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 16_384) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of each row of x (argmin of ||c||^2 + ||x||^2 - 2 x.c, the official form) and its squared
    distance, in chunks of rows (N x K distances)."""
    cc = (c * c).sum(1)
    ids, dist2 = [], []
    for i in range(0, x.shape[0], chunk):
        part = x[i: i + chunk]
        d = torch.addmm(cc[None] + (part * part).sum(1, keepdim=True), part, c.t(), beta=1, alpha=-2)
        best = d.argmin(1)
        ids.append(best)
        dist2.append(d.gather(1, best[:, None])[:, 0].clamp_min(0))
    return torch.cat(ids), torch.cat(dist2)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, dict]:
    """Lloyd's k-means of x (N, D) into k centroids, started from k distinct random rows (rows are reused when
    N < k). An empty cluster is re-seeded at the row worst served by its centroid. Returns (centroids (k, D),
    {"mse_start", "mse", "reseeded"}), errors as mean squared distance per row and dimension."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
    n, d = x.shape
    pick = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(0, n, (k,), generator=generator)
    c = x[pick.to(x.device)].clone()
    _, dist2 = _assign(x, c)
    mse_start = float(dist2.mean()) / d
    reseeded = 0
    for _ in range(iters):
        ids, dist2 = _assign(x, c)
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, ids, x)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None].to(x.dtype)
        empty = (~filled).nonzero().flatten()
        if empty.numel() and n >= k:
            worst = dist2.topk(min(int(empty.numel()), n)).indices
            c[empty[: worst.numel()]] = x[worst]
            reseeded += int(empty.numel())
    _, dist2 = _assign(x, c)
    return c, {"mse_start": mse_start, "mse": float(dist2.mean()) / d, "reseeded": reseeded}
