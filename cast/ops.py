"""Tensor operations CAST is built from: segment means and farthest point sampling.

Pure PyTorch (no NumPy on the model's path), batched, no compiled extensions. Both functions are written to reproduce the
published model's numerics (``docs/architecture.md``: segment tokens and graph pooling).
"""

from __future__ import annotations

import torch

__all__ = ["segment_mean", "farthest_point_sample"]


def segment_mean(x: torch.Tensor, labels: torch.Tensor, num_segments: int | None = None) -> torch.Tensor:
    """Average features per segment id, independently for every batch element.

    Args:
        x: float tensor ``[B, H, W, C]`` (or ``[B, L, C]``).
        labels: long tensor ``[B, H, W]`` (or ``[B, L]``) of ids ``>= 0``.
        num_segments: length of the segment axis; default ``labels.max() + 1`` over the batch.

    Returns:
        ``[B, S, C]`` means; an id with no member gives a zero vector.
    """
    B, C = x.shape[0], x.shape[-1]
    x = x.reshape(B, -1, C)
    labels = labels.reshape(B, -1)
    if num_segments is None:
        num_segments = int(labels.max()) + 1
    # one flat index over (batch, segment); index_add_ accumulates in input order like
    # scatter_add_ but runs several times faster on the CPU
    flat = (labels + torch.arange(B, device=labels.device).unsqueeze(1) * num_segments).reshape(-1)
    sums = x.new_zeros(B * num_segments, C).index_add_(0, flat, x.reshape(-1, C))
    counts = x.new_zeros(B * num_segments).index_add_(0, flat, x.new_ones(flat.shape[0]))
    return (sums / counts.clamp(min=1).unsqueeze(-1)).view(B, num_segments, C)


def _exact_sq_dist(points: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance accumulated channel by channel, in channel order.

    ``points`` ``[B, N, C]``, ``centre`` ``[B, C]`` -> ``[B, N]``. A cumulative sum over the channel
    axis is a sequential reduction, so the rounding matches a plain ``for c in range(C): d += diff[c] ** 2``
    loop; running it over the leading axis of ``[C, B, N]`` vectorises across points.
    """
    return (points - centre.unsqueeze(1)).square().permute(2, 0, 1).cumsum(0)[-1]


def _fps_exact(points: torch.Tensor, k: int) -> torch.Tensor:
    """Farthest point sampling with the sequential channel sum at every step (slow, exact)."""
    B, N, _ = points.shape
    batch = torch.arange(B, device=points.device)
    dist = torch.full((B, N), float("inf"), dtype=points.dtype, device=points.device)
    current = torch.zeros(B, dtype=torch.long, device=points.device)
    chosen = [current]
    for _ in range(1, k):
        dist = torch.minimum(dist, _exact_sq_dist(points, points[batch, current]))
        current = dist.argmax(-1)  # first maximum: ties go to the lowest index
        chosen.append(current)
    return torch.stack(chosen, 1)


def _fps_fast(points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS on a dot-product distance matrix; also says which batch elements had a step too close to call.

    ``|a|^2 + |b|^2 - 2 a.b`` rounds differently from the sequential sum; the difference is far
    below ``tol``. A step whose runner-up lies within ``2 * tol`` of the winner could differ from
    the exact order, so those batch elements are recomputed exactly (ties between different
    points, near-duplicates). Exact duplicates get identical rows here, so their ties resolve alike.
    """
    B, N, C = points.shape
    sq = points.square().sum(-1)  # [B, N]
    dmat = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * torch.bmm(points, points.transpose(1, 2))
    tol = 64.0 * C * torch.finfo(points.dtype).eps * sq.amax(-1).clamp(min=1.0)  # [B]
    batch = torch.arange(B, device=points.device)
    dist = dmat[:, 0]
    current = torch.zeros(B, dtype=torch.long, device=points.device)
    chosen, history = [current], []
    for _ in range(1, k):
        history.append(dist)
        current = dist.argmax(-1)
        chosen.append(current)
        dist = torch.minimum(dist, dmat[batch, current])
    out = torch.stack(chosen, 1)
    if k < 2:
        return out, torch.zeros(B, dtype=torch.bool, device=points.device)
    if N < 2:
        return out, torch.ones(B, dtype=torch.bool, device=points.device)
    top2 = torch.stack(history, 1).topk(2, dim=-1).values  # [B, k-1, 2]
    return out, (top2[..., 0] - top2[..., 1] <= 2.0 * tol.unsqueeze(-1)).any(-1)


@torch.library.custom_op("cast::farthest_point_sample", mutates_args=())
def _fps_op(points: torch.Tensor, k: int) -> torch.Tensor:
    """The sampler as one operator: ``torch.compile`` sees a single node with a known output shape
    (no graph break, no tracing of the ~k-step loop); its data-dependent exact fallback stays inside."""
    out, ambiguous = _fps_fast(points, k)
    if bool(ambiguous.any()):  # rare: real features almost never have near-ties
        out = out.clone()
        out[ambiguous] = _fps_exact(points[ambiguous], k)
    return out


@_fps_op.register_fake
def _(points: torch.Tensor, k: int) -> torch.Tensor:
    return points.new_empty((points.shape[0], k), dtype=torch.long)


@torch.no_grad()
def farthest_point_sample(points: torch.Tensor, k: int) -> torch.Tensor:
    """Farthest point sampling, batched, starting at point 0.

    Semantics (those of the published model's sampler): float64 squared Euclidean distances
    accumulated channel by channel; each next point is the one with the largest distance to the
    chosen set; ties go to the lowest index; when every remaining distance is zero the lowest index
    (point 0) is returned again. Pure PyTorch; compiled graphs see one operator
    (``torch.ops.cast.farthest_point_sample``).

    Args:
        points: ``[B, N, C]`` float tensor (converted to float64).
        k: number of points to draw, including the start point.

    Returns:
        long tensor ``[B, k]`` of indices into ``N``; column 0 is always 0.
    """
    return _fps_op(points.detach().to(torch.float64).contiguous(), int(k))
