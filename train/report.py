"""``python -m train report``: the results table, a per-level mIoU figure and a gallery of
hierarchies, written into the "Results" section of docs/evaluation.md (between the results markers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report", "results_markdown", "colorize"]

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(results_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(results_dir.glob("*.json")):
        r = json.loads(p.read_text())
        r["_name"] = p.stem
        out.append(r)
    return out


def _best(r: dict[str, Any], key: str) -> tuple[float | None, str]:
    vals = [(v[key], lv) for lv, v in r["levels"].items() if key in v]
    if not vals:
        return None, "–"
    best = max(vals)
    return best[0], best[1]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def results_markdown(results: list[dict[str, Any]], figures: Path, readme_dir: Path) -> str:
    lines = ["| model | top-1 | GMACs | images/s | object mIoU oracle (level) | part mIoU oracle (level) | "
             "object mIoU model (level) | part mIoU model (level) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [r["_name"], _fmt(r.get("top1")), _fmt(r["gmacs"]), _fmt(r.get("images_per_s"), 1)]
        for key in ("object_miou_oracle", "part_miou_oracle", "object_miou_model", "part_miou_model"):
            v, lv = _best(r, key)
            cells.append(f"{_fmt(v)} ({lv})")
        lines.append("| " + " | ".join(cells) + " |")
    per_level = []
    cols = ["num_segments", "object_miou_oracle", "part_miou_oracle", "object_miou_model", "part_miou_model",
            "consistency", "boundary_f"]
    for r in results:
        per_level.append(f"\n**{r['_name']}** ({r['architecture']}, {r['images']} images; model labelling on "
                         f"{r.get('model_label_images', 0)})\n")
        per_level.append("| level | " + " | ".join(cols) + " |")
        per_level.append("|---|" + "---|" * len(cols))
        for lv, v in r["levels"].items():
            per_level.append(f"| {lv} | " + " | ".join(_fmt(v.get(c)) for c in cols) + " |")
    rel = lambda p: str(Path(p).resolve().relative_to(readme_dir.resolve()))  # noqa: E731
    figs = []
    if (figures / "miou_per_level.png").is_file():
        figs.append(f"![per-level mIoU]({rel(figures / 'miou_per_level.png')})")
    if (figures / "gallery.png").is_file():
        figs.append(f"![hierarchies on PartShapes test images]({rel(figures / 'gallery.png')})")
    return "\n".join(lines) + "\n" + "\n".join(per_level) + "\n\n" + "\n\n".join(figs) + "\n"


def plot_levels(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, target in zip(axes, ("object", "part")):
        for r in results:
            levels = [int(lv) for lv in r["levels"]]
            for proto, style in (("oracle", "-o"), ("model", "--s")):
                key = f"{target}_miou_{proto}"
                ys = [r["levels"][str(lv)].get(key) for lv in levels]
                if all(y is not None for y in ys):
                    ax.plot(levels, ys, style, label=f"{r['_name']} ({proto})")
        ax.set_title(f"{target} mIoU")
        ax.set_xlabel("level (1 = finest, 4 = coarsest)")
        ax.set_xticks([1, 2, 3, 4])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def colorize(labels: np.ndarray, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Segments in distinct colours blended over the image, with dark boundaries."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 255, (int(labels.max()) + 1, 3))
    out = (0.35 * image + 0.65 * palette[labels]).astype(np.uint8)
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    out[edge] = 0
    return out


def plot_gallery(models: list[str], data_spec: str, path: Path, n: int = 4, image_size: int = 160) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import cast

    from .evaluate import load_eval_data

    data = load_eval_data(data_spec, n=n, image_size=image_size)
    segs = [(Path(m).name, cast.load_segmenter(m)) for m in models]
    cols = 1 + 4 * len(segs)
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.3, n * 1.4))
    axes = np.atleast_2d(axes)
    for i in range(n):
        image, label, _, _ = data.samples[i]
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(data.classes[label], fontsize=7)
        for j, (name, seg) in enumerate(segs):
            tree = seg(image)
            for lv in range(4):
                ax = axes[i, 1 + 4 * j + lv]
                ax.imshow(colorize(tree.label_maps[lv], image, seed=lv))
                if i == 0:
                    ax.set_title(f"{name}\nlevel {lv + 1}", fontsize=6)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results_dir: str | Path, readme: str | Path, figures: str | Path, data: str = "partshapes:test",
                 models: list[str] | None = None) -> None:
    results_dir, readme, figures = Path(results_dir), Path(readme), Path(figures)
    results = _load(results_dir)
    if not results:
        raise SystemExit(f"no evaluation results in {results_dir}; run `python -m train evaluate --out {results_dir}` first")
    plot_levels(results, figures / "miou_per_level.png")
    sources = models if models is not None else [r["model"] for r in results]
    if sources:
        plot_gallery(sources, data, figures / "gallery.png")
    block = results_markdown(results, figures, readme.parent)
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + START + "\n" + block + END + tail
    else:
        text += f"\n## Results\n\n{START}\n{block}{END}\n"
    readme.write_text(text)
    print(f"updated {readme} and {figures}")
