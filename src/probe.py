"""Attentive probes on stored features: labels, feature lookup, splits, training, evaluation.

A *clip* is one labelled row of a labels CSV (`path,label[,split]`). Its path is an input as the
extractors record it in `manifest.jsonl`: a video or frame folder (all its windows), one window
(`video.mp4#window3`) or an image of a chunk. Each feature file (window or chunk entry) of a clip
is one *view*: training sees every view with the clip's label; evaluation averages the views'
class probabilities per clip, as the original multi-view evaluation does.

Features stream from disk through a DataLoader (nothing is held per clip), several
learning-rate/weight-decay candidates train together on the same batches, and the state after
every epoch is saved atomically, so a killed run resumes and ends with the same weights.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import os
import random
from collections import Counter, OrderedDict, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from src.errors import UsageError
from src.features import latest_status, load_chunk, load_features, save_object
from src.models.attentive_pooler import PROBE_NORM_EPS, AttentiveClassifier
from src.models.weights import load_classifier

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
PROBE_FORMAT = "vjepa2-probe"
# model_info keys that describe one extraction, not the encoder: they may differ between the
# features a probe was trained on and those it classifies (a warning, not a refusal)
EXTRACTION_KEYS = ("img_size", "num_input_frames", "num_output_temporal", "spatial_patches", "compute_dtype")


def _listed(items, limit: int = 10) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelRow:
    line: int
    path: str
    label: str
    split: str | None


def read_labels(path: str | os.PathLike) -> list[LabelRow]:
    """Rows of a `path,label[,split]` CSV (a header naming the columns is optional)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    with path.open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header, rows, first = [c.strip().lower() for c in rows[0]], rows[1:], 2
    else:
        header, first = ["path", "label", "split"][:max(len(r) for r in rows)] if rows else [], 1
    if not rows:
        raise UsageError(f"{path}: no labelled rows")
    has_split = "split" in header
    out, seen = [], {}
    for line, row in enumerate(rows, start=first):
        cells = [c.strip() for c in row] + [""] * 3
        item, label, split = cells[0], cells[1], cells[header.index("split")] if has_split else ""
        if not item or not label:
            raise UsageError(f"{path}:{line}: needs a path and a label, got {row}")
        if item in seen:
            raise UsageError(f"{path}:{line}: '{item}' is already labelled on line {seen[item]}")
        seen[item] = line
        if has_split and split not in SPLITS:
            raise UsageError(f"{path}:{line}: " + (f"split '{split}' is not one of {', '.join(SPLITS)}" if split else
                             f"no split, but other rows have one (give {' or '.join(SPLITS)} on every row)"))
        out.append(LabelRow(line, item, label, split or None))
    return out


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- feature lookup
@dataclass(frozen=True)
class FeatureRef:
    """One view: a window file (`key` None) or one image of a chunk file."""

    file: Path
    key: str | None = None


class FeatureIndex:
    """Inputs recorded in the manifests under feature folders → their feature files.

    Keys are the manifest's `input` strings (a window's `source#windowN` and its `source`), also
    as absolute paths, so a labels file may name an input as the extractor was given it or in full.
    """

    def __init__(self, folders: list[str | os.PathLike]):
        self.views: dict[str, list[FeatureRef]] = defaultdict(list)
        self.group: dict[str, str] = {}
        self.sources: dict[str, list[FeatureRef]] = defaultdict(list)  # as recorded: videos, folders, images
        self.manifests = 0
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: feature folder not found")
            manifests = sorted(folder.rglob("manifest.jsonl"))
            if not manifests:
                raise UsageError(f"{folder}: no manifest.jsonl under it (not an extractor's output folder)")
            for manifest in manifests:
                self._add_manifest(manifest)

    def _add_manifest(self, manifest: Path) -> None:
        self.manifests += 1
        for entry in latest_status(manifest).values():
            if entry.get("status") not in ("ok", "skipped") or not entry.get("output"):
                continue
            name, file = entry["input"], manifest.parent / Path(entry["output"]).name  # outputs sit by their manifest
            source, sep, _ = name.rpartition("#window")
            ref = FeatureRef(file) if sep else FeatureRef(file, key=name)
            self._add(name, ref, source if sep else name)
            self.sources[source if sep else name].append(ref)
            if sep:
                self._add(source, ref, source)

    def _add(self, name: str, ref: FeatureRef, source: str) -> None:
        for key in {os.path.normpath(name), _absolute(name)}:
            self.views[key].append(ref)
            self.group[key] = source

    def lookup(self, name: str) -> tuple[list[FeatureRef], str] | None:
        """(views sorted by file, the source they come from) for a labels-file path, or None."""
        for key in (os.path.normpath(name), _absolute(name)):
            if key in self.views:
                return sorted(set(self.views[key]), key=lambda r: (str(r.file), r.key or "")), self.group[key]
        return None


def _absolute(name: str) -> str:
    base, sep, window = name.partition("#window")
    return str(Path(base).expanduser().resolve()) + sep + window


@dataclass
class Clip:
    path: str
    label: int
    group: str
    views: list[FeatureRef]
    split: str | None = None


def resolve_clips(rows: list[LabelRow], index: FeatureIndex, classes: list[str], labels_path) -> list[Clip]:
    """Clips for labelled rows; paths with no features are listed in one error (never dropped)."""
    class_index = {name: i for i, name in enumerate(classes)}
    clips, unknown = [], []
    for row in rows:
        found = index.lookup(row.path)
        if found is None:
            unknown.append(f"{row.path} (line {row.line})")
            continue
        views, group = found
        clips.append(Clip(row.path, class_index[row.label], group, views, row.split))
    if unknown:
        raise UsageError(f"{labels_path}: {len(unknown)} path(s) have no features in the given folders' "
                         f"manifests: {_listed(unknown)}")
    return clips


def split_clips(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Train/val from the CSV's split column, else `val_fraction` of each class's source groups
    (windows of one video stay on one side), chosen with `seed`."""
    if any(c.split for c in clips):
        train, val = [c for c in clips if c.split == "train"], [c for c in clips if c.split == "val"]
    else:
        if not 0 < val_fraction < 1:
            raise UsageError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
        by_group: dict[str, list[Clip]] = defaultdict(list)
        for clip in clips:
            by_group[clip.group].append(clip)
        groups_of_class: dict[int, list[str]] = defaultdict(list)
        for group in sorted(by_group):
            majority = Counter(c.label for c in by_group[group]).most_common(1)[0][0]
            groups_of_class[majority].append(group)
        rng = random.Random(seed)
        val_groups = set()
        for label in sorted(groups_of_class):
            groups = groups_of_class[label]
            rng.shuffle(groups)
            count = round(val_fraction * len(groups)) if len(groups) > 1 else 0
            val_groups.update(groups[:max(1, count) if len(groups) > 1 else 0])
        train = [c for c in clips if c.group not in val_groups]
        val = [c for c in clips if c.group in val_groups]
        for clip in clips:
            clip.split = "val" if clip.group in val_groups else "train"
    for name, part in (("train", train), ("val", val)):
        if not part:
            raise UsageError(f"the {name} split is empty ({len(clips)} labelled clips; "
                             + ("label some rows 'train'/'val'" if any(c.split for c in clips) else
                                "use more clips or another --val_fraction") + ")")
    shared = {c.group for c in train} & {c.group for c in val}
    if shared:
        raise UsageError(f"windows of {len(shared)} source(s) are in both splits: {_listed(sorted(shared), 5)} "
                         "(give the split per video, or leave the split column out)")
    return train, val


# ----------------------------------------------------------------------------- reading features
class ViewReader:
    """Loads views as float32 `[N, D]`; keeps a few chunk files open (memory-mapped)."""

    def __init__(self, cached_chunks: int = 4):
        self._chunks: OrderedDict[Path, dict] = OrderedDict()
        self._cached = cached_chunks

    def entry(self, ref: FeatureRef) -> tuple[torch.Tensor, dict, dict]:
        """(features, model_info, metadata) of a view."""
        if ref.key is None:
            record = load_features(ref.file)
            return record["features"], record.get("model_info") or {}, record.get("metadata") or {}
        chunk = self._chunks.get(ref.file)
        if chunk is None:
            chunk = load_chunk(ref.file)
            self._chunks[ref.file] = chunk
            if len(self._chunks) > self._cached:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(ref.file)
        if ref.key not in chunk:
            raise ValueError(f"{ref.file}: has no entry '{ref.key}' (the manifest names it)")
        entry = chunk[ref.key]
        meta = entry.get("metadata") or {}
        return entry["features"], meta.get("model_info") or {}, meta

    def features(self, ref: FeatureRef) -> torch.Tensor:
        return self.entry(ref)[0].float()


def encoder_identity(info: dict) -> dict:
    """The parts of `model_info` that name the encoder (width, depth, generation, layers, …)."""
    return {k: v for k, v in info.items() if k not in EXTRACTION_KEYS}


def describe_difference(expected: dict, found: dict) -> str:
    keys = sorted(set(expected) | set(found))
    return ", ".join(f"{k} {found.get(k)!r} (probe: {expected.get(k)!r})" for k in keys if expected.get(k) != found.get(k))


def survey_views(refs: list[FeatureRef], reader: ViewReader, progress: bool | None = None
                 ) -> tuple[dict, dict, tuple[int, int]]:
    """One pass over every view before any training: (encoder identity, extraction settings,
    token shape). Views from two encoders, or with two token shapes, are refused."""
    from tqdm import tqdm

    identity = settings = shape = first = None
    for ref in tqdm(refs, desc="checking features", unit="view", disable=progress):
        name = f"{ref.file}" + (f" [{ref.key}]" if ref.key else "")
        try:
            feats, info, meta = reader.entry(ref)
        except (ValueError, OSError) as exc:  # a file deleted or damaged since extraction
            raise UsageError(str(exc) if str(exc).startswith(str(ref.file)) else f"{name}: {exc}") from None
        if feats.ndim != 2:
            raise UsageError(f"{name}: features of shape {list(feats.shape)}, expected [tokens, width]")
        if identity is None:
            identity, shape, first = encoder_identity(info), tuple(feats.shape), name
            settings = {k: info.get(k) for k in EXTRACTION_KEYS if k in info}
            if "frame_step" in meta:  # how video frames were sampled: predict on raw videos repeats it
                settings["frame_step"] = meta["frame_step"]
            continue
        if "frame_step" in meta and settings.get("frame_step", meta["frame_step"]) != meta["frame_step"]:
            logger.warning("%s: frame_step %s, but %s has %s", name, meta["frame_step"], first, settings["frame_step"])
        if encoder_identity(info) != identity:
            raise UsageError(f"{name}: features from another encoder than {first}: "
                             f"{describe_difference(identity, encoder_identity(info)).replace('probe:', 'first:')}")
        if tuple(feats.shape) != shape:
            raise UsageError(f"{name}: {list(feats.shape)} tokens×width, but {first} has {list(shape)} "
                             "(extract every clip with one --window / crop / --image_frames)")
    return identity or {}, settings or {}, shape or (0, 0)


class ViewDataset(Dataset):
    """Item i: (float32 features `[N, D]` of view i, its label, its clip's position)."""

    def __init__(self, views: list[tuple[FeatureRef, int, int]]):
        self.views, self.reader = views, ViewReader()

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int):
        ref, label, clip = self.views[i]
        return self.reader.features(ref), label, clip


def collate_views(items):
    feats, labels, clips = zip(*items)
    shapes = {f.shape for f in feats}
    batch = torch.stack(feats) if len(shapes) == 1 else list(feats)  # mixed token counts: one at a time
    return batch, torch.tensor(labels), torch.tensor(clips)


def clip_views(clips: list[Clip]) -> list[tuple[FeatureRef, int, int]]:
    return [(ref, clip.label, i) for i, clip in enumerate(clips) for ref in clip.views]


# ----------------------------------------------------------------------------- the probe
@dataclass
class ProbeConfig:
    """Architecture (the released one by default: 16 heads, depth 4, one query)."""

    embed_dim: int
    num_classes: int
    depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = PROBE_NORM_EPS


def build_probe(config: ProbeConfig) -> AttentiveClassifier:
    """A freshly initialised probe: truncated-normal (std 0.02) weights and query, zero biases."""
    if config.embed_dim % config.num_heads:
        raise UsageError(f"--num_heads {config.num_heads} does not divide the feature width {config.embed_dim}")
    model = AttentiveClassifier(embed_dim=config.embed_dim, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                                depth=config.depth, num_classes=config.num_classes, norm_eps=config.norm_eps)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.pooler.query_tokens, std=0.02)
    return model


def forward_batch(model: nn.Module, batch) -> torch.Tensor:
    """Logits `[B, C]` for a stacked batch, or for a list of views of differing token counts."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    return torch.cat([model(f.unsqueeze(0)) for f in batch])


def save_probe(path, model: AttentiveClassifier, config: ProbeConfig, classes: list[str], encoder_info: dict,
               extraction: dict, training: dict) -> Path:
    """The original format (`{"classifiers": [state_dict]}`, `module.` keys as released) plus our
    label map, the encoder the features came from and how the probe was trained."""
    state = {f"module.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return save_object({
        "classifiers": [state],
        "format": PROBE_FORMAT,
        "classes": list(classes),
        "probe_config": asdict(config),
        "encoder": encoder_info,
        "extraction": extraction,
        "training": training,
    }, path)


@dataclass
class LoadedProbe:
    model: AttentiveClassifier
    classes: list[str]
    encoder: dict
    extraction: dict
    training: dict
    path: Path


def load_probe(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedProbe:
    """A probe saved by `save_probe` (released probes lack the label map and encoder: refused here)."""
    path = Path(path)
    model = load_classifier(path, device=device)
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if meta.get("format") != PROBE_FORMAT or "classes" not in meta:
        raise UsageError(f"{path}: a probe without a label map or encoder record (not trained by vjepa2_probe.py "
                         "train); run released probes with vjepa2_demo.py --probe")
    return LoadedProbe(model.eval(), meta["classes"], meta.get("encoder") or {}, meta.get("extraction") or {},
                       meta.get("training") or {}, path)


def check_encoder_record(probe_path: str | os.PathLike, info: dict) -> None:
    """For the demo: refuse an encoder other than the one a probe trained by vjepa2_probe.py
    records (the fields both describe; not the crop, nor the name: the demo may load the same
    weights from another place); released probes record none and pass."""
    meta = torch.load(probe_path, map_location="cpu", weights_only=True)
    recorded = encoder_identity(meta.get("encoder") or {}) if isinstance(meta, dict) else {}
    shared = {k: info[k] for k in recorded if k in info and k != "model_name"}
    if shared != {k: recorded[k] for k in shared}:
        raise UsageError(f"{probe_path}: trained on features of another encoder: "
                         f"{describe_difference({k: recorded[k] for k in shared}, shared)}")


def check_features_match(probe: LoadedProbe, identity: dict, settings: dict, where: str) -> None:
    """Refuse features from another encoder than the probe's; warn on other extraction settings."""
    expected = encoder_identity(probe.encoder)
    if identity != expected:
        raise UsageError(f"{where}: features from another encoder than the probe {probe.path.name} was trained on: "
                         f"{describe_difference(expected, identity)}")
    settings = {k: v for k, v in settings.items() if k != "frame_step"}
    trained = {k: probe.extraction.get(k) for k in settings}
    if settings != trained:
        logger.warning("%s: extracted with %s; the probe was trained on %s", where, settings, trained)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 32
    lrs: tuple[float, ...] = (1e-3, 3e-4, 1e-4)
    weight_decays: tuple[float, ...] = (0.01, 0.1)
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.0
    patience: int = 5
    class_weights: str = "balanced"
    seed: int = 0
    num_workers: int = 0

    def candidates(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.lrs, self.weight_decays))


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_ratio: float) -> float:
    """Linear warm-up from 0, then cosine from `base_lr` to `final_ratio * base_lr`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    floor = final_ratio * base_lr
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def class_weight_tensor(labels: list[int], num_classes: int, mode: str) -> torch.Tensor | None:
    """'balanced': n / (C · n_c) per class (classes rare in training weigh more); 'none': None."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros(()))


def _make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "query_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "query_tokens" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


@dataclass
class Candidate:
    lr: float
    weight_decay: float
    model: AttentiveClassifier
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


@dataclass
class TrainState:
    """What a resumed run needs; saved after every epoch."""

    epoch: int = 0
    best: dict = field(default_factory=dict)  # top1, loss, epoch, candidate, state_dict
    history: list = field(default_factory=list)


def evaluate_clips(models: list[nn.Module], loader: DataLoader, num_clips: int, num_classes: int,
                   device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """Per model, clip probabilities `[num_clips, C]`: softmax over all classes per view, averaged
    over each clip's views."""
    sums = [torch.zeros(num_clips, num_classes, dtype=torch.float64) for _ in models]
    counts = torch.zeros(num_clips, dtype=torch.float64)
    for model in models:
        model.eval()
    with torch.inference_mode(), _autocast(device, dtype):
        for batch, _, clip in loader:
            batch = _to(batch, device)
            for total, model in zip(sums, models):
                probs = forward_batch(model, batch).float().softmax(-1).cpu().double()
                total.index_add_(0, clip, probs)
            counts.index_add_(0, clip, torch.ones(len(clip), dtype=torch.float64))
    return [(total / counts.clamp(min=1).unsqueeze(1)).float() for total in sums]


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return [f.to(device, non_blocking=True) for f in batch]


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def clip_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log of the averaged probability of the true class."""
    return float(-probs[torch.arange(len(labels)), labels].clamp(min=1e-12).log().mean())


def epoch_order(num_views: int, seed: int, epoch: int) -> list[int]:
    """The shuffled view order of one epoch: from (seed, epoch) alone, so a resumed run repeats it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_views, generator=generator).tolist()


class ProbeTrainer:
    """Trains the candidates together on `train`, picks the best on `val` (clip top-1, then loss).

    `state_path` holds the state after each finished epoch; an existing one with the same
    `fingerprint` is resumed.
    """

    def __init__(self, config: ProbeConfig, settings: TrainSettings, train: list[Clip], val: list[Clip],
                 device: torch.device, dtype: torch.dtype, state_path: Path, fingerprint: dict):
        self.config, self.settings, self.device, self.dtype = config, settings, device, dtype
        self.train_views, self.val_clips = clip_views(train), val
        self.state_path, self.fingerprint = state_path, fingerprint
        torch.manual_seed(settings.seed)  # same initial weights for every run with this seed
        self.candidates = []
        for lr, wd in settings.candidates():
            model = build_probe(config).to(device)
            self.candidates.append(Candidate(lr, wd, model, _make_optimizer(model, lr, wd),
                                             torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)))
        weights = class_weight_tensor([v[1] for v in self.train_views], config.num_classes, settings.class_weights)
        self.loss_weights = None if weights is None else weights.to(device)
        self.state = TrainState()
        self.steps_per_epoch = math.ceil(len(self.train_views) / settings.batch_size)
        self.val_loader = DataLoader(ViewDataset(clip_views(val)), batch_size=settings.batch_size,
                                     num_workers=settings.num_workers, collate_fn=collate_views,
                                     pin_memory=device.type == "cuda")

    # -- persistence
    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        saved = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != self.fingerprint:
            raise UsageError(f"{self.state_path}: an unfinished training run with other labels, features or "
                             "settings; use another --output_dir or pass --overwrite")
        for candidate, stored in zip(self.candidates, saved["candidates"]):
            candidate.model.load_state_dict(stored["model"])
            candidate.optimizer.load_state_dict(stored["optimizer"])
            candidate.scaler.load_state_dict(stored["scaler"])
        self.state = TrainState(saved["epoch"], saved["best"], saved["history"])
        logger.info("resuming from %s after epoch %d of %d", self.state_path, self.state.epoch, self.settings.epochs)
        return True

    def _save_state(self) -> None:
        save_object({
            "fingerprint": self.fingerprint,
            "epoch": self.state.epoch,
            "best": self.state.best,
            "history": self.state.history,
            "candidates": [{"model": c.model.state_dict(), "optimizer": c.optimizer.state_dict(),
                            "scaler": c.scaler.state_dict()} for c in self.candidates],
        }, self.state_path)

    # -- the loop
    def run(self, progress: bool | None = None) -> TrainState:
        from tqdm import tqdm

        s = self.settings
        while self.state.epoch < s.epochs and not self._stopped_early():
            epoch = self.state.epoch
            order = epoch_order(len(self.train_views), s.seed, epoch)
            dataset = ViewDataset(self.train_views)
            loader = DataLoader(dataset, batch_sampler=[order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size)],
                                num_workers=s.num_workers, collate_fn=collate_views, pin_memory=self.device.type == "cuda")
            losses = [0.0] * len(self.candidates)
            for c in self.candidates:
                c.model.train()
            with tqdm(total=len(order), desc=f"epoch {epoch + 1}/{s.epochs}", unit="view", disable=progress,
                      leave=False) as bar:
                for step, (batch, labels, _) in enumerate(loader):
                    batch, labels = _to(batch, self.device), labels.to(self.device)
                    global_step = epoch * self.steps_per_epoch + step
                    for k, c in enumerate(self.candidates):
                        losses[k] += self._step(c, batch, labels, global_step) * len(labels)
                    bar.update(len(labels))
            self._end_epoch(epoch, [loss / len(order) for loss in losses])
        return self.state

    def _step(self, c: Candidate, batch, labels: torch.Tensor, global_step: int) -> float:
        s = self.settings
        lr = lr_at(global_step, s.epochs * self.steps_per_epoch, round(s.warmup_epochs * self.steps_per_epoch),
                   c.lr, s.final_lr_ratio)
        for group in c.optimizer.param_groups:
            group["lr"] = lr
        with _autocast(self.device, self.dtype):
            logits = forward_batch(c.model, batch)
        loss = F.cross_entropy(logits.float(), labels, weight=self.loss_weights)
        c.optimizer.zero_grad(set_to_none=True)
        c.scaler.scale(loss).backward()
        c.scaler.step(c.optimizer)
        c.scaler.update()
        return float(loss.detach())

    def _end_epoch(self, epoch: int, train_losses: list[float]) -> None:
        labels = torch.tensor([c.label for c in self.val_clips])
        probs = evaluate_clips([c.model for c in self.candidates], self.val_loader, len(self.val_clips),
                               self.config.num_classes, self.device, self.dtype)
        results = []
        for k, (c, p) in enumerate(zip(self.candidates, probs)):
            top1 = float((p.argmax(-1) == labels).float().mean())
            results.append({"candidate": k, "lr": c.lr, "weight_decay": c.weight_decay, "train_loss": train_losses[k],
                            "val_top1": top1, "val_loss": clip_loss(p, labels)})
        best_now = max(results, key=lambda r: (r["val_top1"], -r["val_loss"]))
        best = self.state.best
        if not best or (best_now["val_top1"], -best_now["val_loss"]) > (best["val_top1"], -best["val_loss"]):
            model = self.candidates[best_now["candidate"]].model
            self.state.best = {**best_now, "epoch": epoch + 1,
                               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        self.state.history.append({"epoch": epoch + 1, "candidates": results})
        self.state.epoch = epoch + 1
        logger.info("epoch %d/%d: best candidate lr %g wd %g, val top-1 %.3f (loss %.3f); best so far %.3f (epoch %d)",
                    epoch + 1, self.settings.epochs, best_now["lr"], best_now["weight_decay"], best_now["val_top1"],
                    best_now["val_loss"], self.state.best["val_top1"], self.state.best["epoch"])
        self._save_state()

    def _stopped_early(self) -> bool:
        best = self.state.best
        if best and self.settings.patience > 0 and self.state.epoch - best["epoch"] >= self.settings.patience:
            logger.info("early stop after epoch %d: no better validation top-1 for %d epochs",
                        self.state.epoch, self.settings.patience)
            return True
        return False


# ----------------------------------------------------------------------------- raw inputs
def encode_raw_input(path: Path, encoder, window: int, frame_step: int, batch_size: int,
                     video_backend: str = "auto") -> torch.Tensor:
    """Views `[windows, N, D]` of a video, frame folder or image, extracted in memory as the
    extractors would (windows of `window` frames, the tail padded; an image repeated to `window`)."""
    from src.frames import IMAGE_EXTENSIONS, VideoReader, find_frames, load_image
    from src.windows import FrameWindowDataset, VideoWindowDataset, plan_windows

    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        frame = encoder.preprocess(load_image(path)[None])  # [C, 1, crop, crop]
        return encoder.encode(frame.unsqueeze(0).expand(-1, -1, window, -1, -1)).float()
    if path.is_dir():
        frames = [p for _, p in find_frames(path)]
        if not frames:
            raise ValueError(f"{path}: no frame files (frame_NNNN.*) in this folder")
        dataset = FrameWindowDataset(frames, plan_windows(len(frames), window), encoder.transform,
                                     min_side=encoder.model.patch_size)
    else:
        with VideoReader(path, backend=video_backend) as reader:
            indices, video_backend = list(range(0, reader.num_frames, frame_step)), reader.backend
        dataset = VideoWindowDataset(path, indices, plan_windows(len(indices), window), encoder.transform,
                                     backend=video_backend,
                                     min_side=encoder.model.patch_size)
    views = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[k] for k in range(start, min(start + batch_size, len(dataset)))]
        failed = [it["error"] for it in items if "error" in it]
        if failed:
            raise ValueError(f"{path}: {failed[0]}")
        views.append(encoder.encode(torch.stack([it["clip"] for it in items])).float())
    return torch.cat(views)


# ----------------------------------------------------------------------------- metrics
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def top_k_rows(names: list[str], views: list[int], probs: torch.Tensor, classes: list[str], k: int) -> list[list]:
    """CSV rows `path, views, label_1, prob_1, …` (probabilities over all classes, then the top k)."""
    k = min(k, len(classes))
    top = probs.topk(k, dim=-1)
    return [[name, n] + [x for i, p in zip(idx, val) for x in (classes[i], f"{p:.6f}")]
            for name, n, idx, val in zip(names, views, top.indices.tolist(), top.values.tolist())]


def top_k_header(k: int, num_classes: int) -> list[str]:
    return ["path", "views"] + [x for r in range(1, min(k, num_classes) + 1) for x in (f"label_{r}", f"prob_{r}")]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def write_json(path: Path, value) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)
    return path
