"""Metrics, the confusion matrix picture, top-k rows, and the small CSV / JSON outputs."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import torch


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """top-1, top-5, mean per-class accuracy and the confusion matrix (rows: true, columns: predicted)."""
    predicted = probs.argmax(-1)
    k = min(5, num_classes)
    top5 = (probs.topk(k, dim=-1).indices == labels.unsqueeze(1)).any(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    support = confusion.sum(1)
    per_class = torch.where(support > 0, confusion.diag() / support.clamp(min=1), torch.tensor(float("nan")))
    present = support > 0
    return {
        "clips": len(labels),
        "top1": float((predicted == labels).float().mean()),
        "top5": float(top5.float().mean()),
        "mean_per_class": float(per_class[present].mean()),
        "per_class": per_class.tolist(),
        "support": support.tolist(),
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Confusion matrix PNG: rows true class, columns predicted, each row normalised to 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.tensor(confusion, dtype=torch.float)
    rows = counts / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    size = min(30.0, max(5.0, 0.35 * n + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    try:
        return _replace(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def top_k_rows(names: list[str], views: list[int], probs: torch.Tensor, classes: list[str], k: int) -> list[list]:
    """CSV rows `path, views, label_1, prob_1, …` (probabilities over all classes, then the top k)."""
    k = min(k, len(classes))
    top = probs.topk(k, dim=-1)
    return [[name, n] + [x for i, p in zip(idx, val) for x in (classes[i], f"{p:.6f}")]
            for name, n, idx, val in zip(names, views, top.indices.tolist(), top.values.tolist())]


def top_k_header(k: int, num_classes: int) -> list[str]:
    return ["path", "views"] + [x for r in range(1, min(k, num_classes) + 1) for x in (f"label_{r}", f"prob_{r}")]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    return _replace(path, write)


def json_safe(value):
    """`value` with every NaN / ±inf float as None: strict JSON (`null`), which every reader parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, value) -> Path:
    text = json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"
    return _replace(path, lambda tmp: tmp.write_text(text))


def _replace(path: Path, write) -> Path:
    """`write(tmp)` next to `path`, then renamed onto it; the temp file never outlives a failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
