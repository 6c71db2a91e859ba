"""Training objectives. Each is an :class:`Objective` (an ``nn.Module``) whose forward takes a batch
and returns a dict with ``loss`` (and whatever else is worth logging); the backbone stays an
ordinary classifier inside. The engine calls three hooks, so it never asks which objective it runs:
:meth:`Objective.on_epoch_start` (e.g. HIRL's re-clustering), :meth:`Objective.on_step` (e.g. the
MoCo momentum schedule) and :meth:`Objective.extra_metrics` (validation numbers of its own).

- :class:`Supervised`: DeiT-style cross-entropy with label smoothing and mixup / cutmix (timm's
  Mixup maths; cutmix also cuts and pastes the superpixel maps).
- :class:`Hierarchical`: H-CAST's per-level soft-target cross-entropy + tree-path KL.
- :class:`MoCoV3`: MoCo-v3 — query encoder (backbone + projector + predictor), momentum key
  encoder, symmetric InfoNCE over the global batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import cast

from . import distributed as D

__all__ = ["Objective", "Supervised", "Hierarchical", "MoCoV3", "SuperpixelMixup", "encode", "takes_superpixels", "Embedder"]

# Embeds every image of the objective's clustering bank on every rank and gathers the result:
# ``() -> (features [N, D], dataset indices [N])``.
Embedder = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def takes_superpixels(model: nn.Module) -> bool:
    return isinstance(model, cast.CAST)


def encode(model: nn.Module, images: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """Run CAST with its superpixels, or a plain ViT baseline on the images alone."""
    return model(images, superpixels) if takes_superpixels(model) else model(images)


def _prefixed_no_weight_decay(prefix: str, model: nn.Module) -> set[str]:
    names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    return {f"{prefix}{n}" for n in names}


class SuperpixelMixup(Mixup):
    """timm's batch-mode Mixup/CutMix, extended to carry superpixel maps along.

    CutMix pastes the box's superpixels from the partner image with their ids shifted past the
    image's own, so segments never merge across images; plain mixup keeps each image's own map.
    """

    def __call__(self, x: torch.Tensor, sp: torch.Tensor, target: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, sp, lam = self.mix(x, sp)
        return x, sp, mixup_target(target, self.num_classes, float(lam), self.label_smoothing)

    def mix(self, x: torch.Tensor, sp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mix the batch with its reverse (in place); returns the images, superpixels and the one
        lambda every target of the batch is mixed with."""
        if len(x) % 2:
            raise ValueError("mixup needs an even batch size")
        lam, use_cutmix = self._params_per_batch()
        if lam != 1.0:
            if use_cutmix:
                (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(
                    x.shape, lam, ratio_minmax=self.cutmix_minmax, correct_lam=self.correct_lam)
                x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
                offset = sp.flatten(1).amax(1).view(-1, 1, 1) + 1
                sp = sp.clone()
                sp[:, yl:yh, xl:xh] = sp.flip(0)[:, yl:yh, xl:xh] + offset[:, :, :]
                sp = _compact(sp)
            else:
                x.mul_(lam).add_(x.flip(0).mul_(1.0 - lam))
        return x, sp, float(lam)


def _compact(sp: torch.Tensor) -> torch.Tensor:
    """Renumber each map's ids to ``0..S-1`` (pasting can leave gaps)."""
    out = torch.empty_like(sp)
    for i in range(sp.shape[0]):
        _, inv = torch.unique(sp[i], return_inverse=True)
        out[i] = inv
    return out


class Objective(nn.Module):
    """Base of the objectives: ``forward(batch) -> {"loss": ..., ...}`` plus the engine's hooks."""

    def on_epoch_start(self, epoch: int, embed: Embedder) -> dict[str, float | str] | None:
        """Called before the first batch of every epoch (also after a resume); a returned dict is
        logged (its ``"event"`` entry names the record)."""
        return None

    def on_step(self, progress: float) -> None:
        """Called before every micro-batch with the training progress in [0, 1]."""

    def extra_metrics(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Validation metrics of the objective's own, from the backbone features ``[N, D]`` of the
        validation images and their labels ``[N]`` (self-supervised validation only)."""
        return {}


class Supervised(Objective):
    """Cross-entropy on the model's logits; batch = ``(images, superpixels, labels)``."""

    def __init__(self, model: nn.Module, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0,
                 mix_prob: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = SuperpixelMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mix_prob,
                                         label_smoothing=label_smoothing, num_classes=num_classes)
            self.train_loss: nn.Module = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.train_loss = LabelSmoothingCrossEntropy(label_smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()

    def no_weight_decay(self) -> set[str]:
        return _prefixed_no_weight_decay("model.", self.model)

    def forward(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images, sp, target = batch[0], batch[1], batch[-1]
        if self.training and self.mixup is not None:
            images, sp, soft = self.mixup(images, sp, target)
            logits = encode(self.model, images, sp)
            loss = self.train_loss(logits, soft)
        else:
            logits = encode(self.model, images, sp)
            loss = self.train_loss(logits, target) if self.training else F.cross_entropy(logits, target)
        return {"loss": loss, "logits": logits}


class Hierarchical(Objective):
    """H-CAST's objective for a model with one head per taxonomy level (``forward`` returns the
    logits fine -> coarse); batch = ``(images, superpixels, fine labels)``, every level's label
    read up the taxonomy's paths.

    Loss = the sum over levels of soft-target cross-entropy (label smoothing, and mixup / cutmix
    with one lambda for all levels) + ``tree_kl_weight`` x the tree-path KL: the log-softmax over
    all levels' logits concatenated against all levels' soft targets concatenated, normalised to
    sum to 1 (each level holds 1/L of the mass).
    """

    def __init__(self, model: nn.Module, paths: torch.Tensor, sizes: tuple[int, ...], mixup: float = 0.0,
                 cutmix: float = 0.0, mix_prob: float = 1.0, label_smoothing: float = 0.0,
                 tree_kl_weight: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("paths", torch.as_tensor(paths, dtype=torch.long), persistent=False)  # [n_fine, L]
        self.sizes = tuple(int(n) for n in sizes)
        self.label_smoothing, self.tree_kl_weight = label_smoothing, tree_kl_weight
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = SuperpixelMixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mix_prob,
                                         label_smoothing=label_smoothing, num_classes=self.sizes[0])
        self.soft_ce = SoftTargetCrossEntropy()

    def no_weight_decay(self) -> set[str]:
        return _prefixed_no_weight_decay("model.", self.model)

    def forward(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images, sp, target = batch[0], batch[1], batch[-1]
        labels = self.paths[target]  # [B, L]
        lam = 1.0
        if self.training and self.mixup is not None:
            images, sp, lam = self.mixup.mix(images, sp)
        logits = encode(self.model, images, sp)
        if not isinstance(logits, (tuple, list)) or len(logits) != len(self.sizes):
            raise ValueError(f"the model must return {len(self.sizes)} logits tensors (one per taxonomy level)")
        if not self.training:
            loss = sum(F.cross_entropy(lg, labels[:, t]) for t, lg in enumerate(logits))
            return {"loss": loss, "logits": logits}  # type: ignore[dict-item]
        soft = [mixup_target(labels[:, t], n, lam, self.label_smoothing) for t, n in enumerate(self.sizes)]
        loss = sum(self.soft_ce(lg, st) for lg, st in zip(logits, soft))
        if self.tree_kl_weight > 0:
            joint = torch.cat(list(logits), dim=1).log_softmax(dim=1)
            goal = torch.cat(soft, dim=1) / len(soft)
            loss = loss + self.tree_kl_weight * F.kl_div(joint, goal, reduction="batchmean")
        return {"loss": loss, "logits": logits}  # type: ignore[dict-item]


def _mlp(num_layers: int, in_dim: int, hidden: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo-v3 MLP: Linear-BN-ReLU blocks, a final Linear and (optionally) an affine-free BN."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden
        d_out = out_dim if i == num_layers - 1 else hidden
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(Objective):
    """MoCo-v3 around a headless backbone; batch = ``(x1, sp1, x2, sp2, labels)``."""

    def __init__(self, model: nn.Module, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2,
                 momentum: float = 0.99) -> None:
        super().__init__()
        width = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
        self.model = model  # the backbone we keep (query encoder)
        self.projector = _mlp(3, width, mlp_dim, dim)
        self.predictor = _mlp(2, dim, mlp_dim, dim, last_bn=False)
        self.momentum_model = copy.deepcopy(model)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_model.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad_(False)
        self.temperature = temperature
        self.base_momentum = momentum
        self.momentum = momentum

    def no_weight_decay(self) -> set[str]:
        return _prefixed_no_weight_decay("model.", self.model)

    def on_step(self, progress: float) -> None:
        self.set_momentum(progress)

    def set_momentum(self, progress: float) -> float:
        """Cosine schedule from the base momentum to 1 over training (``progress`` in [0, 1])."""
        self.momentum = 1.0 - 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) * (1.0 - self.base_momentum)
        return self.momentum

    @torch.no_grad()
    def update_momentum_encoder(self) -> None:
        m = self.momentum
        for online, target in ((self.model, self.momentum_model), (self.projector, self.momentum_projector)):
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.mul_(m).add_(p_o.detach(), alpha=1.0 - m)

    def _contrast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        with torch.no_grad():  # the keys need no gradient
            k = F.normalize(torch.cat(D.all_gather(F.normalize(k, dim=1))), dim=1)
        logits = q @ k.t() / self.temperature
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        x1, sp1, x2, sp2 = batch[:4]
        return {"loss": self.moco_loss(encode(self.model, x1, sp1), encode(self.model, x2, sp2), batch)}

    def moco_loss(self, z1: torch.Tensor, z2: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The MoCo-v3 loss from the backbone features of the two views (keys from the batch)."""
        x1, sp1, x2, sp2 = batch[:4]
        q1 = self.predictor(self.projector(z1))
        q2 = self.predictor(self.projector(z2))
        with torch.no_grad():
            if self.training:
                self.update_momentum_encoder()
            k1 = self.momentum_projector(encode(self.momentum_model, x1, sp1))
            k2 = self.momentum_projector(encode(self.momentum_model, x2, sp2))
        return self._contrast(q1, k2) + self._contrast(q2, k1)


def knn_top1(train_feats: torch.Tensor, train_labels: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
             num_classes: int, k: int = 20, t: float = 0.07) -> float:
    """Weighted k-NN classification accuracy on L2-normalised features (cosine similarity,
    neighbours voting with ``exp(sim / t)``)."""
    train_feats = F.normalize(train_feats, dim=1)
    feats = F.normalize(feats, dim=1)
    k = min(k, train_feats.shape[0])
    correct = 0
    for start in range(0, feats.shape[0], 256):
        sim = feats[start:start + 256] @ train_feats.t()
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[idx], (top / t).exp())
        correct += int((votes.argmax(1) == labels[start:start + 256]).sum())
    return correct / max(feats.shape[0], 1)

