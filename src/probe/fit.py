"""`vjepa2_probe.py train` as plain functions: labels + feature folders → a plan (checked before
any output is touched) → a trained probe folder (probe.pt, classes.json, splits.csv, history.json)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from src.errors import ConfigError, UsageError
from src.features import claim_output
from src.guards import refuse_output_over_input
from src.probe.data import Clip, FeatureIndex, ViewReader, clip_views, resolve_clips, split_clips, survey_views
from src.probe.labels import file_digest, listed, read_labels
from src.probe.model import ProbeConfig, save_probe
from src.probe.report import write_csv, write_json
from src.probe.train import ProbeTrainer, TrainSettings

logger = logging.getLogger(__name__)


@dataclass
class TrainingPlan:
    """What a training run reads, checked: the clips, their split, the features' encoder and shape."""

    labels: Path
    features: list[str]
    classes: list[str]
    clips: list[Clip]
    train: list[Clip]
    val: list[Clip]
    identity: dict
    extraction: dict
    tokens: int
    width: int
    manifests: list[Path]

    def inputs(self) -> list[tuple[str, Path]]:
        """Every file this run reads: the labels, the manifests, the feature files."""
        views = sorted({ref.file for clip in self.clips for ref in clip.views})
        return ([("--labels", self.labels)] + [("a manifest", m) for m in self.manifests]
                + [("a feature file", f) for f in views])


OUTPUT_NAMES = ("probe.pt", "classes.json", "splits.csv", "history.json", "train_state.pt")


@dataclass
class TrainingResult:
    probe_path: Path
    classes_path: Path
    best: dict  # val_top1, val_loss, lr, weight_decay, epoch (no weights)
    epochs_run: int
    already_done: bool = False


def plan_training(labels: str | os.PathLike, features: list[str], val_fraction: float, seed: int) -> TrainingPlan:
    """Read the labels, find every clip's views, split, and survey the features (one pass)."""
    rows = read_labels(labels)
    classes = sorted({r.label for r in rows})
    if len(classes) < 2:
        raise UsageError(f"{labels}: only one class ('{classes[0]}'); a probe needs at least two")
    index = FeatureIndex(features)
    clips = resolve_clips(rows, index, classes, labels)
    train, val = split_clips(clips, val_fraction, seed)
    missing = sorted(set(classes) - {classes[c.label] for c in train})
    if missing:
        raise UsageError(f"class(es) with no training clip: {listed(missing)} (label more clips or change the split)")
    views = [ref for clip in clips for ref in clip.views]
    identity, extraction, (tokens, width) = survey_views(views, ViewReader())
    logger.info("%d classes; %d train clips (%d views), %d val clips (%d views); features %d tokens × %d from %s",
                len(classes), len(train), len(clip_views(train)), len(val), len(clip_views(val)), tokens, width,
                identity.get("model_name"))
    return TrainingPlan(Path(labels), [str(f) for f in features], classes, clips, train, val, identity, extraction,
                        tokens, width, index.manifest_paths)


def train_probe(plan: TrainingPlan, out: Path, settings: TrainSettings, device: torch.device, dtype: torch.dtype,
                depth: int = 4, num_heads: int = 16, overwrite: bool = False) -> TrainingResult:
    """Train (or resume, or find done) the probe of `plan` in the folder `out`. One run per folder
    at a time: a second is refused while the first holds the folder's claim."""
    refuse_output_over_input([("the output", out / name) for name in OUTPUT_NAMES], plan.inputs())
    # the claim also removes a state file's temp copy left by a run killed while saving
    with claim_output(out / "train_state.pt") as held:
        if not held:
            raise ConfigError(f"--output_dir {out}: another `vjepa2_probe.py train` is writing there now; wait for "
                              "it to finish (rerunning then resumes or finds it done) or use another --output_dir")
        return _train_in(plan, out, settings, device, dtype, depth, num_heads, overwrite)


def _train_in(plan: TrainingPlan, out: Path, settings: TrainSettings, device: torch.device, dtype: torch.dtype,
              depth: int, num_heads: int, overwrite: bool) -> TrainingResult:
    config = ProbeConfig(embed_dim=plan.width, num_classes=len(plan.classes), depth=depth, num_heads=num_heads)
    fingerprint = {
        "labels_sha256": file_digest(plan.labels), "probe": asdict(config),
        "settings": {k: v for k, v in vars(settings).items() if k != "num_workers"},
        "train": [c.path for c in plan.train], "val": [c.path for c in plan.val],
    }
    probe_path, state_path, classes_path = out / "probe.pt", out / "train_state.pt", out / "classes.json"
    if probe_path.exists() and not overwrite:
        done = torch.load(probe_path, map_location="cpu", weights_only=True).get("training", {})
        if done.get("fingerprint") != fingerprint:
            raise UsageError(f"{probe_path}: trained with other labels, features or settings; "
                             "use another --output_dir or pass --overwrite")
        return TrainingResult(probe_path, classes_path, done["best"], done.get("epochs_run", 0), already_done=True)
    if overwrite:
        state_path.unlink(missing_ok=True)
    trainer = ProbeTrainer(config, settings, plan.train, plan.val, device, dtype, state_path, fingerprint)
    trainer.resume()
    logger.info("training %d candidate(s) (lr × weight decay) for up to %d epochs on %s (%s)",
                len(trainer.candidates), settings.epochs, device, str(dtype).removeprefix("torch."))
    state = trainer.run()

    best = state.best
    model = trainer.candidates[0].model
    model.load_state_dict(best["state_dict"])
    summary = {k: v for k, v in best.items() if k != "state_dict"}
    training = {"fingerprint": fingerprint, "best": summary, "epochs_run": state.epoch, "labels": str(plan.labels),
                "features": plan.features}
    classes = plan.classes
    write_csv(out / "splits.csv", ["path", "label", "split"], [[c.path, classes[c.label], c.split] for c in plan.clips])
    write_json(classes_path, {str(i): name for i, name in enumerate(classes)})
    write_json(out / "history.json", state.history)
    save_probe(probe_path, model, config, classes, plan.identity, plan.extraction, training)
    state_path.unlink(missing_ok=True)
    return TrainingResult(probe_path, classes_path, summary, state.epoch)
