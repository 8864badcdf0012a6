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

from src import cli
from src.guards import refuse_folder_as_file
from src.probe import (
    SPLITS, Runtime, TrainSettings, evaluate_probe, feature_sources, labelled_clips, listed, load_probe, plan_training,
    predict, train_probe,
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
        "--num_workers", type=int, default=None, help="feature-loading workers (default: 0 on CPU, one per core given less one on GPU)")
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


# ----------------------------------------------------------------------------- commands
def _runtime(args) -> Runtime:
    device = cli.resolve_device(args.device)
    workers = default_num_workers(device) if args.num_workers is None else args.num_workers
    return Runtime(device, cli.resolve_dtype(args.dtype, device), getattr(args, "batch_size", 32), workers)


def train_command(args) -> int:
    runtime = _runtime(args)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lrs=tuple(args.lr),
                             weight_decays=tuple(args.weight_decay), warmup_epochs=args.warmup_epochs,
                             patience=args.patience, class_weights=args.class_weights, seed=args.seed,
                             num_workers=runtime.num_workers)
    plan = plan_training(args.labels, args.features, args.val_fraction, args.seed)
    out = cli.check_output_dir(args.output_dir)
    result = train_probe(plan, out, settings, runtime.device, runtime.dtype, depth=args.depth,
                         num_heads=args.num_heads, overwrite=args.overwrite)
    best = result.best
    if result.already_done:
        print(f"done already: {result.probe_path} (val top-1 {best['val_top1']:.3f}); --overwrite trains again")
    else:
        print(f"done: {result.probe_path}: val top-1 {best['val_top1']:.3f} (lr {best['lr']:g}, weight decay "
              f"{best['weight_decay']:g}, epoch {best['epoch']} of {result.epochs_run}); labels: {result.classes_path}")
    return cli.EXIT_OK


def eval_command(args) -> int:
    probe = load_probe(args.probe)
    clips = labelled_clips(probe, args.labels, args.features, args.split)
    out = cli.check_output_dir(args.output_dir)
    metrics = evaluate_probe(probe, clips, _runtime(args), out, args.labels, args.split, args.top_k)
    print(f"{metrics['clips']} clips: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}, "
          f"mean per-class {metrics['mean_per_class']:.4f}")
    width = max(len(c) for c in probe.classes)
    for name, n, acc in zip(probe.classes, metrics["support"], metrics["per_class"]):
        print(f"  {name:<{width}}  {n:>5} clips  top-1 {'-' if n == 0 else f'{acc:.3f}'}")
    print(f"→ {out}/metrics.json, per_class.csv, confusion_matrix.png, predictions.csv")
    return cli.EXIT_OK


def predict_command(args) -> int:
    if not args.features and not args.inputs:
        raise cli.UsageError("nothing to classify: give --features (folders or feature files) or --inputs (raw)")
    output = refuse_folder_as_file(args.output, "--output")
    probe = load_probe(args.probe)
    sources = feature_sources(args.features)
    cli.check_output_dir(output.parent)
    count, views = predict(probe, sources, args.inputs, _runtime(args), output, args.top_k, listed(args.features, 3),
                           model=args.model, checkpoint_key=args.checkpoint_key, video_backend=args.video_backend)
    print(f"done: {count} inputs ({views} views) classified → {output}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    for name in ("batch_size", "top_k", "epochs", "depth", "num_heads"):
        if getattr(args, name, 1) <= 0:
            raise cli.UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    return {"train": train_command, "eval": eval_command, "predict": predict_command}[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
