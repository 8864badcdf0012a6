#!/usr/bin/env python
r"""V-JEPA 2 / 2.1 features for a folder of still images, written as chunk files.

    python vjepa2_extractor.py --image_dir images/ --output_dir features/ \
        --model facebook/vjepa2-vitg-fpc64-384 --image_frames 16 --batch_size 8

A 2.1 model encodes each image as one frame through its image path (``--image_frames 1``,
the default for 2.1: one temporal token). A 2.0 model is a video encoder only: each image is
repeated along time to ``--image_frames`` frames (16 → 8 temporal tokens, 2 → 1, the fast
mode; 2.1 models take this too). Features are ``[tokens, D]`` fp16. The sorted image list (of this shard) is cut into groups of
``--chunk_size``; group k is written atomically to
``features_shard{i:03d}of{N:03d}_chunk{k:05d}.pt`` as ``{relative_path: {"features",
"metadata"}}``. A rerun skips complete chunks (resume after a kill), and
``manifest.jsonl`` records every input as ok / skipped / failed.

Exit codes: 0 done, 1 internal error, 2 bad arguments, 3 finished but some images failed,
4 an output could not be written (disk full, permissions; finished chunks are intact, rerun to resume).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src import cli, features, frames, sharding
from src.inference import ClipEncoder, stored_layers
from src.windows import check_frame_size, default_num_workers

logger = logging.getLogger("vjepa2_extractor")

AGGREGATION_METHODS = ("mean", "max", "temporal", "spatial", "quadrants")
CHUNK_GLOB = "features_shard*of*_chunk*.pt"


# --------------------------------------------------------------------------- aggregation


def aggregate_features(feats: torch.Tensor, method: str, spatial_grid: tuple[int, int]) -> torch.Tensor:
    """Pool ``[tokens, D]`` (or ``[B, tokens, D]``, per item) image features.

    Tokens are in t-major, then h, then w order over a ``(Tp, Hp, Wp)`` grid; ``spatial_grid``
    is ``(Hp, Wp)`` and ``Tp = tokens / (Hp * Wp)``. Methods:

    * ``mean`` → ``[D]``; ``max`` → ``[D]`` (over all tokens);
    * ``temporal`` → ``[Tp, D]``: one mean vector per time step;
    * ``spatial`` → ``[Hp * Wp, D]``: one vector per patch (row-major), averaged over time;
    * ``quadrants`` → ``[4, D]``: means over time of the top-left, top-right, bottom-left and
      bottom-right quarters of the Hp × Wp grid. With an odd size the middle row (column)
      belongs to the first (top / left) half: rows ``[0, ceil(Hp/2))`` are "top".
    """
    if method == "cls":
        raise ValueError("V-JEPA 2 has no CLS token (every token is a patch); use 'mean' instead")
    if method not in AGGREGATION_METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; choose from {', '.join(AGGREGATION_METHODS)}")
    if feats.ndim == 3:
        return torch.stack([aggregate_features(f, method, spatial_grid) for f in feats])
    if feats.ndim != 2:
        raise ValueError(f"expected features [tokens, D] or [B, tokens, D], got shape {tuple(feats.shape)}")
    hp, wp = spatial_grid
    tokens, dim = feats.shape
    if tokens == 0 or tokens % (hp * wp):
        raise ValueError(f"{tokens} tokens do not form whole {hp}×{wp} time steps")
    if method == "mean":
        return feats.mean(0)
    if method == "max":
        return feats.max(0).values
    grid = feats.reshape(tokens // (hp * wp), hp, wp, dim)
    if method == "temporal":
        return grid.mean((1, 2))
    if method == "spatial":
        return grid.mean(0).reshape(hp * wp, dim)
    # quadrants
    if hp < 2 or wp < 2:
        raise ValueError(f"quadrants need a patch grid of at least 2×2, got {hp}×{wp}")
    h1, w1 = (hp + 1) // 2, (wp + 1) // 2
    parts = (grid[:, :h1, :w1], grid[:, :h1, w1:], grid[:, h1:, :w1], grid[:, h1:, w1:])
    return torch.stack([p.mean((0, 1, 2)) for p in parts])


# --------------------------------------------------------------------------- extractor


class VJEPA2Extractor:
    """Image → V-JEPA 2 features: one frame through a 2.1 model's image path, or the image
    repeated to ``image_frames`` frames through the video path.

    Args:
        model_name: model spec (hub id, transformers directory, original .pt, ``random:<arch>``).
        device: "auto", "cpu", "cuda" (the local rank's GPU) or "cuda:N".
        use_fp16: compute in fp16 (ignored when ``dtype`` is given).
        image_frames: frames per image: 1 (2.1's image path; the default for 2.1 models) or
            even ≥ 2, the image repeated along time (16 → 8 temporal tokens, 2 → 1; the
            default for 2.0 models is 16). None: the model's default.
        dtype: "auto", "fp32", "bf16" or "fp16"; None → "fp16" if use_fp16 else "auto".
        img_size: crop size (default: the model's).
        checkpoint_key: entry of an original .pt to load (None: the one Meta's code reads).
        compile: run the encoder through torch.compile (see bench/PERFORMANCE.md).
        layers: what is stored: "last", "hierarchical" or block indices (see ClipEncoder).
    """

    def __init__(self, model_name: str = "facebook/vjepa2-vitg-fpc64-384", device: str = "auto",
                 use_fp16: bool = False, image_frames: int | None = None, dtype: str | None = None,
                 img_size: int | None = None, checkpoint_key: str | None = None, compile: bool = False,
                 layers: str | list[int] = "last"):
        check_image_frames(image_frames)
        if dtype is None:
            dtype = "fp16" if use_fp16 else "auto"
        self.encoder = ClipEncoder(model_name, device=sharding.local_device(device), dtype=dtype,
                                   img_size=img_size, checkpoint_key=checkpoint_key, compile=compile, layers=layers)
        self.image_frames = resolve_image_frames(self.encoder, image_frames)
        tp, hp, wp = self.grid  # raises here if image_frames does not tile into tubelets
        if self.image_frames == 1:
            logger.info("each image goes through the model's image path as one frame → %d×%d = %d tokens per image",
                        hp, wp, hp * wp)
        else:
            logger.info(
                "each image is repeated to %d frames → %d temporal × %d×%d spatial = %d tokens per image (%s)",
                self.image_frames, tp, hp, wp, tp * hp * wp,
                "the fast mode" if tp == 1 else f"image_frames=2 is the fast mode: 1 temporal token, {tp}× fewer tokens",
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) of one image, from the loaded model."""
        return self.encoder.grid(self.image_frames)

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def _clip(self, image) -> torch.Tensor:
        frame = frames.load_image(image)
        return self.encoder.preprocess(frame[None])  # [C, 1, crop, crop]

    def extract_batch(self, images: Sequence) -> torch.Tensor:
        """``[B, tokens, D]`` float32 (CPU) features of several images in one forward pass."""
        if len(images) == 0:
            raise ValueError("extract_batch: no images")
        clips = torch.stack([self._clip(image) for image in images])
        return encode_frames(self.encoder, clips, self.image_frames).float()

    def extract_features(self, image) -> torch.Tensor:
        """``[tokens, D]`` float32 (CPU) features of one image (path, PIL image or array)."""
        return self.extract_batch([image])[0]

    def aggregate_features(self, feats: torch.Tensor, method: str = "mean") -> torch.Tensor:
        """Pool features of this extractor (see the module-level :func:`aggregate_features`)."""
        _, hp, wp = self.grid
        return aggregate_features(feats, method, (hp, wp))


def check_image_frames(image_frames) -> None:
    """``image_frames`` is None (the model's default), 1 (image path) or an even integer ≥ 2."""
    if image_frames is None:
        return
    if isinstance(image_frames, bool) or not isinstance(image_frames, (int, np.integer)) \
            or image_frames < 1 or (image_frames > 1 and image_frames % 2):
        raise ValueError(f"image_frames must be 1 (a 2.1 model's image path) or an even integer >= 2, "
                         f"got {image_frames!r}")


def resolve_image_frames(encoder: ClipEncoder, image_frames: int | None) -> int:
    """The frames per image for this model: 1 by default when it has an image path (2.1), else 16."""
    check_image_frames(image_frames)
    has_image_path = encoder.model.has_image_path
    if image_frames is None:
        return 1 if has_image_path else 16
    if image_frames == 1 and not has_image_path:
        raise ValueError(f"image_frames 1 needs a model with an image path (V-JEPA 2.1); "
                         f"{encoder.spec} is V-JEPA {encoder.model.generation}: use 2 or 16")
    return int(image_frames)


def encode_frames(encoder: ClipEncoder, clips: torch.Tensor, image_frames: int) -> torch.Tensor:
    """Single preprocessed frames ``[B, C, 1, crop, crop]`` → fp16 ``[B, tokens, D]``.

    With ``image_frames`` 1 the frame goes through the model's image path as it is; otherwise
    it is repeated to ``image_frames`` along T with ``expand`` (no copy here; the encoder's
    device/dtype move materialises it).
    """
    if clips.ndim != 5 or clips.shape[2] != 1:
        raise ValueError(f"expected single frames [B, C, 1, H, W], got shape {tuple(clips.shape)}")
    return encoder.encode(clips.expand(-1, -1, image_frames, -1, -1))


# --------------------------------------------------------------------------- data loading


class ImageDataset(Dataset):
    """Preprocessed single frames of images under ``root``.

    Item i is ``(i, frame [C, 1, crop, crop], (h, w))`` or, when the image cannot be read or
    preprocessed, ``(i, "error message", None)``: a bad file must not stop the run.
    """

    def __init__(self, root: str | os.PathLike, rel_paths: Sequence[str], preprocess: Callable, min_side: int = 1):
        self.root = Path(root)
        self.rel_paths = list(rel_paths)
        self.preprocess = preprocess
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, i: int):
        path = self.root / self.rel_paths[i]
        try:
            image = frames.load_image(path)
            check_frame_size(image.shape[0], image.shape[1], self.min_side, name="image")
            frame = self.preprocess(image[None])
            return i, frame, (int(image.shape[0]), int(image.shape[1]))
        except Exception as exc:  # noqa: BLE001 - reported per image, never fatal
            message = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            prefix = f"{path}: "
            if message.startswith(prefix):  # load_image prefixes its messages with the path
                message = message[len(prefix):]
            return i, message or type(exc).__name__, None


def collate_images(items: list) -> dict:
    """Stack the readable frames; pass the errors through."""
    ok = [item for item in items if not isinstance(item[1], str)]
    return {
        "index": [item[0] for item in ok],
        "frames": torch.stack([item[1] for item in ok]) if ok else None,
        "sizes": [item[2] for item in ok],
        "errors": [(item[0], item[1]) for item in items if isinstance(item[1], str)],
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 - only a performance hint
        pass


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: str) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=False,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


# --------------------------------------------------------------------------- chunks


def chunk_name(shard_index: int, num_shards: int, k: int) -> str:
    return f"features_shard{shard_index:03d}of{num_shards:03d}_chunk{k:05d}.pt"


_CHUNK_FILE = re.compile(r"features_shard(\d{3})of(\d{3})_chunk(\d{5})\.pt")


def _check_no_foreign_chunks(output_dir: Path, shard_index: int, num_shards: int, num_chunks: int) -> None:
    """Refuse an output folder holding chunks this run would not write (another shard count, or
    more chunks than this shard now has: another --chunk_size or a changed input list): resuming
    next to them would store images twice."""
    foreign = []
    for path in sorted(output_dir.glob("features_shard*of*_chunk*.pt")):
        match = _CHUNK_FILE.fullmatch(path.name)
        if match is None:
            continue
        index, count, k = map(int, match.groups())
        if count != num_shards or (index == shard_index and k >= num_chunks):
            foreign.append(path.name)
    if foreign:
        raise cli.UsageError(
            f"{output_dir}: holds {len(foreign)} chunk file(s) this run would not write ({foreign[0]}"
            f"{', …' if len(foreign) > 1 else ''}; this run: {num_shards} shard(s), {num_chunks} chunk(s) for shard "
            f"{shard_index}); keep the earlier --chunk_size and shard count, or use another --output_dir")


def split_chunks(items: Sequence, chunk_size: int) -> list[list]:
    """Consecutive groups of ``chunk_size`` (the last one may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [list(items[i:i + chunk_size]) for i in range(0, len(items), chunk_size)]


def list_images(image_dir: str | os.PathLike, patterns: Sequence[str] | None = None,
                recursive: bool = False) -> list[str]:
    """Relative posix paths of the images under ``image_dir``, sorted."""
    root = Path(image_dir)
    return [p.relative_to(root).as_posix() for p in frames.find_images(root, patterns, recursive)]


def _existing_chunk_keys(path: Path, expected: Iterable[str], config: dict) -> set[str] | None:
    """Keys of a complete chunk file written for these inputs and settings, else None.

    A complete file whose keys are not among ``expected`` (the input list changed) is
    recomputed; one written with another model / frame count is a usage error.
    """
    if not features.is_complete(path):
        return None
    try:  # mmap: only the keys and metadata are touched, not the (large) feature data
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - unreadable now means recompute
        logger.warning("%s: cannot reread (%s); recomputing", path.name, exc)
        return None
    keys = set(chunk)
    if not keys <= set(expected):
        logger.warning("%s was written for a different input list; recomputing it", path.name)
        return None
    for entry in list(chunk.values())[:1]:
        meta = entry.get("metadata", {}) if isinstance(entry, dict) else {}
        info = meta.get("model_info") or {}
        found = {
            "image_frames": meta.get("image_frames"),
            "grid": meta.get("grid"),
            "model_name": info.get("model_name"),
            "layers": stored_layers(info),
        }
        if found != config:
            raise cli.UsageError(
                f"{path}: written with {found}, this run uses {config}; "
                "use another --output_dir or pass --overwrite"
            )
    return keys


@dataclass
class ExtractionSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


def extract_directory(
    encoder: ClipEncoder,
    image_dir: str | os.PathLike,
    rel_paths: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    image_frames: int = 16,
    chunk_size: int = 1000,
    batch_size: int = 8,
    num_workers: int = 0,
    overwrite: bool = False,
    manifest: features.Manifest | None = None,
    progress: bool | None = None,
) -> ExtractionSummary:
    """Encode ``rel_paths`` (this shard's images, relative to ``image_dir``) into chunk files.

    Chunk k of the sorted list goes to ``output_dir / chunk_name(i, N, k)``; complete chunks
    are skipped unless ``overwrite``. Unreadable images are logged, recorded as failed in the
    manifest and left out of their chunk. At most one chunk's features are held in memory.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    shard_index, num_shards = shard
    shard_label = f"{shard_index}/{num_shards}"
    manifest = manifest if manifest is not None else features.Manifest(output_dir / "manifest.jsonl")
    extra = {"shard": shard_label}
    tp, hp, wp = encoder.grid(image_frames)
    model_info = encoder.describe(image_frames)
    config = {"image_frames": image_frames, "grid": [tp, hp, wp], "model_name": model_info["model_name"],
              "layers": stored_layers(model_info)}

    paths = sorted(rel_paths)
    _check_no_foreign_chunks(output_dir, shard_index, num_shards, len(split_chunks(paths, chunk_size)))
    summary = ExtractionSummary()
    start = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", desc=f"shard {shard_label}", disable=None if progress is None
               else not progress, dynamic_ncols=True)
    try:
        for k, group in enumerate(split_chunks(paths, chunk_size)):
            name = chunk_name(shard_index, num_shards, k)
            path = output_dir / name
            existing = None if overwrite else _existing_chunk_keys(path, group, config)
            if existing is not None:
                for rel in group:
                    if rel in existing:
                        manifest.record(rel, name, "skipped", extra=extra)
                        summary.skipped += 1
                    else:
                        error = f"not in the existing {name} (failed in an earlier run; --overwrite retries)"
                        manifest.record(rel, None, "failed", error=error, extra=extra)
                        summary.failed += 1
                summary.chunks_skipped += 1
                bar.update(len(group))
                logger.debug("%s complete; skipped %d images", name, len(group))
                continue

            with features.claim_output(path) as mine:
                if not mine or (not overwrite and _existing_chunk_keys(path, group, config) is not None):
                    # another process (e.g. a resubmitted array task) has it or just finished it
                    for rel in group:
                        manifest.record(rel, name, "skipped", error="written by another process", extra=extra)
                    summary.skipped += len(group)
                    summary.chunks_skipped += 1
                    bar.update(len(group))
                    continue
                _encode_chunk(encoder, image_dir, group, path, name, image_frames, batch_size, num_workers,
                              manifest, extra, summary, bar, model_info)
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _encode_chunk(encoder, image_dir, group, path, name, image_frames, batch_size, num_workers, manifest, extra,
                  summary, bar, model_info) -> None:
    """Decode, encode and save one chunk (the caller holds its claim)."""
    tp, hp, wp = encoder.grid(image_frames)
    chunk: dict[str, dict] = {}
    loader = make_loader(ImageDataset(image_dir, group, encoder.transform, encoder.model.patch_size), batch_size, num_workers,
                         str(encoder.device))
    for batch in loader:
        for i, error in batch["errors"]:
            logger.error("%s: %s", group[i], error)
            manifest.record(group[i], None, "failed", error=error, extra=extra)
            summary.failed += 1
        if batch["frames"] is not None:
            out = encode_frames(encoder, batch["frames"], image_frames)
            for j, (i, (h, w)) in enumerate(zip(batch["index"], batch["sizes"])):
                rel = group[i]
                chunk[rel] = {
                    "features": out[j],
                    "metadata": {
                        "source": rel,
                        "image_size": [h, w],
                        "crop_box": encoder.crop_box(h, w),
                        "image_frames": image_frames,
                        "image_path": "image" if image_frames == 1 else "video (image repeated)",
                        "grid": [tp, hp, wp],
                        "model_info": model_info,
                    },
                }
        bar.update(len(batch["index"]) + len(batch["errors"]))
    if chunk:
        features.save_chunk(chunk, path)
        for rel in chunk:
            manifest.record(rel, name, "ok", extra=extra)
        summary.done += len(chunk)
        summary.chunks_written += 1
        logger.debug("wrote %s (%d images)", name, len(chunk))
    else:
        logger.warning("%s: every image of this chunk failed; no file written", name)


# --------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter,
                                parents=[cli.common_parser()])
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--image_dir", required=True, help="folder of images")
    g.add_argument("--output_dir", required=True, help="folder for chunk files, manifest.jsonl")
    g.add_argument("--pattern", action="append", default=None, metavar="GLOB",
                   help="file-name glob, case-insensitive, repeatable (default: "
                        + " ".join(frames.DEFAULT_IMAGE_PATTERNS) + "); with '/' matched on the relative path")
    g.add_argument("--recursive", action="store_true", help="also search subfolders")
    g.add_argument("--chunk_size", type=int, default=1000, help="images per chunk file")
    g.add_argument("--overwrite", action="store_true", help="recompute chunks that are already complete")
    g = p.add_argument_group("processing")
    g.add_argument("--image_frames", type=int, choices=[1, 2, 16], default=None,
                   help="1: the image as one frame through a 2.1 model's image path (default for 2.1); "
                        "16 (default for 2.0) or 2: the image repeated along time through the video path "
                        "(16 → 8 temporal tokens, 2 → 1, fast)")
    g.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    g.add_argument("--num_workers", type=int, default=None,
                   help="image-decoding worker processes (0: in the main process; default: 0 on CPU, min(4, cores-1) on GPU)")
    g = p.add_argument_group("sharding (several processes or nodes)")
    g.add_argument("--shard", default=None, metavar="i/N",
                   help="process shard i of N (default: from RANK/WORLD_SIZE, SLURM_*, PBS_ARRAY_INDEX)")
    g.add_argument("--num_shards", type=int, default=None,
                   help="shard count; required with PBS_ARRAY_INDEX, a cross-check otherwise")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    for flag in ("chunk_size", "batch_size"):
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.num_workers is not None and args.num_workers < 0:
        raise cli.UsageError(f"--num_workers must be >= 0, got {args.num_workers}")
    try:
        shard_index, num_shards = sharding.resolve_shard(args.shard, args.num_shards)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None

    patterns = args.pattern or list(frames.DEFAULT_IMAGE_PATTERNS)
    all_images = list_images(args.image_dir, patterns, args.recursive)
    if not all_images:
        raise cli.UsageError(
            f"no images in {args.image_dir} matching {' '.join(patterns)}"
            + ("" if args.recursive else " (add --recursive to search subfolders)")
        )
    mine = sharding.select_shard(all_images, shard_index, num_shards)
    output_dir = cli.check_output_dir(args.output_dir)
    others = sorted({p.name.split("_chunk")[0] for p in output_dir.glob(CHUNK_GLOB)}
                    - {chunk_name(shard_index, num_shards, 0).split("_chunk")[0]})
    if any(not o.endswith(f"of{num_shards:03d}") for o in others):
        logger.warning("%s already holds chunk files from a run with another shard count (%s); "
                       "readers will see those images twice", output_dir, ", ".join(others[:3]))
    logger.info("shard %d/%d: %d of %d images from %s", shard_index, num_shards, len(mine), len(all_images),
                args.image_dir)
    if not mine:
        logger.warning("shard %d/%d has no images (only %d in total); nothing to do", shard_index, num_shards,
                       len(all_images))
        return cli.EXIT_OK

    try:
        extractor = VJEPA2Extractor(args.model, device=args.device, image_frames=args.image_frames,
                                    dtype=args.dtype, img_size=args.img_size, checkpoint_key=args.checkpoint_key,
                                    compile=args.compile, layers=args.layers)
    except ValueError as exc:  # a bad spec, file, --layers or --image_frames for this model
        raise cli.UsageError(str(exc)) from None
    num_workers = default_num_workers(extractor.encoder.device) if args.num_workers is None else args.num_workers
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        summary = extract_directory(
            extractor.encoder, args.image_dir, mine, output_dir,
            shard=(shard_index, num_shards), image_frames=extractor.image_frames, chunk_size=args.chunk_size,
            batch_size=args.batch_size, num_workers=num_workers, overwrite=args.overwrite,
        )
    logger.info(
        "shard %d/%d: %d done, %d skipped (already complete), %d failed in %.1f s (%.1f images/s); "
        "%d chunk(s) written, %d skipped → %s",
        shard_index, num_shards, summary.done, summary.skipped, summary.failed, summary.seconds,
        summary.images_per_s, summary.chunks_written, summary.chunks_skipped, output_dir,
    )
    if summary.failed:
        logger.error("%d image(s) failed; see %s", summary.failed, output_dir / "manifest.jsonl")
        return cli.EXIT_PARTIAL
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
