"""PartShapes: a procedurally rendered, part-annotated synthetic dataset for CPU-scale experiments.

Every image shows ONE object built from 3-6 parts. The part *shapes* (discs, bars, rectangles, triangles,
rings, half-discs, ellipses) are shared between classes; what tells the classes apart is WHICH parts an
object has and HOW they are arranged, so a model has to find the parts to recognise the object. Part
colours are random per sample (distinct within an object, never tied to a class), so colour alone does
not identify anything.

Classes and their parts (``class/role`` is a global part id; repeated parts share the role's id):

===============  ==============================================================================
class            parts (drawing order; ``xN`` = N instances sharing one part id)
===============  ==============================================================================
car              cabin (trapezoid on top), body (wide rectangle), wheel x2 (discs on the bottom edge)
house            wall (square-ish rectangle), roof (triangle on top), door (tall rectangle), window
snowman          base, middle, head (three stacked discs, shrinking upwards), hat (brim + crown)
dumbbell         bar (long thin bar), weight x2 (rings at the bar ends), collar x2 (small bars)
tree             trunk (vertical bar), canopy x2-3 (overlapping discs on top)
rocket           fin x2 (triangles at the tail), body (vertical bar), nose (triangle), window (disc)
mushroom         stem (trapezoid), cap (half-disc dome), spot x2-3 (small discs on the cap)
traffic_light    pole (bar below), housing (tall rectangle), lamp x3 (discs in a column)
flower           stem (thin bar), leaf x1-2 (ellipses on the stem), petals (5-8 ellipses), centre (disc)
table            top (wide flat bar), leg x2 (vertical bars), stretcher (bar between the legs)
===============  ==============================================================================

Each sample also has: a textured background (gradients, stripes, checkerboards, smooth or fine blotch
noise in random colours, often two layered), 2-5 small clutter shapes behind the object (not object),
random object scale (longest side 60-90 % of the image before rotation), position, mirror, rotation (+-30 deg), global
lighting and pixel noise, and in ~30 % of the images an occluder drawn in front of the object. Occluded
pixels are background (0) in both masks, clutter and occluders are never part of the object.

Everything is a deterministic function of ``(split, seed, index, image_size)``: the random stream is
seeded with ``np.random.default_rng([stream, seed, split_code, index])``, and all geometry is drawn in
resolution-independent units, so the same index shows the same scene at every ``image_size`` (only the
per-pixel noise differs). Image and masks are rasterised from the same polygons with anti-aliasing off,
so masks are exact integer labels.

Quick use::

    from train.data.partshapes import PartShapes, render
    s = render(0, "train", image_size=128)      # Sample(image, label, object_mask, part_mask)
    ds = PartShapes("train", size=10000, transform=my_transform)  # ImageFolder-like: (image, label)
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

__all__ = [
    "CLASSES",
    "COARSE_GROUPS",
    "KINDS",
    "partshapes_taxonomy",
    "PARTS",
    "PART_CLASS",
    "SPLIT_SEEDS",
    "Part",
    "Sample",
    "object_parts",
    "label_of",
    "labels",
    "render",
    "PartShapes",
    "export",
]

# A contour is an [N, 2] float array of (x, y) points, y pointing down. A shape is a list of contours filled
# together by one cv2.fillPoly call, which uses the even-odd rule: a second contour inside the first cuts a hole.
Contour = np.ndarray
Shape = list[Contour]


@dataclass(frozen=True)
class Part:
    """One part instance of an object in canonical object coordinates."""

    role: str  # role name within the class, e.g. "wheel"; the global part id is PARTS.index(f"{class}/{role}")
    shapes: tuple[Shape, ...]  # filled one after another, so overlapping shapes (petals) union instead of cancelling


@dataclass
class Sample:
    """One rendered image with its class label and exact masks."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    label: int  # class index into CLASSES
    object_mask: np.ndarray  # [H, W] uint8, 1 = visible object pixel, 0 = background / clutter / occluder
    part_mask: np.ndarray  # [H, W] uint8, global part id (0 = not an object part)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry primitives (canonical object units: an object is roughly 2 units across)
# ----------------------------------------------------------------------------------------------------------------------

_ARC_POINTS = 48  # enough that polygonised circles stay within ~0.5 px of true circles up to 224 px images


def _rect(cx: float, cy: float, w: float, h: float) -> Contour:
    return np.array([[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]])


def _poly(*points: tuple[float, float]) -> Contour:
    return np.array(points, dtype=np.float64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, start: float = 0.0, end: float = 360.0,
             n: int = _ARC_POINTS) -> Contour:
    """Ellipse (or an arc of it, closed along the chord), rotated by ``angle`` degrees."""
    ct, st = _unit_arc(float(start), float(end), int(n))
    x, y = rx * ct, ry * st
    a = np.deg2rad(angle)
    ca, sa = np.cos(a), np.sin(a)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


@lru_cache(maxsize=256)
def _unit_arc(start: float, end: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    # cached because circles with the default arc dominate the shapes; the arrays are never written to
    t = np.deg2rad(np.linspace(start, end, n, endpoint=(end - start) < 360))
    return np.cos(t), np.sin(t)


def _disc(cx: float, cy: float, r: float) -> Contour:
    return _ellipse(cx, cy, r, r)


def _ring(cx: float, cy: float, r_out: float, r_in: float) -> Shape:
    return [_disc(cx, cy, r_out), _disc(cx, cy, r_in)]  # even-odd fill turns the inner disc into the hole


def _rotate_about(c: Contour, px: float, py: float, angle: float) -> Contour:
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (c - (px, py)) @ rot.T + (px, py)


def _p(role: str, *shapes: Shape | Contour) -> Part:
    """A part from contours (single-contour shapes) and/or multi-contour shapes."""
    return Part(role, tuple(s if isinstance(s, list) else [s] for s in shapes))


# ----------------------------------------------------------------------------------------------------------------------
# Class definitions. Each builder returns the part instances in drawing order (later parts cover earlier ones);
# shape proportions are jittered per sample so that no single size or aspect ratio identifies a class.
# ----------------------------------------------------------------------------------------------------------------------


def _car(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    w, h = u(1.8, 2.4), u(0.5, 0.7)
    cb = u(0.5, 0.65) * w
    ct, ch, cx = cb * u(0.55, 0.8), u(0.35, 0.5), u(-0.15, 0.15) * w
    y0 = -h / 2 + 0.02  # cabin reaches a little into the body so no background seam shows between them
    cabin = _poly((cx - cb / 2, y0), (cx - ct / 2, -h / 2 - ch), (cx + ct / 2, -h / 2 - ch), (cx + cb / 2, y0))
    r = u(0.27, 0.35)
    wx = w / 2 - r - u(0.05, 0.2)
    return [_p("cabin", cabin), _p("body", _rect(0, 0, w, h)), _p("wheel", _disc(-wx, h / 2, r)),
            _p("wheel", _disc(wx, h / 2, r))]


def _house(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    w, h = u(1.1, 1.5), u(0.9, 1.2)
    ov, rh = u(0.05, 0.2), u(0.5, 0.8)
    roof = _poly((-w / 2 - ov, -h / 2 + 0.01), (u(-0.1, 0.1) * w, -h / 2 - rh), (w / 2 + ov, -h / 2 + 0.01))
    side = 1 if rng.random() < 0.5 else -1  # door and window on opposite halves of the wall
    dw, dh = u(0.22, 0.32), u(0.45, 0.6) * h
    door = _rect(side * u(0.1, 0.25) * w, h / 2 - dh / 2, dw, dh)
    ws = u(0.2, 0.28)
    window = _rect(-side * u(0.18, 0.28) * w, -h / 2 + u(0.15, 0.25) * h + ws / 2, ws, ws)
    return [_p("wall", _rect(0, 0, w, h)), _p("roof", roof), _p("door", door), _p("window", window)]


def _snowman(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    r1 = u(0.5, 0.6)
    r2 = r1 * u(0.68, 0.8)
    r3 = r2 * u(0.65, 0.8)
    x2 = u(-0.05, 0.05)
    x3 = x2 + u(-0.05, 0.05)
    y2 = -(r1 + r2) * u(0.78, 0.88)
    y3 = y2 - (r2 + r3) * u(0.78, 0.88)
    cw, chh = r3 * u(1.0, 1.3), r3 * u(0.8, 1.1)
    bw, bh = cw * u(1.4, 1.7), r3 * u(0.15, 0.22)
    by = y3 - r3 * u(0.6, 0.8)
    tilt = u(-15, 15)
    brim = _rotate_about(_rect(x3, by, bw, bh), x3, by, tilt)
    crown = _rotate_about(_rect(x3, by - bh / 2 - chh / 2 + 0.01, cw, chh), x3, by, tilt)
    return [_p("base", _disc(0, 0, r1)), _p("middle", _disc(x2, y2, r2)), _p("head", _disc(x3, y3, r3)),
            _p("hat", brim, crown)]


def _dumbbell(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    length, bt = u(2.0, 2.4), u(0.12, 0.18)
    ro = u(0.38, 0.5)
    ri = ro * u(0.3, 0.45)
    wx = length / 2 - ro * u(0.6, 0.9)  # bar ends inside the weights, so it shows through their holes
    cw, chh = u(0.1, 0.14), u(0.28, 0.38)
    cx = wx - ro - cw / 2 + 0.02
    return [_p("bar", _rect(0, 0, length, bt)), _p("weight", _ring(-wx, 0, ro, ri)), _p("weight", _ring(wx, 0, ro, ri)),
            _p("collar", _rect(-cx, 0, cw, chh)), _p("collar", _rect(cx, 0, cw, chh))]


def _tree(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    tw, th = u(0.2, 0.3), u(0.8, 1.1)
    big = u(0.55, 0.7)
    cy = -big * u(0.5, 0.7)
    parts = [_p("trunk", _rect(0, th / 2, tw, th)), _p("canopy", _disc(0, cy, big))]
    n_extra = int(rng.integers(1, 3))
    # extra canopy blobs sit on the upper rim of the main one: left, right or top, never below (that would look like fruit)
    angles = [u(-165, -120), u(-60, -15)] if n_extra == 2 else [u(-160, -20)]
    for a in angles:
        d = big * u(0.55, 0.75)
        parts.append(_p("canopy", _disc(d * np.cos(np.deg2rad(a)), cy + d * np.sin(np.deg2rad(a)), big * u(0.55, 0.75))))
    return parts


def _rocket(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    bw, bh = u(0.42, 0.55), u(1.2, 1.6)
    nh = u(0.4, 0.6)
    fh, fo, drop = u(0.4, 0.55), u(0.25, 0.4), u(0.0, 0.15)
    x0 = bw / 2 - 0.03  # fins start inside the body to attach without a gap
    fin_l = _poly((-x0, bh / 2 - fh), (-x0 - fo - 0.03, bh / 2 + drop), (-x0, bh / 2))
    fin_r = _poly((x0, bh / 2 - fh), (x0 + fo + 0.03, bh / 2 + drop), (x0, bh / 2))
    nose = _poly((-bw / 2, -bh / 2 + 0.01), (0, -bh / 2 - nh), (bw / 2, -bh / 2 + 0.01))
    window = _disc(0, -bh / 2 + u(0.28, 0.38) * bh, u(0.12, 0.16))
    return [_p("fin", fin_l), _p("fin", fin_r), _p("body", _rect(0, 0, bw, bh)), _p("nose", nose), _p("window", window)]


def _mushroom(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    r = u(0.8, 1.0)
    ry = r * u(0.6, 0.9)
    st = u(0.3, 0.42) * r
    sb, sh = st * u(1.0, 1.3), u(0.6, 0.9)
    stem = _poly((-st / 2, -0.05), (st / 2, -0.05), (sb / 2, sh), (-sb / 2, sh))
    parts = [_p("stem", stem), _p("cap", _ellipse(0, 0, r, ry, start=180, end=360))]
    spots: list[tuple[float, float, float]] = []
    n_spots = int(rng.integers(2, 4))
    for _ in range(24):  # rejection sampling keeps spots apart; bounded so it can never loop forever
        if len(spots) == n_spots:
            break
        a, f, sr = np.deg2rad(u(215, 325)), u(0.3, 0.7), u(0.1, 0.15) * r
        x, y = r * f * np.cos(a), min(ry * f * np.sin(a), -sr * 1.2)
        if all(np.hypot(x - px, y - py) > sr + pr + 0.04 for px, py, pr in spots):
            spots.append((x, y, sr))
    while len(spots) < 2:  # practically unreachable; guarantees the 3-part minimum
        spots.append(((len(spots) - 0.5) * 0.5 * r, -0.45 * ry, 0.1 * r))
    parts += [_p("spot", _disc(x, y, sr)) for x, y, sr in spots]
    return parts


def _traffic_light(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    hw, hh = u(0.5, 0.62), u(1.3, 1.55)
    lr = min(hw * u(0.3, 0.38), hh * 0.12)
    gap = hh * u(0.28, 0.31)
    pw, pl = u(0.1, 0.15), u(0.5, 0.8)
    parts = [_p("pole", _rect(0, hh / 2 + pl / 2 - 0.02, pw, pl)), _p("housing", _rect(0, 0, hw, hh))]
    return parts + [_p("lamp", _disc(0, k * gap, lr)) for k in (-1, 0, 1)]


def _flower(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    cr = u(0.18, 0.24)
    n_pet = int(rng.integers(5, 9))
    pl = u(0.3, 0.4)
    pw = pl * u(0.4, 0.6)
    a0 = u(0, 360)
    d = cr + pl * 0.75  # petals start under the centre disc so they read as attached
    petals = []
    for k in range(n_pet):
        a = a0 + k * 360 / n_pet
        petals.append(_ellipse(d * np.cos(np.deg2rad(a)), d * np.sin(np.deg2rad(a)), pl, pw, angle=a))
    sw, sl = u(0.08, 0.11), u(1.3, 1.7)  # long enough to show clearly below the petals
    parts = [_p("stem", _rect(0, sl / 2, sw, sl))]
    sides = [-1, 1] if rng.random() < 0.5 else [(-1 if rng.random() < 0.5 else 1)]
    for side in sides:
        lx = u(0.22, 0.3)
        ang = 210.0 if side < 0 else 330.0  # leaves point outwards and upwards
        y = sl * u(0.6, 0.8)
        ca, sa = np.cos(np.deg2rad(ang)), np.sin(np.deg2rad(ang))
        parts.append(_p("leaf", _ellipse(0.9 * lx * ca, y + 0.9 * lx * sa, lx, lx * u(0.35, 0.45), angle=ang)))
    return parts + [_p("petals", *petals), _p("centre", _disc(0, 0, cr))]


def _table(rng: np.random.Generator) -> list[Part]:
    u = rng.uniform
    tw, tt = u(1.5, 2.0), u(0.16, 0.24)
    lh, lw, inset = u(0.8, 1.1), u(0.13, 0.18), u(0.05, 0.2)
    lx = tw / 2 - inset - lw / 2
    ly = tt / 2 + lh / 2 - 0.02
    sy, sh = tt / 2 + lh * u(0.5, 0.7), u(0.09, 0.12)
    return [_p("top", _rect(0, 0, tw, tt)), _p("leg", _rect(-lx, ly, lw, lh)), _p("leg", _rect(lx, ly, lw, lh)),
            _p("stretcher", _rect(0, sy, 2 * lx, sh))]


_CLASS_DEFS: tuple[tuple[str, tuple[str, ...], Callable[[np.random.Generator], list[Part]]], ...] = (
    ("car", ("body", "cabin", "wheel"), _car),
    ("house", ("wall", "roof", "door", "window"), _house),
    ("snowman", ("base", "middle", "head", "hat"), _snowman),
    ("dumbbell", ("bar", "weight", "collar"), _dumbbell),
    ("tree", ("trunk", "canopy"), _tree),
    ("rocket", ("body", "nose", "fin", "window"), _rocket),
    ("mushroom", ("cap", "stem", "spot"), _mushroom),
    ("traffic_light", ("housing", "lamp", "pole"), _traffic_light),
    ("flower", ("petals", "centre", "stem", "leaf"), _flower),
    ("table", ("top", "leg", "stretcher"), _table),
)

CLASSES: tuple[str, ...] = tuple(name for name, _, _ in _CLASS_DEFS)
PARTS: tuple[str, ...] = ("background",) + tuple(f"{name}/{role}" for name, roles, _ in _CLASS_DEFS for role in roles)
PART_CLASS: tuple[int, ...] = (-1,) + tuple(c for c, (_, roles, _) in enumerate(_CLASS_DEFS) for _ in roles)
_PART_ID: dict[str, int] = {name: k for k, name in enumerate(PARTS)}
# A coarse grouping of the classes (for evaluating coarse semantic levels; fixed before any
# evaluation): what the object is, in everyday terms.
COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "plants": ("tree", "mushroom", "flower"),
    "vehicles and street": ("car", "rocket", "traffic_light"),
    "home and figures": ("house", "table", "snowman", "dumbbell"),
}
assert sorted(c for g in COARSE_GROUPS.values() for c in g) == sorted(CLASSES)
# A third, coarsest level over the groups (the 3-level taxonomy): living things and made things.
KINDS: dict[str, tuple[str, ...]] = {"living": ("plants",), "made": ("vehicles and street", "home and figures")}


def partshapes_taxonomy(levels: int = 2) -> Any:
    """PartShapes' taxonomy (a :class:`cast.Taxonomy`): the 10 classes -> the 3 ``COARSE_GROUPS``
    (2 levels), and -> the 2 ``KINDS`` above them (3 levels)."""
    from cast.taxonomy import Taxonomy

    if levels not in (2, 3):
        raise ValueError(f"PartShapes' taxonomy has 2 or 3 levels, not {levels}")
    groups = tuple(COARSE_GROUPS)
    group_of = [next(g for g, members in enumerate(COARSE_GROUPS.values()) if c in members) for c in CLASSES]
    names, classes, parents = ["class", "group"], [CLASSES, groups], [tuple(group_of)]
    if levels == 3:
        kinds = tuple(KINDS)
        names.append("kind")
        classes.append(kinds)
        parents.append(tuple(next(k for k, members in enumerate(KINDS.values()) if g in members) for g in groups))
    return Taxonomy(tuple(names), tuple(classes), tuple(parents))
assert len(PARTS) < 256, "part ids must fit the uint8 part mask"

SPLIT_SEEDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# The split code goes into the seed next to the seed itself, so even an explicit identical seed gives disjoint splits.
_SPLIT_CODES: dict[str, int] = {"train": 11, "val": 22, "test": 33}
# Stream tags keep the scene and the label permutation streams apart. Every entropy list has the same length and
# every entry is < 2**32: SeedSequence pads short entropy with zeros and splits big ints into words, so
# variable-length lists could collide ([a, b] and [a, b, 0] give the same generator).
_SCENE_STREAM, _LABEL_STREAM, _PIXEL_STREAM = 1, 2, 3


def object_parts(label: int, rng: np.random.Generator) -> list[Part]:
    """The part instances (canonical coordinates, drawing order) of one random object of class ``label``."""
    return _CLASS_DEFS[label][2](rng)


# ----------------------------------------------------------------------------------------------------------------------
# Labels: balanced blocks. Each run of len(CLASSES) consecutive indices holds every class once, in a random order,
# so labels are cheap to compute (no rendering), exactly balanced over any prefix of whole blocks, and not periodic.
# ----------------------------------------------------------------------------------------------------------------------


def _resolve(split: str, seed: int | None) -> tuple[int, int]:
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    seed = SPLIT_SEEDS[split] if seed is None else int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return seed, _SPLIT_CODES[split]


def _check_index(index: int) -> int:
    index = int(index)
    if not 0 <= index < 2**32:
        raise IndexError(f"index must be in [0, 2**32), got {index}")
    return index


@lru_cache(maxsize=4096)
def _block_perm(seed: int, code: int, block: int) -> tuple[int, ...]:
    rng = np.random.default_rng([_LABEL_STREAM, seed, code, block])
    return tuple(int(v) for v in rng.permutation(len(CLASSES)))


def label_of(index: int, split: str = "train", seed: int | None = None) -> int:
    """The class of sample ``index`` without rendering it."""
    seed, code = _resolve(split, seed)
    index = _check_index(index)
    return _block_perm(seed, code, index // len(CLASSES))[index % len(CLASSES)]


def labels(n: int, split: str = "train", seed: int | None = None) -> list[int]:
    """Classes of samples ``0..n-1`` (the ``targets`` of a dataset of size ``n``)."""
    seed, code = _resolve(split, seed)
    c = len(CLASSES)
    out: list[int] = []
    for block in range((n + c - 1) // c):
        out.extend(np.random.default_rng([_LABEL_STREAM, seed, code, block]).permutation(c).tolist())
    return out[:n]


# ----------------------------------------------------------------------------------------------------------------------
# Textures and colours
# ----------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1] units (so textures look the same at every resolution)."""
    v = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    x, y = np.broadcast_to(v[None, :], (size, size)), np.broadcast_to(v[:, None], (size, size))
    x.flags.writeable = False  # shared between calls via the cache
    return x, y


def _texture_field(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """A [size, size] float32 field in [0, 1]: 0 gradient, 1 stripes, 2 checkerboard, 3 blotches (smooth or fine noise)."""
    x, y = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
    if kind == 0:
        d = ca * x + sa * y
        lo, hi = float(d.min()), float(d.max())
        return (d - lo) / max(hi - lo, 1e-6)
    if kind == 1:
        freq, phase, hard = rng.uniform(3, 12), rng.uniform(0, 2 * np.pi), rng.random() < 0.5
        t = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * freq) * (ca * x + sa * y) + np.float32(phase))
        return (t > 0.5).astype(np.float32) if hard else t
    if kind == 2:
        cell = np.float32(rng.uniform(0.06, 0.2))
        u, v = ca * x + sa * y, -sa * x + ca * y
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    k = int(rng.integers(3, 25))
    coarse = rng.random((k, k), dtype=np.float32)  # drawn at a size-independent resolution, then upsampled
    t = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(t, 0.0, 1.0)


def _random_rgb(rng: np.random.Generator, s_range: tuple[float, float] = (0.0, 1.0),
                v_range: tuple[float, float] = (0.15, 1.0)) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(*s_range), rng.uniform(*v_range))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


_BG_LEVELS = 64  # texture fields are quantised to this many levels per layer; the pixel noise dithers the banding
_BG_LUT_SIZE = _BG_LEVELS * _BG_LEVELS


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Random one- or two-layer texture, as an index map into a colour table.

    Returns ``(index [size, size] uint16, table [_BG_LUT_SIZE, 3] float32, key colours)``. Mixing colours through a
    small table instead of per-pixel float blends is what keeps rendering fast; the key colours are returned so the
    object colours can be kept away from them.
    """
    kinds = rng.permutation(4)
    c1, c2 = _random_rgb(rng), _random_rgb(rng)
    q1 = (_texture_field(rng, size, int(kinds[0])) * (_BG_LEVELS - 1) + 0.5).astype(np.uint16)
    levels = np.linspace(0, 1, _BG_LEVELS, dtype=np.float32)
    base = c1 + levels[:, None] * (c2 - c1)  # [L, 3]: first layer
    colours = [c1, c2]
    if rng.random() < 0.6:
        c3, alpha = _random_rgb(rng), np.float32(rng.uniform(0.2, 0.6))
        q2 = (_texture_field(rng, size, int(kinds[1])) * (_BG_LEVELS - 1) + 0.5).astype(np.uint16)
        colours.append(c3)
    else:
        c3, alpha, q2 = c1, np.float32(0.0), np.zeros_like(q1)
    # table[i, j] = first-layer colour i blended towards c3 by the second layer's level j
    table = base[:, None, :] + (alpha * levels)[None, :, None] * (c3 - base[:, None, :])
    return q1 * _BG_LEVELS + q2, table.reshape(_BG_LUT_SIZE, 3).astype(np.float32), colours


def _part_colours(rng: np.random.Generator, n: int, avoid: list[np.ndarray]) -> list[np.ndarray]:
    """``n`` mutually distinct colours (hues spread around the wheel), each kept away from the background colours.

    Hue order, offset, saturation and value are all random, so colours carry no class information.
    """
    hue0 = rng.random()
    order = rng.permutation(n)
    out = []
    for k in range(n):
        for _ in range(6):  # a few tries to avoid camouflage against the background; a rare clash is acceptable
            h = hue0 + (order[k] + rng.uniform(-0.25, 0.25)) / n
            c = _hsv(h, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
            if min(float(np.linalg.norm(c - a)) for a in avoid) > 70:
                break
        out.append(c)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------

_CLUTTER_CODE = 100  # label-canvas codes: 1..n_roles object roles, 100.. clutter items, 255 the occluder
_OCCLUDER_CODE = 255
_FIX_SHIFT = 4  # cv2 sub-pixel bits: vertices at 1/16 px so small shapes keep their proportions


def _to_pixels(contour: Contour, size: int) -> np.ndarray:
    # unit coordinate u covers pixel floor(u * size); cv2 puts integer coordinates at pixel centres, hence the -0.5
    return np.round((contour * size - 0.5) * (1 << _FIX_SHIFT)).astype(np.int32)


def _fill(canvas: np.ndarray, shape: Shape, code: int, size: int) -> None:
    cv2.fillPoly(canvas, [_to_pixels(c, size) for c in shape], int(code), lineType=cv2.LINE_8, shift=_FIX_SHIFT)


def _place(parts: list[Part], rng: np.random.Generator) -> list[Part]:
    """Scale, mirror, rotate and translate canonical parts into unit image coordinates [0, 1]^2."""
    pts = np.concatenate([c for p in parts for s in p.shapes for c in s])
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2
    scale = rng.uniform(0.6, 0.9) / float((hi - lo).max())
    a = np.deg2rad(rng.uniform(-30, 30))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    mat = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.diag([flip, 1.0])
    moved = (pts - centre) @ mat.T
    mlo, mhi = moved.min(0), moved.max(0)
    fit = 0.96 / float((mhi - mlo).max())
    if fit < 1:  # rotation can push a long object past the border; shrink rather than crop it
        mat, mlo, mhi = mat * fit, mlo * fit, mhi * fit
    margin = 0.02
    shift = np.array([rng.uniform(margin - mlo[i], max(margin - mlo[i], 1 - margin - mhi[i])) for i in range(2)])
    return [Part(p.role, tuple([(c - centre) @ mat.T + shift for c in s] for s in p.shapes)) for p in parts]


def _random_shape(rng: np.random.Generator, cx: float, cy: float, r: float) -> Shape:
    """A random primitive (the same vocabulary the objects use, so clutter cannot be told apart by shape alone)."""
    kind = int(rng.integers(0, 6))
    a = rng.uniform(0, 360)
    if kind == 0:
        return [_disc(cx, cy, r)]
    if kind == 1:
        return [_rotate_about(_rect(cx, cy, 2 * r, 2 * r * rng.uniform(0.2, 1.0)), cx, cy, a)]
    if kind == 2:
        return [_ellipse(cx, cy, r, r, start=a, end=a + 360, n=3)]  # triangle
    if kind == 3:
        return _ring(cx, cy, r, r * rng.uniform(0.35, 0.65))
    if kind == 4:
        return [_ellipse(cx, cy, r, r * rng.uniform(0.3, 0.7), angle=a)]
    n = int(rng.integers(5, 9))  # irregular blob
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.5, 1.0, n)
    return [np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)]


def _occluder(rng: np.random.Generator, obj_lo: np.ndarray, obj_hi: np.ndarray, shrink: float) -> Shape:
    """A shape in front of the object: a long bar across it, or a disc / blob biting into its side."""
    ext = float((obj_hi - obj_lo).max())
    if rng.random() < 0.4:
        px, py = rng.uniform(obj_lo, obj_hi)
        w = rng.uniform(0.06, 0.12) * shrink
        return [_rotate_about(_rect(px, py, 3.0, w), px, py, rng.uniform(0, 180))]
    # centre on the bounding-box border so it covers an edge of the object, not its middle
    side = int(rng.integers(0, 4))
    f = rng.uniform(0.1, 0.9)
    cx = obj_lo[0] + f * (obj_hi[0] - obj_lo[0]) if side < 2 else (obj_lo[0] if side == 2 else obj_hi[0])
    cy = obj_lo[1] + f * (obj_hi[1] - obj_lo[1]) if side >= 2 else (obj_lo[1] if side == 0 else obj_hi[1])
    r = rng.uniform(0.2, 0.35) * ext * shrink
    return _random_shape(rng, cx, cy, r) if rng.random() < 0.5 else [_disc(cx, cy, r)]


def render(index: int, split: str = "train", seed: int | None = None, image_size: int = 128) -> Sample:
    """Render sample ``index`` of ``split``; a pure function of (split, seed, index, image_size)."""
    seed, code = _resolve(split, seed)
    index = _check_index(index)
    size = int(image_size)
    if size < 16:
        raise ValueError(f"image_size must be >= 16, got {size}")
    label = label_of(index, split, seed)
    rng = np.random.default_rng([_SCENE_STREAM, seed, code, index])
    # per-pixel noise has a size-dependent number of draws; a separate stream keeps the scene identical across sizes
    pix_rng = np.random.default_rng([_PIXEL_STREAM, seed, code, index])

    name, roles, _ = _CLASS_DEFS[label]
    parts = _place(object_parts(label, rng), rng)
    role_code = {role: k + 1 for k, role in enumerate(roles)}

    bg_index, bg_table, bg_colours = _background(rng, size)
    palette = np.zeros((256, 3), np.float32)
    for k, c in enumerate(_part_colours(rng, len(roles), bg_colours)):
        palette[k + 1] = c

    canvas = np.zeros((size, size), np.uint8)
    for k in range(int(rng.integers(2, 6))):  # clutter goes first, so the object covers it
        cx, cy = rng.uniform(0.05, 0.95, 2)
        _fill(canvas, _random_shape(rng, cx, cy, rng.uniform(0.03, 0.08)), _CLUTTER_CODE + k, size)
        palette[_CLUTTER_CODE + k] = _random_rgb(rng, v_range=(0.2, 1.0))
    for part in parts:
        for shape in part.shapes:
            _fill(canvas, shape, role_code[part.role], size)

    if rng.random() < 0.3:
        pts = np.concatenate([c for p in parts for s in p.shapes for c in s])
        obj = (canvas > 0) & (canvas < _CLUTTER_CODE)
        n_obj, roles_visible = int(obj.sum()), np.unique(canvas[obj]).size
        palette[_OCCLUDER_CODE] = _random_rgb(rng)
        occ = np.zeros_like(canvas)
        for shrink in (1.0, 0.6, 0.35):  # back off until enough of the object stays recognisable
            occ[:] = 0
            _fill(occ, _occluder(rng, pts.min(0), pts.max(0), shrink), 1, size)
            left = obj & (occ == 0)
            if left.sum() >= 0.7 * n_obj and np.unique(canvas[left]).size >= min(2, roles_visible):
                canvas[occ > 0] = _OCCLUDER_CODE
                break

    # one table lookup composes background texture, clutter, object and occluder (codes > 0 index the palette)
    table = np.concatenate([bg_table, palette])
    index_map = np.where(canvas > 0, canvas.astype(np.uint16) + _BG_LUT_SIZE, bg_index)
    image = np.take(table, index_map, axis=0)
    # global lighting: a soft linear brightness ramp over the whole scene, object and background alike
    x, y = _grid(size)
    gain = np.float32(rng.uniform(0, 0.25))
    ga = rng.uniform(0, 2 * np.pi)
    light = 1 + gain * (np.float32(np.cos(ga)) * (2 * x - 1) + np.float32(np.sin(ga)) * (2 * y - 1))
    np.multiply(image, light[..., None], out=image)
    # sensor-like noise; the sum of two uniform bytes is triangular, close enough to Gaussian and much cheaper to draw
    sigma = np.float32(rng.uniform(1.0, 8.0))
    blur = rng.random() < 0.3
    noise = np.frombuffer(pix_rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
    image += (noise[0].astype(np.float32) + noise[1] - 255.0) * (sigma / np.float32(104.5))  # std 104.5 -> sigma
    if blur:
        image = cv2.GaussianBlur(image, (0, 0), 0.6 * size / 128)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    lut = np.zeros(256, np.uint8)
    for role, k in role_code.items():
        lut[k] = _PART_ID[f"{name}/{role}"]
    part_mask = lut[canvas]
    return Sample(image=image, label=label, object_mask=(part_mask > 0).astype(np.uint8), part_mask=part_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Dataset and export
# ----------------------------------------------------------------------------------------------------------------------


class PartShapes(torch.utils.data.Dataset):
    """ImageFolder-like dataset of ``size`` rendered samples; item ``i`` is ``render(i, split, seed, image_size)``.

    ``__getitem__`` returns ``(image, label)`` with ``image`` a PIL RGB image (or ``transform(image)``), and with
    ``return_masks=True`` ``(image, label, object_mask, part_mask)`` with the masks as [H, W] uint8 numpy arrays.
    Samples are rendered on demand, so the dataset is cheap to create and safe to use from DataLoader workers.
    """

    def __init__(self, split: str = "train", size: int = 10000, image_size: int = 128, seed: int | None = None,
                 transform: Callable[[Image.Image], Any] | None = None, return_masks: bool = False) -> None:
        self.seed, _ = _resolve(split, seed)
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.split = split
        self.size = int(size)
        self.image_size = int(image_size)
        self.transform = transform
        self.return_masks = return_masks
        self.classes: list[str] = list(CLASSES)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}
        self.targets: list[int] = labels(self.size, split, self.seed)

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> Sample:
        """The raw rendered sample (numpy image and masks) at ``index``."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for PartShapes of size {self.size}")
        return render(index, self.split, self.seed, self.image_size)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        s = self.sample(index)
        image: Any = Image.fromarray(s.image)
        if self.transform is not None:
            image = self.transform(image)
        if self.return_masks:
            return image, s.label, s.object_mask, s.part_mask
        return image, s.label

    def __repr__(self) -> str:
        return (f"PartShapes(split={self.split!r}, size={self.size}, image_size={self.image_size}, seed={self.seed}, "
                f"classes={len(self.classes)}, parts={len(PARTS) - 1})")


def export(out_dir: str | Path, split: str = "test", n: int = 1000, image_size: int = 128, seed: int | None = None,
           progress: bool = True) -> Path:
    """Write ``n`` samples as an ImageFolder tree plus masks, so other tools can use a frozen copy of a split.

    Layout: ``images/<class>/<split>_<index:06d>.png`` (RGB), ``part_masks/...`` (8-bit global part id),
    ``object_masks/...`` (8-bit 0/1) with the same relative names, and ``meta.json`` describing the split and the
    class/part vocabulary. Returns ``out_dir``.
    """
    from tqdm.auto import tqdm

    seed, _ = _resolve(split, seed)
    out = Path(out_dir)
    for sub in ("images", "part_masks", "object_masks"):
        for c in CLASSES:
            (out / sub / c).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc=f"partshapes {split}", disable=not progress):
        s = render(i, split, seed, image_size)
        rel = Path(CLASSES[s.label]) / f"{split}_{i:06d}.png"
        Image.fromarray(s.image).save(out / "images" / rel)
        Image.fromarray(s.part_mask).save(out / "part_masks" / rel)
        Image.fromarray(s.object_mask).save(out / "object_masks" / rel)
    meta = {"dataset": "partshapes", "split": split, "seed": seed, "image_size": int(image_size), "n": int(n),
            "classes": list(CLASSES), "parts": list(PARTS), "part_class": list(PART_CLASS)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out
