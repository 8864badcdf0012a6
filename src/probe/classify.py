"""`vjepa2_probe.py eval` and `predict` as plain functions: a probe on stored features (views
averaged per clip) or on raw inputs encoded in memory with the probe's encoder."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from src.errors import UsageError
from src.guards import refuse_output_over_input
from src.features import load_chunk, load_features
from src.probe.data import Clip, FeatureIndex, FeatureRef, ViewDataset, ViewReader, collate_views, encoder_identity, \
    resolve_clips, survey_views
from src.probe.encode import encode_raw_input
from src.probe.labels import listed, read_labels
from src.probe.model import LoadedProbe, check_features_match
from src.probe.report import classification_metrics, plot_confusion, top_k_header, top_k_rows, write_csv, write_json
from src.probe.train import evaluate_clips

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where and how the probe runs."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int = 32
    num_workers: int = 0


def classify_views(probe: LoadedProbe, clips_views: list[list[FeatureRef]], runtime: Runtime, where: str) -> torch.Tensor:
    """Clip probabilities `[clips, C]` (views averaged), after refusing features of another encoder."""
    identity, extraction, _ = survey_views([r for views in clips_views for r in views], ViewReader())
    check_features_match(probe, identity, extraction, where)
    items = [(ref, 0, i) for i, views in enumerate(clips_views) for ref in views]
    loader = DataLoader(ViewDataset(items), batch_size=runtime.batch_size, num_workers=runtime.num_workers,
                        collate_fn=collate_views)
    return evaluate_clips([probe.model.to(runtime.device)], loader, len(clips_views), len(probe.classes),
                          runtime.device, runtime.dtype)[0]


# ----------------------------------------------------------------------------- eval
EVAL_OUTPUTS = ("metrics.json", "per_class.csv", "confusion_matrix.png", "predictions.csv")


def clip_inputs(clips: list[Clip]) -> list[tuple[str, Path]]:
    """The feature files and manifests the clips are read from."""
    files = sorted({ref.file for clip in clips for ref in clip.views})
    manifests = sorted({f.parent / "manifest.jsonl" for f in files})
    return [("a feature file", f) for f in files] + [("a manifest", m) for m in manifests]


def labelled_clips(probe: LoadedProbe, labels: str | os.PathLike, features: list[str], split: str) -> list[Clip]:
    """The clips of a labels CSV (of one split, or 'all') the probe can be evaluated on."""
    rows = read_labels(labels)
    if split != "all":
        if not any(r.split for r in rows):
            raise UsageError(f"{labels}: no split column, so --split {split} selects nothing")
        rows = [r for r in rows if r.split == split]
        if not rows:
            raise UsageError(f"{labels}: no rows in split '{split}'")
    unknown = sorted({r.label for r in rows} - set(probe.classes))
    if unknown:
        raise UsageError(f"{labels}: label(s) the probe does not know: {listed(unknown)} "
                         f"(it knows {listed(probe.classes)})")
    return resolve_clips(rows, FeatureIndex(features), probe.classes, labels)


def evaluate_probe(probe: LoadedProbe, clips: list[Clip], runtime: Runtime, out: Path, labels: str | os.PathLike,
                   split: str, top_k: int) -> dict:
    """Metrics of the probe on `clips`; metrics.json, per_class.csv, confusion_matrix.png and
    predictions.csv written to `out` (refused, before any work, where one would replace an input)."""
    refuse_output_over_input([("the output", out / name) for name in EVAL_OUTPUTS],
                             [("--probe", probe.path), ("--labels", Path(labels)), *clip_inputs(clips)])
    targets = [c.label for c in clips]
    probs = classify_views(probe, [c.views for c in clips], runtime, str(labels))
    metrics = classification_metrics(probs, torch.tensor(targets), len(probe.classes))
    write_csv(out / "predictions.csv", top_k_header(top_k, len(probe.classes)),
              top_k_rows([c.path for c in clips], [len(c.views) for c in clips], probs, probe.classes, top_k))
    write_csv(out / "per_class.csv", ["class", "clips", "top1"],
              [[name, n, "" if n == 0 else f"{acc:.4f}"]
               for name, n, acc in zip(probe.classes, metrics["support"], metrics["per_class"])])
    write_json(out / "metrics.json", {"probe": str(probe.path), "labels": str(labels), "split": split,
                                      "classes": probe.classes,
                                      **{k: v for k, v in metrics.items() if k not in ("per_class",)}})
    plot_confusion(metrics["confusion"], probe.classes, out / "confusion_matrix.png",
                   f"{Path(labels).name} ({split}): top-1 {metrics['top1']:.3f}")
    return metrics


# ----------------------------------------------------------------------------- predict
def feature_file_views(path: Path) -> dict[str, list[FeatureRef]]:
    """Views of one feature file, by the input they describe (a window's video or frame folder,
    a chunk's images)."""
    try:
        meta = load_features(path).get("metadata") or {}
    except ValueError:  # not a window record: a chunk of images, or not a feature file at all
        try:
            return {key: [FeatureRef(path, key=key)] for key in load_chunk(path)}
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return {meta.get("video_path") or meta.get("frame_dir") or str(path): [FeatureRef(path)]}


def feature_sources(entries: list[str]) -> dict[str, list[FeatureRef]]:
    """Inputs → their views, from feature folders (their manifests) and feature files."""
    sources: dict[str, list[FeatureRef]] = {}
    folders = [f for f in entries if Path(f).is_dir()]
    for entry in entries:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"{path}: feature folder or file not found")
        if path.is_file():
            for name, views in feature_file_views(path).items():
                sources.setdefault(name, []).extend(views)
    if folders:
        for name, views in FeatureIndex(folders).sources.items():
            sources.setdefault(name, []).extend(views)
    return {name: sorted(set(refs), key=lambda r: (str(r.file), r.key or "")) for name, refs in sorted(sources.items())}


def classify_raw_inputs(probe: LoadedProbe, inputs: list[str], runtime: Runtime, model: str | None = None,
                        checkpoint_key: str | None = None, video_backend: str = "auto"
                        ) -> tuple[list[str], list[int], torch.Tensor]:
    """(names, views, probabilities) for raw inputs, encoded in memory by the probe's encoder."""
    from src.inference import ClipEncoder, stored_layers
    from src.models.weights import resolve_spec_kind

    for entry in inputs:
        if not Path(entry).exists():
            raise FileNotFoundError(f"{entry}: input not found")
    device = runtime.device
    window = probe.extraction.get("num_input_frames") or 16
    spec = model or probe.encoder.get("model_name", "")
    try:
        # a .pt's shapes cannot tell 16 heads from 22: the recorded count (other specs carry their own)
        heads = probe.encoder.get("num_heads") if resolve_spec_kind(spec) == "checkpoint" else None
        encoder = ClipEncoder(spec, device=str(device), dtype=_dtype_name(runtime.dtype),
                              img_size=probe.extraction.get("img_size"), checkpoint_key=checkpoint_key,
                              num_heads=heads, layers=stored_layers(probe.encoder))  # the levels the probe was trained on
    except ValueError as exc:
        raise UsageError(f"{exc} (the encoder for --inputs; pass --model)") from None
    check_features_match(probe, encoder_identity(encoder.describe(window)), {}, f"--model {encoder.spec}")
    classifier = probe.model.to(device)
    names, views, probs = [], [], []
    for entry in inputs:
        try:
            feats = encode_raw_input(Path(entry), encoder, window, probe.extraction.get("frame_step", 1),
                                     runtime.batch_size, video_backend)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc) if str(exc).startswith(entry) else f"{entry}: {exc}") from None
        with torch.inference_mode():
            probs.append(classifier(feats.to(device)).float().softmax(-1).mean(0).cpu())  # views averaged
        names.append(entry)
        views.append(len(feats))
        logger.info("%s: %d view(s) encoded", entry, len(feats))
    return names, views, torch.stack(probs)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "auto")


def predict(probe: LoadedProbe, sources: dict[str, list[FeatureRef]], inputs: list[str], runtime: Runtime,
            output: Path, top_k: int, where: str, model: str | None = None, checkpoint_key: str | None = None,
            video_backend: str = "auto") -> tuple[int, int]:
    """Top-k labels of every source and raw input into the CSV `output`: (inputs, views)."""
    views_of = [Clip(name, 0, name, refs) for name, refs in sources.items()]
    refuse_output_over_input([("--output", output)], [("--probe", probe.path), *clip_inputs(views_of),
                                                      *(("an --inputs entry", Path(p)) for p in inputs)])
    names = list(sources)
    views = [len(sources[n]) for n in names]
    probs = classify_views(probe, [sources[n] for n in names], runtime, where) if names else None
    if inputs:
        raw_names, raw_views, raw_probs = classify_raw_inputs(probe, inputs, runtime, model, checkpoint_key, video_backend)
        names, views = names + raw_names, views + raw_views
        probs = raw_probs if probs is None else torch.cat([probs, raw_probs])
    write_csv(output, top_k_header(top_k, len(probe.classes)), top_k_rows(names, views, probs, probe.classes, top_k))
    return len(names), sum(views)
