"""Data pipeline pieces: per-view superpixels, per-sample seeding, resumable sampling, cutmix."""

import numpy as np
import torch

from cast.superpixels import SuperpixelSettings
from train.config import AugmentConfig
from train.data.build import SkipSampler, _EpochRandomSampler
from train.data.views import ViewDataset, eval_view, moco_views, supervised_train_view
from train.objectives import SuperpixelMixup

SP = SuperpixelSettings("seeds", 40, {"histogram_bins": 5, "num_iterations": 4})


class _Photos(torch.utils.data.Dataset):
    def __init__(self, photo):
        from PIL import Image

        self.img = Image.fromarray(photo)

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return self.img, i % 3


def test_views_compute_superpixels_on_the_augmented_image(photo):
    ds = ViewDataset(_Photos(photo), [supervised_train_view(64, AugmentConfig(), SP)], seed=1)
    x, sp, label = ds[0]
    assert x.shape == (3, 64, 64) and sp.shape == (64, 64) and sp.dtype == torch.long and label == 0
    assert int(sp.max()) + 1 == len(torch.unique(sp))
    # the superpixels follow the augmented view: recomputing them on the de-normalised view agrees
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    img = ((x * std[:, None, None] + mean[:, None, None]).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    again = SP(img)
    agree = (torch.from_numpy(again) == sp).float().mean()
    assert agree > 0.8


def test_same_sample_same_augmentation_any_order(photo):
    views = moco_views(64, AugmentConfig(), SP)
    a = ViewDataset(_Photos(photo), views, seed=3)
    b = ViewDataset(_Photos(photo), views, seed=3)
    first = a[4]
    b[2], b[5]  # other samples drawn in between
    second = b[4]
    assert all(torch.equal(u, v) for u, v in zip(first[:4], second[:4]))
    assert not torch.equal(first[0], first[2]), "the two MoCo views differ"
    a.set_epoch(1)
    assert not torch.equal(a[4][0], first[0]), "a new epoch draws new augmentations"


def test_eval_view_is_a_plain_resize(photo):
    x, sp, _ = ViewDataset(_Photos(photo), [eval_view(32, SP)])[0]
    assert x.shape == (3, 32, 32) and sp.shape == (32, 32)


def test_skip_sampler_resumes_mid_epoch():
    base = _EpochRandomSampler(list(range(20)), seed=5)
    s = SkipSampler(base)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2)
    s.skip = 7
    assert list(s) == full[7:]
    assert list(s) == full, "the skip applies to one pass only"


def test_cutmix_pastes_superpixels_with_distinct_ids():
    torch.manual_seed(0)
    np.random.seed(0)
    mix = SuperpixelMixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=3, label_smoothing=0.0)
    x = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)])
    sp = torch.stack([torch.zeros(32, 32, dtype=torch.long), torch.arange(32).repeat(32, 1) // 8])
    y = torch.tensor([0, 2])
    x2, sp2, soft = mix(x.clone(), sp.clone(), y)
    pasted = x2[0, 0] == 1.0  # where image 0 received image 1's pixels
    assert pasted.any() and not pasted.all()
    # image 0's own region keeps one id; the pasted box carries image 1's ids, renumbered apart
    assert set(sp2[0][~pasted].unique().tolist()).isdisjoint(sp2[0][pasted].unique().tolist())
    assert int(sp2[0].max()) + 1 == len(sp2[0].unique())
    lam = 1.0 - pasted.float().mean()
    assert torch.allclose(soft[0], torch.tensor([lam, 0.0, 1 - lam]), atol=1e-6)
