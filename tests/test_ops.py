import pytest
import torch

from cast.ops import farthest_point_sample, segment_mean
from tests.helpers import fps_reference


@pytest.mark.parametrize("seed", range(6))
def test_fps_matches_brute_force_on_random_points(seed):
    g = torch.Generator().manual_seed(seed)
    B, N, C = 3, int(torch.randint(2, 60, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
    points = torch.randn(B, N, C, generator=g, dtype=torch.float64) * 3
    k = min(N, 12)
    assert farthest_point_sample(points, k).tolist() == fps_reference(points.tolist(), k)


@pytest.mark.parametrize("seed", range(6))
def test_fps_ties_go_to_lowest_index(seed):
    # integer coordinates on a small grid: many exactly equal distances and duplicate points
    g = torch.Generator().manual_seed(seed)
    points = torch.randint(0, 3, (4, 30, 2), generator=g).double()
    got = farthest_point_sample(points, 15)
    assert got.tolist() == fps_reference(points.tolist(), 15)
    assert (got[:, 0] == 0).all()


def test_fps_tie_example_by_hand():
    # point 0 at origin; points 1 and 2 equally far; 3 nearer. Lowest index wins the tie.
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.0]]], dtype=torch.float64)
    assert farthest_point_sample(pts, 3).tolist() == [[0, 1, 2]]


def test_fps_accumulates_channels_in_order():
    # distances that differ only in the last bits: the sequential channel sum decides
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 1, 64, generator=g, dtype=torch.float64)
    pts = torch.cat([base * 0, base, base.flip(-1), base.roll(1, -1), base.roll(5, -1)], dim=1)
    assert farthest_point_sample(pts, 5).tolist() == fps_reference(pts.tolist(), 5)


def test_graph_pooling_sampling_with_padding_matches_reference(tiny_model):
    """Padded tokens are filled with the valid mean, which is prepended as the start point."""
    pool = tiny_model.pool1.pool_block
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, tiny_model.embed_dim, generator=g)
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[0, [3, 7, 8]] = True
    padding[1, 20:] = True
    got = pool.sample_centroids(x, padding)
    for b in range(2):
        valid = ~padding[b]
        mean = x[b][valid].sum(0) / valid.sum()
        filled = torch.where(valid[:, None], x[b], mean)
        cloud = torch.cat([mean[None], filled]).double()
        ref = fps_reference([cloud.tolist()], pool.num_clusters + 1)[0]
        assert got[b].tolist() == [i - 1 for i in ref[1:]]
        assert not padding[b][got[b]].any(), "a padded token was chosen while valid ones remained"


def test_fps_batch_has_no_python_loop_over_batch():
    # same answer whether the batch is processed together or one element at a time
    g = torch.Generator().manual_seed(9)
    pts = torch.randn(5, 40, 8, generator=g)
    together = farthest_point_sample(pts, 10)
    alone = torch.cat([farthest_point_sample(pts[i : i + 1], 10) for i in range(5)])
    assert torch.equal(together, alone)


def test_segment_mean_and_empty_ids():
    x = torch.arange(12, dtype=torch.float32).view(1, 2, 3, 2)
    labels = torch.tensor([[[0, 0, 2], [2, 2, 0]]])
    out = segment_mean(x, labels, 4)
    assert out.shape == (1, 4, 2)
    assert torch.allclose(out[0, 0], x[0].reshape(-1, 2)[[0, 1, 5]].mean(0))
    assert torch.equal(out[0, 1], torch.zeros(2)) and torch.equal(out[0, 3], torch.zeros(2))
