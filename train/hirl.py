"""HIRL on top of MoCo-v3: tree-structured prototypes from hierarchical k-means of the training set's
embeddings, one MLP head per level, and semantic-path discrimination (HIRL, Xu et al., 2022; see docs/architecture.md).

Every ``recluster_every`` epochs after ``warmup_epochs``, the engine embeds every training image
(no augmentation), gathers the embeddings from all ranks and calls :meth:`HIRL.cluster`: level 1
clusters the embeddings, level l clusters level l-1's centroids (weighted by cluster sizes), so the
prototypes form a tree and each image gets a path ``(c_1, ..., c_L)``. The path loss, for each
view's backbone feature ``z``::

    log p(path | z) = sum_l log sigmoid(cos(head_l(z), prototype_l[c_l]) / temperature)
    loss = -log p(true path) - mean_k log(1 - p(negative path k))

Negative paths are the tree paths of finest prototypes drawn at random among the others; levels
where a negative path shares the image's prototype are filtered out of its score (only true
negatives count; the shared coarse concept of a sibling is not a negative). Prototypes, paths and
representative images are buffers, so they are saved in checkpoints and a resumed run continues
with the same ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cast.clustering import kmeans_tree
from cast.concepts import ConceptHierarchy

from .metrics import purity
from .objectives import Embedder, MoCoV3, encode

__all__ = ["HIRL"]


class HIRL(MoCoV3):
    """MoCo-v3 + semantic-path discrimination; batch = ``(x1, sp1, x2, sp2, labels, indices)``.

    Args:
        num_train: training-set size (one concept path per image).
        num_prototypes: prototypes per level, fine to coarse.
        hidden: hidden width of the per-level heads (0 = backbone width).
        path_temperature, num_negatives, weight: see :class:`train.config.HirlConfig` (``temperature``
            there); the remaining keyword arguments go to :class:`MoCoV3`.
        representatives: training images remembered per prototype (for thumbnails at export).
        warmup_epochs, recluster_every: when :meth:`on_epoch_start` clusters (see :meth:`due`).
        seed: clustering seed (offset by the epoch).
    """

    def __init__(self, model: nn.Module, num_train: int, num_prototypes: list[int], hidden: int = 0,
                 path_temperature: float = 0.2, num_negatives: int = 16, weight: float = 1.0, representatives: int = 4,
                 warmup_epochs: int = 1, recluster_every: int = 1, seed: int = 0, **moco_kwargs) -> None:
        super().__init__(model, **moco_kwargs)
        self.warmup_epochs, self.recluster_every, self.seed = warmup_epochs, recluster_every, seed
        width = int(getattr(model, "num_features", getattr(model, "embed_dim", 0)))
        self.concepts = ConceptHierarchy(width, num_prototypes, hidden, path_temperature)
        self.num_negatives = num_negatives
        self.weight = weight
        levels = len(num_prototypes)
        self.register_buffer("paths", torch.full((num_train, levels), -1, dtype=torch.long))
        self.register_buffer("representatives", torch.full((levels, max(num_prototypes), max(representatives, 1)), -1,
                                                           dtype=torch.long))
        self.register_buffer("clustered_epoch", torch.tensor(-1, dtype=torch.long))

    @property
    def active(self) -> bool:
        return int(self.clustered_epoch) >= 0

    def due(self, epoch: int) -> bool:
        """Whether the prototypes should be (re)computed at the start of ``epoch``."""
        warmup, every = self.warmup_epochs, self.recluster_every
        return epoch >= warmup and (epoch - warmup) % every == 0 and int(self.clustered_epoch) != epoch

    def on_epoch_start(self, epoch: int, embed: Embedder) -> dict[str, float | str] | None:
        """Re-cluster when due: embed every training image (all ranks), cluster on rank 0's copy of
        the gathered features, share the result."""
        if not self.due(epoch):
            return None
        features, indices = embed()
        stats = self.cluster(features, indices, epoch, seed=self.seed)
        self.broadcast()
        return {"event": "hirl_cluster", "epoch": epoch, "images": int(indices.unique().numel()), **stats}

    def extra_metrics(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Purity of the nearest prototype per level against the validation labels."""
        if not self.active:
            return {}
        nearest = self.concepts.nearest(features.to(self.paths.device)).cpu()
        return {f"hirl_purity_l{lv + 1}": purity(nearest[:, lv], labels) for lv in range(nearest.shape[1])}

    @torch.no_grad()
    def cluster(self, features: torch.Tensor, indices: torch.Tensor, epoch: int, seed: int = 0) -> dict[str, float]:
        """New prototypes and paths from the features ``[N, D]`` of training images ``indices`` ``[N]``."""
        device = self.paths.device
        first_row: dict[int, int] = {}  # DistributedSampler pads the last shard with repeated images
        for row, i in enumerate(indices.long().cpu().tolist()):
            first_row.setdefault(i, row)
        features = features.float().cpu()[torch.tensor(list(first_row.values()))]
        indices = torch.tensor(list(first_row.keys()), dtype=torch.long)
        protos, parents, paths = kmeans_tree(features, self.concepts.num_prototypes, seed=seed + epoch)
        self.paths.fill_(-1)
        self.paths[indices.to(device)] = paths.to(device)
        x = F.normalize(features, dim=1)
        self.representatives.fill_(-1)
        r = self.representatives.shape[2]
        for lv, (p, par) in enumerate(zip(protos, parents)):
            getattr(self.concepts, f"prototypes_{lv}").copy_(p)
            getattr(self.concepts, f"parents_{lv}").copy_(par)
            sim = x @ p.t()  # [N, M]
            for k in range(p.shape[0]):
                members = (paths[:, lv] == k).nonzero().flatten()
                if members.numel():
                    best = members[sim[members, k].argsort(descending=True)[:r]]
                    self.representatives[lv, k, : best.numel()] = indices[best].to(device)
        self.clustered_epoch.fill_(epoch)
        used = [int(paths[:, lv].unique().numel()) for lv in range(paths.shape[1])]
        return {f"prototypes_used_l{lv + 1}": float(u) for lv, u in enumerate(used)}

    def broadcast(self) -> None:
        """Make every rank hold rank 0's prototypes and paths."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in [self.paths, self.representatives, self.clustered_epoch, *self.concepts.buffers()]:
                dist.broadcast(t, src=0)

    def sample_negatives(self, paths: torch.Tensor) -> torch.Tensor:
        """``[B, K, L]`` negative paths for true paths ``[B, L]``: the tree paths of finest
        prototypes drawn uniformly among those other than the image's own."""
        leaf_paths = self.concepts.leaf_paths()  # [M_1, L]
        allowed = (torch.arange(leaf_paths.shape[0], device=paths.device)[None] != paths[:, :1]).float()
        neg = torch.multinomial(allowed, self.num_negatives, replacement=True)  # [B, K] finest ids
        return leaf_paths[neg]

    def path_loss(self, z: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        paths = self.paths[indices]
        # images without a path yet (before the first clustering) weigh 0: no host sync, and every
        # head stays in the graph (DDP needs all parameters used in every step)
        weight = (paths[:, 0] >= 0).float()
        paths = paths.clamp(min=0)
        tau = self.concepts.temperature
        scores = [s / tau for s in self.concepts.scores(z)]  # [B, M_l] per level
        pos = sum(F.logsigmoid(s.gather(1, paths[:, lv:lv + 1]).squeeze(1)) for lv, s in enumerate(scores))
        neg_paths = self.sample_negatives(paths)  # [B, K, L]
        # true negatives only: a level where the negative path shares the image's prototype is no
        # evidence against it, so it is left out of that path's score
        differs = (neg_paths != paths[:, None, :]).float()
        neg_logp = sum(differs[..., lv] * F.logsigmoid(s.gather(1, neg_paths[..., lv])) for lv, s in enumerate(scores))
        neg_loss = -torch.log1p(-neg_logp.exp().clamp(max=1 - 1e-6))
        per_image = -pos + neg_loss.mean(1)
        return (weight * per_image).sum() / weight.sum().clamp(min=1.0)

    def forward(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        x1, sp1, x2, sp2 = batch[:4]
        indices = batch[5]
        z1, z2 = encode(self.model, x1, sp1), encode(self.model, x2, sp2)
        moco = self.moco_loss(z1, z2, batch)
        hirl = 0.5 * (self.path_loss(z1, indices) + self.path_loss(z2, indices))
        return {"loss": moco + self.weight * hirl, "moco": moco.detach(), "hirl": hirl.detach()}
