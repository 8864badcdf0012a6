"""Every name and path an extraction writes: window files, image chunks, the manifest, the table's
default folder and the per-input sub-folders of a run over several inputs. Readers (the pipeline,
visualize_embeddings.py, the table's pooling from files) and writers take them from here."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from src.errors import ConfigError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
TABLE_DIR_NAME = "embeddings"
CHUNK_GLOB = "features_shard*of*_chunk*.pt"
WINDOW_GLOBS = ("window_*.pt", "window_*.safetensors")
FEATURE_GLOBS = (*WINDOW_GLOBS, CHUNK_GLOB)  # every feature file an extraction writes
_CHUNK_FILE = re.compile(r"features_shard(\d{3})of(\d{3})_chunk(\d{5})\.pt")


def manifest_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / MANIFEST_NAME


def default_table_dir(output_dir: str | Path) -> Path:
    """The embeddings table's folder unless --table_dir says otherwise."""
    return Path(output_dir) / TABLE_DIR_NAME


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowLayout:
    """The files of one input's windows: ``<dir>/window_NNNNN.<fmt>`` and its manifest."""

    dir: Path
    fmt: str = "pt"

    def window(self, index: int, fmt: str | None = None) -> Path:
        return self.dir / f"window_{index:05d}.{fmt or self.fmt}"

    def other_format(self, index: int) -> Path:
        """The same window in the other format: a run in one format refuses a folder of the other."""
        return self.window(index, "safetensors" if self.fmt == "pt" else "pt")

    @property
    def manifest(self) -> Path:
        return manifest_path(self.dir)


def input_folders(inputs: list[tuple[str, Path]]) -> list[str]:
    """One sub-folder name per input (kind "frames" or "video", path): a video's stem, a frame folder's
    name; where several inputs would share one (``a/clip.mp4`` and ``b/clip.mp4``), their parent
    folders' names are put in front, then their position, so no input's windows land in (or are
    skipped by) another's folder. The same list on every shard, and unchanged names for inputs that
    do not collide."""
    def base(kind: str, path: Path) -> str:
        return path.stem if kind == "video" else path.name

    names = [base(kind, path) for kind, path in inputs]
    counts = {n: names.count(n) for n in names}
    for i, (kind, path) in enumerate(inputs):
        if counts[base(kind, path)] > 1:
            names[i] = "_".join(p for p in (path.resolve().parent.name, base(kind, path)) if p)
    taken = {n for n, (kind, path) in zip(names, inputs) if n == base(kind, path)}  # names kept as they were
    seen = set()
    for i, name in enumerate(names):
        if name in seen or (name != base(*inputs[i]) and name in taken):
            names[i] = f"{name}_{i}"
        seen.add(names[i])
    for (kind, path), name in zip(inputs, names):
        if name != base(kind, path):
            logger.warning("%s: another input has the same name; its windows go to %s/", path, name)
    return names


def input_output_dirs(output_root: str | Path, inputs: list[tuple[str, Path]]) -> list[Path]:
    """Where each input's windows go: one input → the output folder itself; several → one
    sub-folder each (`input_folders`)."""
    root = Path(output_root)
    if len(inputs) == 1:
        return [root]
    return [root / name for name in input_folders(inputs)]


# --------------------------------------------------------------------------- image chunks


def chunk_name(shard_index: int, num_shards: int, k: int) -> str:
    return f"features_shard{shard_index:03d}of{num_shards:03d}_chunk{k:05d}.pt"


def parse_chunk_name(name: str) -> tuple[int, int, int] | None:
    """(shard index, shard count, chunk number) of a chunk file name, None for other names."""
    match = _CHUNK_FILE.fullmatch(name)
    return None if match is None else tuple(map(int, match.groups()))


def check_no_foreign_chunks(output_dir: Path, shard_index: int, num_shards: int, num_chunks: int) -> None:
    """Refuse an output folder holding chunks this run would not write (another shard count, or
    more chunks than this shard now has: another --chunk_size or a changed input list): resuming
    next to them would store images twice."""
    foreign = []
    for path in sorted(Path(output_dir).glob(CHUNK_GLOB)):
        parsed = parse_chunk_name(path.name)
        if parsed is None:
            continue
        index, count, k = parsed
        if count != num_shards or (index == shard_index and k >= num_chunks):
            foreign.append(path.name)
    if foreign:
        raise ConfigError(
            f"{output_dir}: holds {len(foreign)} chunk file(s) this run would not write ({foreign[0]}"
            f"{', …' if len(foreign) > 1 else ''}; this run: {num_shards} shard(s), {num_chunks} chunk(s) for shard "
            f"{shard_index}); keep the earlier --chunk_size and shard count, or use another --output_dir")


def other_shard_counts(output_dir: Path, num_shards: int) -> list[str]:
    """Chunk-name prefixes in `output_dir` written under another shard count (readers would see
    those images twice)."""
    prefixes = {p.name.split("_chunk")[0] for p in Path(output_dir).glob(CHUNK_GLOB)}
    return sorted(p for p in prefixes if not p.endswith(f"of{num_shards:03d}"))
