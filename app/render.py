"""Drawing: segment colours, the overlay image, the icicle tree (SVG), the segment panel and the
per-level predictions. Functions of data to pixels or HTML strings; no Gradio, no model calls.

Colours: each level-4 segment (a "whole") gets its own hue; its descendants keep that hue, spread a
little between siblings, and get lighter with depth, so the overlay at any level and the icicle use
the same colours.
"""

from __future__ import annotations

import base64
import colorsys
import functools
import html
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cast.hierarchy import Hierarchy, boundaries
from cast.keys import ROOT, Level, SegmentKey

from .view import CompareSelection, SegmentInfo, View

GOLDEN = 0.618033988749895
LIGHTNESS = {4: 0.40, 3: 0.50, 2: 0.60, 1: 0.70}  # lighter with depth
SATURATION = 0.65
ROOT_COLOUR = (150, 150, 150)
SELECT_COLOUR = (255, 214, 0)
LEVEL_NAMES = {Level.WHOLE: "whole image", Level.L4: "level 4", Level.L3: "level 3", Level.L2: "level 2", Level.L1: "level 1",
               Level.SUPERPIXEL: "superpixel"}


def _rgb(h: float, lightness: float, s: float = SATURATION) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(h % 1.0, lightness, s)
    return round(r * 255), round(g * 255), round(b * 255)


def colours(tree: Hierarchy) -> dict[Level, np.ndarray]:
    """``{level: [n_level, 3] uint8}`` for levels 1..4 plus ``Level.WHOLE`` (one grey) and
    ``Level.SUPERPIXEL`` (each superpixel a shade of its level-1 segment)."""
    hues: dict[int, dict[int, float]] = {4: {n.id: (i * GOLDEN) % 1.0 for i, n in enumerate(tree.nodes_at(4))}}
    for level in (3, 2, 1):
        hues[level] = {}
        spread = 0.05 * (level / 4)
        for parent in tree.nodes_at(level + 1):
            kids = parent.children
            for rank, child in enumerate(kids):
                offset = (rank - (len(kids) - 1) / 2) * spread / max(len(kids), 1)
                hues[level][child] = hues[level + 1][parent.id] + offset
    out: dict[Level, np.ndarray] = {}
    for level in (1, 2, 3, 4):
        n = len(tree.nodes_at(level))
        table = np.zeros((max(n, 1), 3), np.uint8)
        for i in range(n):
            # siblings alternate lightness slightly so neighbours differ even with close hues
            table[i] = _rgb(hues[level].get(i, 0.0), LIGHTNESS[level] + (0.04 if i % 2 else -0.02))
        out[Level(level)] = table
    sp_to_l1 = tree.superpixel_to_level1.astype(np.int64)
    sp = out[1][np.maximum(sp_to_l1, 0)].astype(np.int16)
    jitter = ((np.arange(len(sp_to_l1)) * 37) % 7 - 3)[:, None] * 6
    out[Level.SUPERPIXEL] = np.clip(sp + jitter, 0, 255).astype(np.uint8)
    out[Level.WHOLE] = np.array([ROOT_COLOUR], np.uint8)
    return out


def view_colours(view: View) -> dict[Level, np.ndarray]:
    """:func:`colours` of a view's tree, computed once per view."""
    if view.cache.colours is None:
        view.cache.colours = colours(view.tree)
    return view.cache.colours


def baseline_colours(view: View) -> dict[Level, np.ndarray]:
    """:func:`colours` of the ViT baseline's tree beside a view, computed once per view."""
    assert view.result.baseline is not None
    if view.cache.baseline_colours is None:
        view.cache.baseline_colours = colours(view.result.baseline)
    return view.cache.baseline_colours


def colour_of(tree_colours: dict[Level, np.ndarray], key: SegmentKey) -> tuple[int, int, int]:
    c = tree_colours[key.level][key.id]
    return int(c[0]), int(c[1]), int(c[2])


def hex_colour(c: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


# ---------------------------------------------------------------------------------------------
# Overlay
# ---------------------------------------------------------------------------------------------


def _outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Inner outline of a mask, ``width`` pixels thick (worked out inside the mask's bounding box)."""
    out = np.zeros(mask.shape, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)  # outside the image counts as outside the mask
    inner = crop.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    out[y0:y1, x0:x1] = (crop & ~inner)[1:-1, 1:-1]
    return out


@dataclass(frozen=True)
class OverlayStyle:
    level: int = 2  # display level (cast.Level): WHOLE, 4..1 or SUPERPIXEL
    opacity: float = 0.5  # colour over the photo, 0..1
    show_boundaries: bool = True
    dim_rest: bool = False  # darken everything outside the selected segment


DIM = 0.3  # brightness kept outside the selection when dimming


def base_overlay(photo: np.ndarray, labels: np.ndarray, table: np.ndarray, opacity: float, show_boundaries: bool,
                 draw_boundaries: bool = True) -> np.ndarray:
    """The photo coloured by segment (``[h, w, 3]`` uint8), boundaries in white: everything but the selection."""
    a = float(np.clip(opacity, 0.0, 1.0))
    out = (photo.astype(np.float32) * (1.0 - a) + table[labels].astype(np.float32) * a).astype(np.uint8)
    if show_boundaries and draw_boundaries:
        out[boundaries(labels)] = (255, 255, 255)
    return out


def select_overlay(base: np.ndarray, selected: np.ndarray | None, dim_rest: bool,
                   dimmed: np.ndarray | None = None) -> np.ndarray:
    """Outline the selected segment on a base overlay; darken the rest when asked."""
    if selected is None:
        return base
    if dim_rest:
        dimmed = dimmed if dimmed is not None else (base.astype(np.uint16) * round(DIM * 256) >> 8).astype(np.uint8)
        out = np.where(selected[..., None], base, dimmed)
    else:
        out = base.copy()
    if not selected.all():
        out[_outline(selected, 3)] = SELECT_COLOUR
    return out


def overlay(photo: np.ndarray, maps: Mapping[Level, np.ndarray], table: dict[Level, np.ndarray],
            style: OverlayStyle, selected: np.ndarray | None = None) -> np.ndarray:
    """Colour the photo by segment.

    Args:
        photo: ``[h, w, 3]`` uint8 at display size.
        maps: display-size label maps (see :func:`app.service.display_maps`).
        table: segment colours (:func:`colours`).
        selected: ``[h, w]`` bool mask of the selected segment (outlined; the rest dimmed if asked).

    Returns:
        ``[h, w, 3]`` uint8.
    """
    level = Level(int(style.level))
    base = base_overlay(photo, maps[level], table[level], style.opacity, style.show_boundaries, level != Level.WHOLE)
    return select_overlay(base, selected, style.dim_rest)


def view_overlay(view: View, style: OverlayStyle) -> np.ndarray:
    """The overlay of a session's view; the unselected layer is cached per style, so a click only
    outlines the new selection."""
    level = Level(int(style.level))
    key = (level, round(float(style.opacity), 3), bool(style.show_boundaries))
    cache = view.cache
    base = cache.base if cache.base_style == key else None  # one style at a time: ~1 MB per session,
    if base is None:  # dropped while the session is idle (app.sessions)
        base = base_overlay(view.result.photo, view.maps[level], view_colours(view)[level], style.opacity,
                            style.show_boundaries, level != Level.WHOLE)
        cache.base, cache.base_style = base, key
    mask = view.mask(view.selected) if view.selected else None
    return select_overlay(base, mask, style.dim_rest)


def encode_png(image: np.ndarray) -> bytes:
    """RGB ``[h, w, 3]`` uint8 -> PNG bytes, fast: the "sub" filter for every row and Huffman-only
    deflate (about 2-3x faster than PIL's encoder at level 1 on photos, similar size)."""
    h, w, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 1  # filter type 1 (sub): each byte minus the same channel of the pixel to its left
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    data = z.compress(raw.tobytes()) + z.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------
# Icicle tree
# ---------------------------------------------------------------------------------------------

ROWS = [Level.WHOLE, Level.L4, Level.L3, Level.L2, Level.L1]  # icicle rows, top to bottom


def icicle_layout(tree: Hierarchy, equal_width: bool = False,
                  min_share: float = 0.35) -> dict[SegmentKey, tuple[float, float, int]]:
    """Horizontal extent of every node: ``{key: (x0, x1, row)}`` with x in [0, 1], row 0 = root.

    Leaves (level-1 segments) get a width proportional to their area, but never less than
    ``min_share`` of an equal share (so 64 leaves stay clickable); ``equal_width`` gives every
    leaf the same width. A parent spans exactly its children, so nesting is exact.
    """
    leaves = tree.nodes_at(1)
    n = max(len(leaves), 1)
    total_area = sum(lf.area for lf in leaves) or 1
    if equal_width:
        weight = {lf.id: 1.0 for lf in leaves}
    else:
        weight = {lf.id: max(lf.area / total_area, min_share / n) for lf in leaves}
    scale = 1.0 / sum(weight.values())
    layout: dict[SegmentKey, tuple[float, float, int]] = {}
    x = 0.0

    def place(level: int, node_id: int) -> tuple[float, float]:
        nonlocal x
        node = tree.node(level, node_id)
        if level == 1:
            x0 = x
            x += weight[node_id] * scale
            layout[node.key] = (x0, x, ROWS.index(1))
            return x0, x
        start = x
        for c in node.children:
            place(level - 1, c)
        layout[node.key] = (start, x, ROWS.index(level))
        return start, x

    for top in tree.nodes_at(4):
        place(4, top.id)
    layout[ROOT] = (0.0, 1.0, 0)
    return layout


def _short(preds: list[tuple[str, float]] | None) -> str:
    return preds[0][0] if preds else ""


def icicle_html(tree: Hierarchy, selected: SegmentKey | None, equal_width: bool = False,
                table: dict[Level, np.ndarray] | None = None, width: int = 1000, row_height: int = 30) -> str:
    """The tree as an SVG icicle plus a breadcrumb; every node is ``<rect data-node="KEY">``."""
    table = table if table is not None else colours(tree)
    layout = icicle_layout(tree, equal_width)
    path = tree.path_keys(selected) if selected else []
    # a selected superpixel is shown through its level-1 segment (the tree stops at level 1)
    marked = path[-2] if selected and selected.is_superpixel else selected
    w_img, h_img = tree.size
    area = w_img * h_img
    parts: list[str] = []
    for key, (x0, x1, row) in layout.items():
        px0, pw = x0 * width, max((x1 - x0) * width, 0.5)
        y = row * row_height
        if key == ROOT:
            fill, label, share = hex_colour(ROOT_COLOUR), "whole image", 1.0
            top = tree.level_predictions[3] if tree.level_predictions else None
            label = f"whole image: {_short(top)}" if top else label
            title = "whole image"
        else:
            node = tree.node(key)
            fill = hex_colour(colour_of(table, key))
            share = node.area / area
            label = _short(node.own_predictions) or str(key)
            title = f"{key}: {share:.1%} of the image" + (f", {_short(node.own_predictions)}" if node.own_predictions else "")
        cls = "node"
        if selected:
            cls += " on-path" if key in path else " off-path"
            cls += " selected" if key == marked else ""
        text = ""
        if pw > 7 * max(len(label), 3):
            text = (f'<text x="{px0 + pw / 2:.1f}" y="{y + row_height / 2 + 4:.1f}" text-anchor="middle" '
                    f'pointer-events="none">{html.escape(label)}</text>')
        parts.append(
            f'<g class="{cls}" data-node="{key}"><rect data-node="{key}" x="{px0:.2f}" y="{y}" width="{pw:.2f}" '
            f'height="{row_height - 2}" fill="{fill}"><title>{html.escape(title)}</title></rect>{text}</g>'
        )
    height = len(ROWS) * row_height
    row_labels = "".join(
        f'<div class="row-label" style="top:{i * row_height}px;height:{row_height - 2}px">'
        f'{"whole" if lv == Level.WHOLE else f"L{int(lv)}"}</div>' for i, lv in enumerate(ROWS)
    )
    return (
        f'<div class="cast-tree">{breadcrumb_html(tree, selected)}'
        f'<div class="icicle-wrap"><div class="row-labels">{row_labels}</div>'
        f'<svg class="icicle" viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'style="height:{height}px" role="tree">{"".join(parts)}</svg></div></div>'
    )


def breadcrumb_html(tree: Hierarchy, selected: SegmentKey | None) -> str:
    if not selected:
        return '<div class="breadcrumb">Click a segment in the image or a node of the tree.</div>'
    crumbs = []
    for key in tree.path_keys(selected):
        name = "whole image" if key.is_root else str(key)
        if key.is_node:
            preds = tree.node(key).predictions
            if preds:
                name += f" ({preds[0][0]})"
        cls = "crumb current" if key == selected else "crumb"
        crumbs.append(f'<span class="{cls}" data-node="{key}">{html.escape(name)}</span>')
    return '<div class="breadcrumb">' + ' <span class="sep">›</span> '.join(crumbs) + "</div>"


# ---------------------------------------------------------------------------------------------
# Panels
# ---------------------------------------------------------------------------------------------


def _pred_rows(preds: list[tuple[str, float]] | None) -> str:
    if not preds:
        return ""
    rows = "".join(
        f'<div class="pred"><span class="lbl">{html.escape(lbl)}</span>'
        f'<span class="bar"><span style="width:{100 * p:.1f}%"></span></span><span class="p">{p:.1%}</span></div>'
        for lbl, p in preds
    )
    return f'<div class="preds">{rows}</div>'


def _chip(key: SegmentKey, table: dict[Level, np.ndarray]) -> str:
    colour = hex_colour(colour_of(table, key)) if not key.is_root else hex_colour(ROOT_COLOUR)
    return f'<span class="chip" data-node="{key}" style="border-color:{colour}">{key}</span>'


def panel_html(info: SegmentInfo | None, table: dict[Level, np.ndarray], has_head: bool,
               pending: bool = False) -> str:
    """The selected-segment panel."""
    if info is None:
        return '<div class="segment-panel empty">No segment selected yet. Click the image or the tree.</div>'
    title = "Whole image" if info.key.is_root else (
        f"Superpixel {info.id}" if info.key.is_superpixel else f"Segment {info.key}")
    facts = [
        ("level", LEVEL_NAMES[info.level]),
        ("id", str(info.id)),
        ("area", f"{info.area_fraction:.2%} of the image"),
        ("parent", _chip(info.parent, table) if info.parent else "none"),
        ("children", " ".join(_chip(c, table) for c in info.children[:64]) or "none"),
    ]
    if info.concepts is not None:
        facts.append(("concepts", " → ".join(f"C{lv}-{k}" for lv, k in reversed(list(enumerate(info.concepts, start=1))))))
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    out = [f'<div class="segment-panel" data-key="{info.key}"><h4>{title}</h4><table>{rows}</table>']
    if info.taxonomy_predictions:
        what = "the image's finest head" if info.key.is_root else "the segment's own token, through this level's head"
        out.append(f'<h5 class="taxonomy-level">{html.escape(info.taxonomy_level or "")}: model says (from {what})</h5>'
                   f'{_pred_rows(info.taxonomy_predictions)}')
    elif info.key.is_node and info.taxonomy_level is None and has_head and not info.token_predictions:
        out.append('<p class="muted">No taxonomy head reads this level.</p>')
    if not has_head:
        out.append('<p class="muted">This model has no classifier (self-supervised weights): no class predictions.</p>')
    else:
        if info.token_predictions:
            what = "the image token after the last stage" if info.key.is_root else "the segment's own token"
            out.append(f'<h5>Model says (from {what})</h5>{_pred_rows(info.token_predictions)}')
        if info.key.is_node:
            if info.masked_predictions:
                out.append(f'<h5>Segment on its own (masked image)</h5>{_pred_rows(info.masked_predictions)}')
            elif pending:
                out.append('<h5>Segment on its own (masked image)</h5><p class="muted pending">recognising…</p>')
    out.append("</div>")
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _data_uri(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    except OSError:
        return ""


def _thumbs(files: list[str], limit: int = 4) -> str:
    imgs = [f'<img src="{_data_uri(f)}" alt="" loading="lazy">' for f in files[:limit] if _data_uri(f)]
    return f'<span class="thumbs">{"".join(imgs)}</span>' if imgs else ""


def concepts_html(tree: Hierarchy, thumbnails: dict[tuple[int, int], list[str]] | None,
                  segment: SegmentInfo | None = None) -> str:
    """The image's concept path (coarse to fine, with representative training images) and, for a
    selected segment, the segment's own nearest concepts."""
    if not tree.concepts:
        return ('<div class="concepts muted">This model has no concept hierarchy: concepts come from models '
                'trained with HIRL (<code>hirl.enabled</code> in <code>train/</code>).</div>')
    thumbnails = thumbnails or {}
    rows = []
    for step in reversed(tree.concepts):  # coarse first
        seg_mark = ""
        if segment is not None and segment.concepts is not None:
            same = segment.concepts[step.level - 1] == step.id
            seg_mark = '<span class="agree">segment agrees</span>' if same else (
                f'<span class="differ">segment: C{step.level}-{segment.concepts[step.level - 1]}</span>')
        files = step.thumbnails or thumbnails.get((step.level, step.id), [])
        rows.append(f'<div class="concept-step"><span class="cid">C{step.level}-{step.id}</span>'
                    f'<span class="conf">{step.confidence:.0%}</span>{_thumbs(files)}{seg_mark}</div>')
    head = "Concept path of the image (coarse → fine), each with training images closest to it"
    out = f'<div class="concepts"><h5>{head}</h5>{"".join(rows)}'
    if segment is not None and segment.concepts is not None:
        chain = " → ".join(f"C{lv}-{k}" for lv, k in reversed(list(enumerate(segment.concepts, start=1))))
        out += f'<h5>Selected segment {html.escape(str(segment.key))}: {chain}</h5>'
        out += "".join(_thumbs(thumbnails.get((lv, k), []), 3) for lv, k in reversed(list(enumerate(segment.concepts, start=1))))
    return out + "</div>"


PLOT_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"]


def taxonomy_predictions_html(tree: Hierarchy, counts: list[int] | None = None) -> str:
    """A hierarchical model's levels: the taxonomy level each tree level answers with its top-5, the
    consistent path, and a mark when the heads' own answers are not a path of the taxonomy."""
    assert tree.taxonomy is not None
    counts = counts or tree.num_segments
    t = tree.taxonomy
    cols = []
    for lv in range(1, len(counts) + 1):
        answered = t.level_at(lv)
        head = f"level {lv} · {counts[lv - 1]} segments"
        if answered is None:
            cols.append(f'<div class="level-col no-head"><h5>{head}</h5><p class="muted">no head reads this level</p></div>')
            continue
        top = answered.predictions[0][0] if answered.predictions else "–"
        cols.append(f'<div class="level-col" data-taxonomy-level="{html.escape(answered.name)}"><h5>{head} · '
                    f'{html.escape(answered.name)}: {html.escape(top)}</h5>{_pred_rows(answered.predictions)}</div>')
    path = "".join(f'<span class="step">{html.escape(n)}</span>' for n in reversed(t.argmax_path))
    lines = [f'<div class="taxonomy-path">heads say (coarse → fine): {path}</div>']
    if t.heads_agree is False:
        consistent = " → ".join(html.escape(n) for n in reversed(t.consistent_path or []))
        lines.append(f'<div class="taxonomy-disagree">⚠ the heads disagree: their answers are not a path of the taxonomy. '
                     f'Consistent path: {consistent}</div>')
    elif t.heads_agree:
        lines.append('<div class="taxonomy-agree">✓ the heads agree: their answers form a path of the taxonomy '
                     '(the consistent path)</div>')
    else:
        lines.append('<div class="muted">no taxonomy loaded: the levels cannot be checked against each other</div>')
    return f'<div class="level-preds taxonomy"><div class="level-cols">{"".join(cols)}</div>{"".join(lines)}</div>'


def level_predictions_html(tree: Hierarchy, counts: list[int] | None = None) -> str:
    """Top-5 per level and a line plot of the leading classes' probability from level 1 to 4 (a
    hierarchical model: :func:`taxonomy_predictions_html`)."""
    if tree.taxonomy is not None:
        return taxonomy_predictions_html(tree, counts)
    if not tree.level_predictions:
        return '<div class="level-preds muted">This model has no classifier: no per-level predictions.</div>'
    counts = counts or tree.num_segments
    cols = []
    for lv, preds in enumerate(tree.level_predictions, start=1):
        cols.append(f'<div class="level-col"><h5>level {lv} · {counts[lv - 1]} segments</h5>{_pred_rows(preds)}</div>')
    # the classes to follow: each level's top-1, then the most likely others, at most 5
    classes: list[str] = []
    for preds in tree.level_predictions:
        if preds and preds[0][0] not in classes:
            classes.append(preds[0][0])
    for lbl, _ in sorted((p for preds in tree.level_predictions for p in preds), key=lambda t: -t[1]):
        if len(classes) >= 5:
            break
        if lbl not in classes:
            classes.append(lbl)
    return (f'<div class="level-preds"><div class="level-cols">{"".join(cols)}</div>'
            f'{_trend_svg(tree.level_predictions, classes[:5])}</div>')


def _trend_svg(per_level: list[list[tuple[str, float]]], classes: list[str], w: int = 420, h: int = 170) -> str:
    left, right, top, bottom = 36, 130, 10, 26
    pw, ph = w - left - right, h - top - bottom

    def xy(i: int, p: float) -> tuple[float, float]:
        return left + pw * i / 3, top + ph * (1 - p)

    g = [f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" class="axis"/>',
         f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" class="axis"/>']
    for p in (0, 0.5, 1):
        _, y = xy(0, p)
        g.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{p:.1f}</text>')
    for i in range(4):
        x, _ = xy(i, 0)
        g.append(f'<text class="tick" x="{x:.1f}" y="{h - 8}" text-anchor="middle">L{i + 1}</text>')
    for c, name in enumerate(classes):
        colour = PLOT_COLOURS[c % len(PLOT_COLOURS)]
        pts = []
        for i, preds in enumerate(per_level):
            prob = dict(preds).get(name)
            if prob is not None:
                pts.append(xy(i, prob))
        if len(pts) > 1:
            g.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        g.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts)
        g.append(f'<text x="{left + pw + 8}" y="{top + 12 + 16 * c}" fill="{colour}">{html.escape(name[:18])}</text>')
    return (f'<svg class="trend" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
            f'aria-label="class probability by level">{"".join(g)}</svg>'
            '<div class="muted small">Probability of the leading classes after each stage (points only where the '
            'class is in that level\'s top 5).</div>')


def compare_summary(selection: CompareSelection | None) -> str:
    if selection is None:
        return "Click either image: the segment under the click is outlined in both."
    return (f"CAST {selection.cast_key}: {selection.cast_share:.1%} of the image · ViT + k-means {selection.vit_key}: "
            f"{selection.vit_share:.1%} · overlap (IoU) {selection.iou:.2f}")


def compare_images(view: View, level: int) -> tuple[np.ndarray, np.ndarray, str]:
    """CAST's and the ViT baseline's overlays at tree level ``level``, the segment under the last
    click outlined in both, and the summary line."""
    assert view.baseline_maps is not None
    selection = view.compare_at(level)
    lv = selection.level if selection is not None else Level(min(max(int(level), 1), 4))
    style = OverlayStyle(lv, 0.55, True, False)
    cast_img = overlay(view.result.photo, view.maps, view_colours(view), style,
                       selection.cast_mask if selection else None)
    vit_img = overlay(view.result.photo, view.baseline_maps, baseline_colours(view), style,
                      selection.vit_mask if selection else None)
    return cast_img, vit_img, compare_summary(selection)


__all__ = [
    "colours", "view_colours", "baseline_colours", "overlay", "view_overlay", "base_overlay", "select_overlay", "encode_png",
    "OverlayStyle", "compare_images", "annotate_overlay", "regions_html", "region_colour",
    "icicle_layout", "icicle_html", "panel_html", "concepts_html",
    "level_predictions_html", "taxonomy_predictions_html", "breadcrumb_html", "boundaries", "compare_summary",
]


# ---------------------------------------------------------------------------------------------
# Annotate
# ---------------------------------------------------------------------------------------------

REGION_COLOURS = [(78, 121, 167), (242, 142, 43), (225, 87, 89), (118, 183, 178), (89, 161, 79), (237, 201, 72),
                  (176, 122, 161), (255, 157, 167), (156, 117, 95), (186, 176, 172)]
ACTIVE_COLOUR = (0, 229, 255)


def region_colour(annotations: Any, region_id: str) -> tuple[int, int, int]:
    """A region's colour: one per label, in first-use order."""
    labels = annotations.labels
    label = annotations[region_id].label
    return REGION_COLOURS[labels.index(label) % len(REGION_COLOURS)]


def annotate_overlay(view: View, level: int, opacity: float = 0.5) -> np.ndarray:
    """The photo with the regions (wholes first, parts over them, coloured by label), the
    segments of ``level`` outlined in white, the picked segments in yellow, the active region in cyan."""
    from .view import annotations_of, picked_mask, region_leaves, region_mask

    ann = annotations_of(view)
    if len(ann):
        # Regions are unions of level-1 segments: blend per level-1 segment (a part over its whole
        # blends twice), then apply the tables to the photo in one pass.
        keep = np.ones(view.tree.num_segments[0], np.float32)  # share of the photo left
        add = np.zeros((keep.size, 3), np.float32)  # colour laid over it
        for region in sorted(ann.regions.values(), key=lambda r: ann.depth(r.id)):
            ids = region_leaves(view, region.id)
            keep[ids] *= 1 - opacity
            add[ids] = add[ids] * (1 - opacity) + np.asarray(region_colour(ann, region.id), np.float32) * opacity
        level1 = view.maps[Level.L1]
        out = (view.result.photo * keep[level1][..., None] + add[level1]).astype(np.uint8)
    else:
        out = view.result.photo.copy()
    out[boundaries(view.maps[Level(int(level))])] = (255, 255, 255)
    if view.picked:
        picked = picked_mask(view)
        out[picked] = (out[picked].astype(np.uint16) * 3 // 4 + np.array(SELECT_COLOUR) // 4).astype(np.uint8)
        out[_outline(picked, 3)] = SELECT_COLOUR
    if view.active is not None and view.active in ann.regions:
        out[_outline(region_mask(view, view.active), 3)] = ACTIVE_COLOUR
    return out


def regions_html(view: View) -> str:
    """The regions as a tree (parts under their wholes); every row is ``data-region="R3"``."""
    from .view import annotations_of, region_leaves

    ann = annotations_of(view)
    if not len(ann):
        return '<div class="regions muted">No regions yet: pick segments, type a label, press Enter.</div>'
    w, h = view.size
    pixels = np.bincount(view.maps[Level.L1].ravel(), minlength=view.tree.num_segments[0])  # per level-1 segment

    def rows(parent: str | None, depth: int) -> str:
        out = []
        for r in ann.children(parent):
            share = float(pixels[region_leaves(view, r.id)].sum()) / (w * h)
            cls = "region active" if r.id == view.active else "region"
            colour = hex_colour(region_colour(ann, r.id))
            out.append(f'<li><span class="{cls}" data-region="{r.id}" style="border-color:{colour}">'
                       f'<b>{html.escape(r.label)}</b> <span class="muted small">{r.id} · {len(r.nodes)} segment'
                       f'{"s" if len(r.nodes) != 1 else ""} · {share:.1%}</span></span>{rows(r.id, depth + 1)}</li>')
        return f'<ul class="region-tree">{"".join(out)}</ul>' if out else ""

    return f'<div class="regions">{rows(None, 0)}</div>'
