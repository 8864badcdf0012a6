"""Feature lookup and reading: labelled paths → clips → views (feature files or chunk entries).

A *clip* is one labelled row of a labels CSV. Its path is an input as the extractors record it
in `manifest.jsonl`: a video or frame folder (all its windows), one window (`video.mp4#window3`)
or an image of a chunk. Each feature file (window or chunk entry) of a clip is one *view*.
"""
from __future__ import annotations

import logging
import os
import random
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from src.errors import UsageError
from src.features import latest_status, load_chunk, load_features
from src.probe.labels import LabelRow, listed, path_key

logger = logging.getLogger(__name__)

# model_info keys that describe one extraction, not the encoder: they may differ between the
# features a probe was trained on and those it classifies (a warning, not a refusal)
EXTRACTION_KEYS = ("img_size", "num_input_frames", "num_output_temporal", "spatial_patches", "compute_dtype")


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
        self.manifest_paths: list[Path] = []
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
        self.manifest_paths.append(manifest)
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
        for key in {os.path.normpath(name), path_key(name)}:
            self.views[key].append(ref)
            self.group[key] = source

    def lookup(self, name: str) -> tuple[list[FeatureRef], str] | None:
        """(views sorted by file, the source they come from) for a labels-file path, or None."""
        for key in (os.path.normpath(name), path_key(name)):
            if key in self.views:
                return sorted(set(self.views[key]), key=lambda r: (str(r.file), r.key or "")), self.group[key]
        return None


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
                         f"manifests: {listed(unknown)}")
    return clips


def split_clips(clips: list[Clip], val_fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Train/val from the CSV's split column, else `val_fraction` of each class's source groups
    (windows of one video stay on one side), chosen with `seed`."""
    given = any(c.split for c in clips)  # the CSV's split column
    if given:
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
        if not part and given:
            raise UsageError(f"the {name} split is empty ({len(clips)} labelled clips): label some rows '{name}'")
        if not part:
            raise UsageError(f"the {name} split is empty: every class has too few videos to hold one out "
                             f"({len(clips)} labelled clips from {len({c.group for c in clips})} source(s); a class "
                             "needs at least 2 sources); label more videos, or give a split column")
    shared = {c.group for c in train} & {c.group for c in val}
    if shared:
        raise UsageError(f"windows of {len(shared)} source(s) are in both splits: {listed(sorted(shared), 5)} "
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


