#!/usr/bin/env python
r"""Attentive probes on your own labels, trained on stored V-JEPA 2 features (the encoder runs once).

    python vjepa2_probe.py train --labels labels.csv --features feats/ --output_dir probe/
    python vjepa2_probe.py eval --probe probe/probe.pt --labels test.csv --features feats/ --output_dir probe/eval
    python vjepa2_probe.py predict --probe probe/probe.pt --features new_feats/ --output predictions.csv

labels.csv: `path,label[,split]`, one row per clip; `path` as the extractors record it in
manifest.jsonl: a video or frame folder (all its windows are views of one clip), one window
(`clip.mp4#window3`) or an image of `vjepa2_extractor.py`. The probe file is in the original
format (`{"classifiers": [state_dict]}`) plus the label map and the encoder's `model_info`, so
`vjepa2_demo.py --probe probe/probe.pt --classes probe/classes.json` runs it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from src import cli
from src.features import load_chunk, load_features
from src.inference import ClipEncoder, stored_layers
from src.models.weights import resolve_spec_kind
from src.probe import (
    SPLITS, FeatureIndex, FeatureRef, ProbeConfig, ProbeTrainer, TrainSettings, ViewDataset, ViewReader,
    classification_metrics, clip_views, collate_views, encode_raw_input, encoder_identity, evaluate_clips, file_digest, load_probe, plot_confusion,
    read_labels, resolve_clips, save_probe, check_features_match, split_clips, survey_views, top_k_header,
    top_k_rows, write_csv, write_json,
)
from src.windows import default_num_workers

logger = logging.getLogger("vjepa2_probe")

DEFAULTS = TrainSettings()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    device = argparse.ArgumentParser(add_help=False)
    group = device.add_argument_group("device")
    cli.add_device_arguments(group)
    group.add_argument(
        "--num_workers", type=int, default=None, help="feature-loading workers (default: 0 on CPU, min(4, cores-1) on GPU)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[device], formatter_class=cli.HelpFormatter,
                                help="labels + feature folders → probe", description="Train a probe on stored features.")
    data = train.add_argument_group("data")
    data.add_argument("--labels", required=True, help="CSV path,label[,split]")
    data.add_argument("--features", action="append", required=True, help="feature folder with manifests (repeatable)")
    data.add_argument("--output_dir", required=True, help="probe.pt, classes.json, splits.csv, history.json")
    data.add_argument("--val_fraction", type=float, default=0.2,
                      help="validation share of each class's videos when the CSV has no split column")
    data.add_argument("--seed", type=int, default=DEFAULTS.seed, help="validation split, initial weights, batch order (default: %(default)s)")
    model = train.add_argument_group("probe and optimisation")
    model.add_argument("--depth", type=int, default=4, help="probe blocks (the last one cross-attends)")
    model.add_argument("--num_heads", type=int, default=16, help="probe attention heads")
    model.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the training views")
    model.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="views per step")
    model.add_argument("--lr", type=float, nargs="+", default=list(DEFAULTS.lrs),
                       help="peak learning rates: each with each --weight_decay is a candidate, trained together")
    model.add_argument("--weight_decay", type=float, nargs="+", default=list(DEFAULTS.weight_decays),
                       help="AdamW weight decays")
    model.add_argument("--warmup_epochs", type=float, default=DEFAULTS.warmup_epochs,
                       help="linear warm-up, then cosine decay to 0")
    model.add_argument("--patience", type=int, default=DEFAULTS.patience,
                       help="stop after this many epochs without a better validation top-1 (0: never)")
    model.add_argument("--class_weights", choices=["balanced", "none"], default=DEFAULTS.class_weights,
                       help="loss weights: balanced = inversely proportional to class frequency")
    model.add_argument("--overwrite", action="store_true", help="train again from scratch")

    evaluate = commands.add_parser("eval", parents=[device], formatter_class=cli.HelpFormatter,
                                   help="top-1/top-5, per-class accuracy, confusion matrix",
                                   description="Evaluate a probe on labelled stored features.")
    evaluate.add_argument("--probe", required=True)
    evaluate.add_argument("--labels", required=True, help="CSV path,label[,split]")
    evaluate.add_argument("--features", action="append", required=True, help="feature folder (repeatable)")
    evaluate.add_argument("--split", choices=[*SPLITS, "all"], default="all",
                          help="rows of this split only (the CSV needs a split column)")
    evaluate.add_argument("--output_dir", required=True,
                          help="metrics.json, per_class.csv, confusion_matrix.png, predictions.csv")
    evaluate.add_argument("--batch_size", type=int, default=32, help="views per forward pass")
    evaluate.add_argument("--top_k", type=int, default=5, help="labels per clip in predictions.csv")

    predict = commands.add_parser("predict", parents=[device, cli.video_parser()], formatter_class=cli.HelpFormatter,
                                  help="feature folders/files → CSV of top-k labels",
                                  description="Classify stored features with a probe.")
    predict.add_argument("--probe", required=True)
    predict.add_argument("--features", action="append", default=[],
                         help="feature folder (one row per video, frame folder or image) or feature file (repeatable)")
    predict.add_argument("--inputs", action="append", default=[],
                         help="raw video, frame folder or image, extracted on the fly with the probe's encoder (repeatable)")
    predict.add_argument("--model", default=None,
                         help="encoder for --inputs (default: the spec recorded in the probe; must be the same encoder)")
    predict.add_argument("--checkpoint_key", default=None,
                         help="entry of an original .pt to load for --inputs (default: the one Meta's code reads)")
    predict.add_argument("--output", required=True, help="CSV: path, views, label_1, prob_1, …")
    predict.add_argument("--batch_size", type=int, default=32, help="views per forward pass")
    predict.add_argument("--top_k", type=int, default=5, help="labels per input")
    return parser


# ----------------------------------------------------------------------------- train
def train_command(args) -> int:
    device = cli.resolve_device(args.device)
    dtype = cli.resolve_dtype(args.dtype, device)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lrs=tuple(args.lr),
                             weight_decays=tuple(args.weight_decay), warmup_epochs=args.warmup_epochs,
                             patience=args.patience, class_weights=args.class_weights, seed=args.seed,
                             num_workers=default_num_workers(device) if args.num_workers is None else args.num_workers)
    rows = read_labels(args.labels)
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise cli.UsageError(f"{args.labels}: only one class ('{classes[0]}'); a probe needs at least two")
    clips = resolve_clips(rows, FeatureIndex(args.features), classes, args.labels)
    train, val = split_clips(clips, args.val_fraction, args.seed)
    missing = sorted(set(classes) - {classes[c.label] for c in train})
    if missing:
        raise cli.UsageError(f"class(es) with no training clip: {', '.join(missing)} (label more clips or change the split)")
    views = [ref for clip in clips for ref in clip.views]
    identity, extraction, (tokens, width) = survey_views(views, ViewReader())
    logger.info("%d classes; %d train clips (%d views), %d val clips (%d views); features %d tokens × %d from %s",
                len(classes), len(train), len(clip_views(train)), len(val), len(clip_views(val)), tokens, width,
                identity.get("model_name"))
    out = cli.check_output_dir(args.output_dir)
    config = ProbeConfig(embed_dim=width, num_classes=len(classes), depth=args.depth, num_heads=args.num_heads)
    fingerprint = {
        "labels_sha256": file_digest(args.labels), "probe": asdict(config),
        "settings": {k: v for k, v in vars(settings).items() if k != "num_workers"},
        "train": [c.path for c in train], "val": [c.path for c in val],
    }
    probe_path, state_path = out / "probe.pt", out / "train_state.pt"
    if probe_path.exists() and not args.overwrite:
        done = torch.load(probe_path, map_location="cpu", weights_only=True).get("training", {})
        if done.get("fingerprint") != fingerprint:
            raise cli.UsageError(f"{probe_path}: trained with other labels, features or settings; "
                                 "use another --output_dir or pass --overwrite")
        print(f"done already: {probe_path} (val top-1 {done['best']['val_top1']:.3f}); --overwrite trains again")
        return cli.EXIT_OK
    if args.overwrite:
        state_path.unlink(missing_ok=True)
    trainer = ProbeTrainer(config, settings, train, val, device, dtype, state_path, fingerprint)
    trainer.resume()
    logger.info("training %d candidate(s) (lr × weight decay) for up to %d epochs on %s (%s)",
                len(trainer.candidates), settings.epochs, device, str(dtype).removeprefix("torch."))
    state = trainer.run()

    best = state.best
    model = trainer.candidates[0].model
    model.load_state_dict(best["state_dict"])
    summary = {k: v for k, v in best.items() if k != "state_dict"}
    training = {"fingerprint": fingerprint, "best": summary, "epochs_run": state.epoch, "labels": str(args.labels),
                "features": [str(f) for f in args.features]}
    write_csv(out / "splits.csv", ["path", "label", "split"], [[c.path, classes[c.label], c.split] for c in clips])
    write_json(out / "classes.json", {str(i): name for i, name in enumerate(classes)})
    write_json(out / "history.json", state.history)
    save_probe(probe_path, model, config, classes, identity, extraction, training)
    state_path.unlink(missing_ok=True)
    print(f"done: {probe_path}: val top-1 {best['val_top1']:.3f} (lr {best['lr']:g}, weight decay "
          f"{best['weight_decay']:g}, epoch {best['epoch']} of {state.epoch}); labels: {out / 'classes.json'}")
    return cli.EXIT_OK


# ----------------------------------------------------------------------------- eval / predict
def _classify(probe, clips_views: list[list[FeatureRef]], labels: list[int], args, where: str) -> torch.Tensor:
    """Clip probabilities `[clips, C]` (views averaged), after refusing features of another encoder."""
    device = cli.resolve_device(args.device)
    dtype = cli.resolve_dtype(args.dtype, device)
    identity, extraction, _ = survey_views([r for views in clips_views for r in views], ViewReader())
    check_features_match(probe, identity, extraction, where)
    items = [(ref, label, i) for i, (views, label) in enumerate(zip(clips_views, labels)) for ref in views]
    workers = default_num_workers(device) if args.num_workers is None else args.num_workers
    loader = torch.utils.data.DataLoader(ViewDataset(items), batch_size=args.batch_size, num_workers=workers,
                                         collate_fn=collate_views)
    return evaluate_clips([probe.model.to(device)], loader, len(clips_views), len(probe.classes), device, dtype)[0]


def eval_command(args) -> int:
    probe = load_probe(args.probe)
    rows = read_labels(args.labels)
    if args.split != "all":
        if not any(r.split for r in rows):
            raise cli.UsageError(f"{args.labels}: no split column, so --split {args.split} selects nothing")
        rows = [r for r in rows if r.split == args.split]
        if not rows:
            raise cli.UsageError(f"{args.labels}: no rows in split '{args.split}'")
    unknown = sorted({r.label for r in rows} - set(probe.classes))
    if unknown:
        raise cli.UsageError(f"{args.labels}: label(s) the probe does not know: {', '.join(unknown)} "
                             f"(it knows {', '.join(probe.classes)})")
    clips = resolve_clips(rows, FeatureIndex(args.features), probe.classes, args.labels)
    out = cli.check_output_dir(args.output_dir)
    labels = [c.label for c in clips]
    probs = _classify(probe, [c.views for c in clips], labels, args, args.labels)
    metrics = classification_metrics(probs, torch.tensor(labels), len(probe.classes))
    write_csv(out / "predictions.csv", top_k_header(args.top_k, len(probe.classes)),
              top_k_rows([c.path for c in clips], [len(c.views) for c in clips], probs, probe.classes, args.top_k))
    write_csv(out / "per_class.csv", ["class", "clips", "top1"],
              [[name, n, "" if n == 0 else f"{acc:.4f}"]
               for name, n, acc in zip(probe.classes, metrics["support"], metrics["per_class"])])
    write_json(out / "metrics.json", {"probe": str(args.probe), "labels": str(args.labels), "split": args.split,
                                      "classes": probe.classes,
                                      **{k: v for k, v in metrics.items() if k not in ("per_class",)}})
    plot_confusion(metrics["confusion"], probe.classes, out / "confusion_matrix.png",
                   f"{Path(args.labels).name} ({args.split}): top-1 {metrics['top1']:.3f}")
    print(f"{metrics['clips']} clips: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}, "
          f"mean per-class {metrics['mean_per_class']:.4f}")
    width = max(len(c) for c in probe.classes)
    for name, n, acc in zip(probe.classes, metrics["support"], metrics["per_class"]):
        print(f"  {name:<{width}}  {n:>5} clips  top-1 {'-' if n == 0 else f'{acc:.3f}'}")
    print(f"→ {out}/metrics.json, per_class.csv, confusion_matrix.png, predictions.csv")
    return cli.EXIT_OK


def feature_file_views(path: Path) -> dict[str, list[FeatureRef]]:
    """Views of one feature file, by the input they describe (a window's video or frame folder,
    a chunk's images)."""
    try:
        meta = load_features(path).get("metadata") or {}
    except ValueError:  # not a window record: a chunk of images, or not a feature file at all
        try:
            return {key: [FeatureRef(path, key=key)] for key in load_chunk(path)}
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
    return {meta.get("video_path") or meta.get("frame_dir") or str(path): [FeatureRef(path)]}


def classify_raw_inputs(probe, args) -> tuple[list[str], list[int], torch.Tensor]:
    """(names, views, probabilities) for raw inputs, encoded in memory by the probe's encoder."""
    for entry in args.inputs:
        if not Path(entry).exists():
            raise FileNotFoundError(f"{entry}: input not found")
    device = cli.resolve_device(args.device)
    window = probe.extraction.get("num_input_frames") or 16
    spec = args.model or probe.encoder.get("model_name", "")
    try:
        # a .pt's shapes cannot tell 16 heads from 22: the recorded count (other specs carry their own)
        heads = probe.encoder.get("num_heads") if resolve_spec_kind(spec) == "checkpoint" else None
        encoder = ClipEncoder(spec, device=str(device), dtype=args.dtype, img_size=probe.extraction.get("img_size"),
                              checkpoint_key=args.checkpoint_key, num_heads=heads,
                              layers=stored_layers(probe.encoder))  # the levels the probe was trained on
    except ValueError as exc:
        raise cli.UsageError(f"{exc} (the encoder for --inputs; pass --model)") from None
    check_features_match(probe, encoder_identity(encoder.describe(window)), {}, f"--model {encoder.spec}")
    model = probe.model.to(device)
    names, views, probs = [], [], []
    for entry in args.inputs:
        try:
            feats = encode_raw_input(Path(entry), encoder, window, probe.extraction.get("frame_step", 1), args.batch_size,
                                     args.video_backend)
        except (ValueError, OSError) as exc:
            raise cli.UsageError(str(exc) if str(exc).startswith(entry) else f"{entry}: {exc}") from None
        with torch.inference_mode():
            probs.append(model(feats.to(device)).float().softmax(-1).mean(0).cpu())  # views averaged
        names.append(entry)
        views.append(len(feats))
        logger.info("%s: %d view(s) encoded", entry, len(feats))
    return names, views, torch.stack(probs)


def predict_command(args) -> int:
    if not args.features and not args.inputs:
        raise cli.UsageError("nothing to classify: give --features (folders or feature files) or --inputs (raw)")
    probe = load_probe(args.probe)
    sources: dict[str, list[FeatureRef]] = {}
    folders = [f for f in args.features if Path(f).is_dir()]
    for entry in args.features:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"{path}: feature folder or file not found")
        if path.is_file():
            for name, views in feature_file_views(path).items():
                sources.setdefault(name, []).extend(views)
    if folders:
        for name, views in FeatureIndex(folders).sources.items():
            sources.setdefault(name, []).extend(views)
    output = Path(args.output)
    cli.check_output_dir(output.parent)
    names = sorted(sources)
    refs = [sorted(set(sources[n]), key=lambda r: (str(r.file), r.key or "")) for n in names]
    views = [len(r) for r in refs]
    probs = _classify(probe, refs, [0] * len(names), args, ", ".join(args.features)) if names else None
    if args.inputs:
        raw_names, raw_views, raw_probs = classify_raw_inputs(probe, args)
        names, views = names + raw_names, views + raw_views
        probs = raw_probs if probs is None else torch.cat([probs, raw_probs])
    write_csv(output, top_k_header(args.top_k, len(probe.classes)),
              top_k_rows(names, views, probs, probe.classes, args.top_k))
    print(f"done: {len(names)} inputs ({sum(views)} views) classified → {output}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    for name in ("batch_size", "top_k", "epochs", "depth", "num_heads"):
        if getattr(args, name, 1) <= 0:
            raise cli.UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    return {"train": train_command, "eval": eval_command, "predict": predict_command}[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
