"""The embeddings table: one pooled vector per window or image (or per temporal token) with its
provenance, as Parquet part files that read as one dataset (pyarrow, pandas, DuckDB).

Layout: ``<table_dir>/part-shard{i:03d}of{N:03d}-{utc}-{hex}.parquet``. Each writer (one per
process) buffers rows and writes a part once `part_rows` rows (or `flush_seconds`) have gathered,
under a temporary name renamed into place: a part that exists is complete, and a kill loses at
most the rows not yet flushed (a rerun recomputes them, or pools them from the token files).
Every part carries the table's configuration (model, pooling, vector width) in its schema
metadata; a writer with another configuration is refused rather than mix two tables in one folder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from src.errors import InputError, OutputWriteError, TableConfigError, UsageError
from src.extract.pooling import POOL_METHODS, Pooling  # noqa: F401  (the table's public names)
from src.features import atomic_write, exclusive_lock, load_any, remove_stale_temp_files

logger = logging.getLogger(__name__)

STORE_CHOICES = ("tokens", "pooled", "both")
PART_GLOB = "part-*.parquet"
TABLE_META_KEY = b"vjepa2_table"
TABLE_VERSION = 1
DEFAULT_PART_ROWS = 256
DEFAULT_FLUSH_SECONDS = 300.0
FEATURE_GLOBS = ("window_*.pt", "window_*.safetensors", "features_shard*of*_chunk*.pt")  # token files
# keys that make two tables different: rows written under another value are not comparable
CONFIG_KEYS = ("model", "pooling", "dim", "img_size", "clip_frames", "spatial", "generation", "output", "layers")




def add_table_arguments(parser, default_dir: str, stores: tuple[str, ...] = STORE_CHOICES) -> None:
    """The embeddings-table flags of the extractors and the pipeline (one definition)."""
    group = parser.add_argument_group("embeddings table (one vector per window/image, Parquet)")
    group.add_argument("--store", choices=stores, default="tokens",
                       help="tokens: feature files only; pooled: table rows only; both")
    group.add_argument("--pool", choices=POOL_METHODS, default="mean",
                       help="table vector: mean or max over all tokens, or temporal (one row per temporal token)")
    group.add_argument("--no_l2", action="store_true", help="keep the pooled vectors unnormalised")
    group.add_argument("--table_dir", default=None, help=f"table folder (default: {default_dir})")
    group.add_argument("--part_rows", type=int, default=DEFAULT_PART_ROWS,
                       help="rows per Parquet part file (written as it fills; the most rows held in memory)")


def pooling_from_args(args) -> "Pooling":
    return Pooling(args.pool, l2=not args.no_l2)


@contextlib.contextmanager
def closing(owner) -> Iterator[None]:
    """Call `owner.close()` (write the buffered rows) when the block ends, also on an error; an error
    of that last write does not hide the block's own. `owner` may be None (nothing to close)."""
    if owner is None:
        yield
        return
    try:
        yield
    except BaseException:
        try:
            owner.close()
        except Exception as exc:  # noqa: BLE001 - the first error is the one to report
            logger.error("could not write the last table rows: %s", exc)
        raise
    owner.close()


# --------------------------------------------------------------------------- rows


def _get(*sources: dict, keys: tuple[str, ...]) -> Any:
    """The first present, non-None value of any of `keys` in any of `sources`."""
    for source in sources:
        for key in keys:
            if isinstance(source, dict) and source.get(key) is not None:
                return source[key]
    return None


def _box(value: Any) -> list[float] | None:
    """A covered box as [x0, y0, x1, y1] source pixels, from a dict or a 4-sequence."""
    if isinstance(value, dict) and all(k in value for k in ("x0", "y0", "x1", "y1")):
        return [float(value[k]) for k in ("x0", "y0", "x1", "y1")]
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return [float(v) for v in value]
    return None


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return [int(v) for v in value]
    return None


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return None


def item_id(metadata: dict, source: str | None = None) -> str:
    """The identity of a window (`<source>#window<i>`) or image (its path) in a table."""
    source = source or _get(metadata, keys=("video_path", "frame_dir", "source"))
    if metadata.get("window_idx") is not None:
        return f"{source}#window{int(metadata['window_idx'])}"
    return str(source)


def provenance(info: dict, metadata: dict, pooling: Pooling, source: str | None = None) -> dict:
    """The provenance columns of a window or image, read defensively from its metadata."""
    grid = _int_list(metadata.get("grid"))
    if grid is None or len(grid) != 3:
        sp = info.get("spatial_patches")
        hp, wp = (sp, sp) if isinstance(sp, int) else (sp or (None, None))
        grid = [info.get("num_output_temporal"), hp, wp]
        if None in grid:
            raise ValueError(f"{item_id(metadata, source)}: no token grid in the metadata")
    source = source or _get(metadata, keys=("video_path", "frame_dir", "source"))
    return {
        "item": item_id(metadata, source),
        "source": None if source is None else str(source),
        "source_type": metadata.get("source_type") or ("image" if metadata.get("window_idx") is None else None),
        "window_idx": metadata.get("window_idx"),
        "start_frame": metadata.get("start_frame"),
        "end_frame": metadata.get("end_frame"),
        "frame_numbers": _int_list(metadata.get("frame_numbers")),
        "frame_files": metadata.get("frame_files"),
        "timestamps": metadata.get("timestamps"),
        "fps": metadata.get("fps"),
        "frame_step": metadata.get("frame_step"),
        "num_padded_frames": metadata.get("num_padded_frames"),
        "clip_frames": metadata.get("image_frames") or info.get("num_input_frames"),
        "image_size": _int_list(metadata.get("image_size")),
        "box": _box(_get(metadata, keys=("covered_box", "box", "crop_box"))),
        "grid": grid,
        "spatial": _text(_get(metadata, info, keys=("spatial",))),
        "model": _text(_get(metadata, info, keys=("model", "model_name"))),
        "generation": _text(_get(info, metadata, keys=("generation",))),
        "output": _text(_get(info, metadata, keys=("output",))),
        "layers": _int_list(_get(info, metadata, keys=("layers", "out_layers"))),
        "embed_dim": info.get("embed_dim"),
        "img_size": info.get("img_size"),
        "random_weights": info.get("random_weights"),
        "compute_dtype": info.get("compute_dtype"),
        "pooling": pooling.name,
    }


def build_rows(features: torch.Tensor, model_info: dict, metadata: dict, pooling: Pooling, *,
               source: str | None = None, token_file: str | None = None,
               extraction_time: Any = None) -> list[dict]:
    """Table rows of one window or image: pooled vector(s) and provenance, read from its metadata.

    Keys are read defensively: what the metadata does not hold is null (older files, or fields
    other extractors add later flow in once they are there).
    """
    info = model_info or metadata.get("model_info") or {}
    base = provenance(info, metadata, pooling, source)
    vectors = pooling(features, base["grid"])
    base.update(feature_dtype=str(features.dtype).removeprefix("torch."), token_file=token_file,
                extraction_time=_time(extraction_time or metadata.get("extraction_timestamp")))
    mapping = metadata.get("temporal_mapping")
    rows = []
    for t, vector in enumerate(vectors):
        row = dict(base, token_t=None, row_id=base["item"], vector=vector)
        if pooling.method == "temporal":  # one row per temporal token, with the frames it covers
            row.update(token_t=t, row_id=f"{base['item']}#t{t}")
            if isinstance(mapping, list) and t < len(mapping):
                first = sum(len(m) for m in mapping[:t])  # position of the token's first frame in the window
                row["frame_numbers"] = _int_list(mapping[t])
                if base["frame_files"]:
                    row["frame_files"] = base["frame_files"][first:first + len(mapping[t])]
                if base["timestamps"]:
                    row["timestamps"] = base["timestamps"][first:first + len(mapping[t])]
        rows.append(row)
    return rows


def table_schema(dim: int, config: dict | None = None):
    """The Parquet schema of a table of `dim`-wide vectors (config in the schema metadata)."""
    import pyarrow as pa

    fields = [
        ("row_id", pa.string()), ("item", pa.string()), ("token_t", pa.int32()),
        ("source", pa.string()), ("source_type", pa.string()), ("window_idx", pa.int32()),
        ("start_frame", pa.int64()), ("end_frame", pa.int64()), ("frame_numbers", pa.list_(pa.int64())),
        ("frame_files", pa.list_(pa.string())), ("timestamps", pa.list_(pa.float64())), ("fps", pa.float64()),
        ("frame_step", pa.int32()), ("num_padded_frames", pa.int32()), ("clip_frames", pa.int32()),
        ("image_size", pa.list_(pa.int32())), ("box", pa.list_(pa.float64())), ("grid", pa.list_(pa.int32())),
        ("spatial", pa.string()), ("model", pa.string()), ("generation", pa.string()),
        ("output", pa.string()), ("layers", pa.list_(pa.int32())), ("embed_dim", pa.int32()), ("img_size", pa.int32()),
        ("random_weights", pa.bool_()), ("compute_dtype", pa.string()), ("feature_dtype", pa.string()),
        ("pooling", pa.string()), ("token_file", pa.string()), ("extraction_time", pa.timestamp("us", tz="UTC")),
        ("vector", pa.list_(pa.float32(), dim)),
    ]
    metadata = {TABLE_META_KEY: json.dumps({"version": TABLE_VERSION, **(config or {})})}
    return pa.schema([pa.field(name, kind, nullable=name not in ("row_id", "item", "vector"))
                      for name, kind in fields], metadata=metadata)


def row_config(row: dict) -> dict:
    """The table configuration a row belongs to (see CONFIG_KEYS)."""
    return {"model": row["model"], "pooling": row["pooling"], "dim": int(len(row["vector"])),
            "img_size": row["img_size"], "clip_frames": row["clip_frames"], "spatial": row["spatial"], "generation": row["generation"], "output": row["output"],
            "layers": row["layers"]}


def _rows_to_arrow(rows: list[dict], config: dict):
    import pyarrow as pa

    schema = table_schema(config["dim"], config)
    columns = {}
    for field in schema:
        if field.name == "vector":
            values = pa.array(np.stack([r["vector"] for r in rows]).reshape(-1), pa.float32())
            columns["vector"] = pa.FixedSizeListArray.from_arrays(values, config["dim"])
        else:
            columns[field.name] = pa.array([r.get(field.name) for r in rows], field.type)
    return pa.Table.from_pydict(columns, schema=schema)


# --------------------------------------------------------------------------- reading


def part_files(table_dir: str | os.PathLike) -> list[Path]:
    """The complete part files of a table, sorted (temporary files are hidden, never listed)."""
    return sorted(Path(table_dir).glob(PART_GLOB))


def part_config(path: Path) -> dict:
    """The configuration stored in a part file's schema metadata; a file that is not one of our
    parts (truncated, empty, foreign) is an InputError naming it."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[TABLE_META_KEY])
    except Exception as exc:  # noqa: BLE001 - any problem means: not one of our parts
        reason = f"no {TABLE_META_KEY.decode()} metadata" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise InputError(f"{path}: not an embeddings table part ({reason}); move it out of the table folder") from None


@dataclass(frozen=True)
class TableSnapshot:
    """The complete part files of a table at one moment, checked to be one table. Every read of
    one command goes through one snapshot, so a part that lands meanwhile (another process's)
    shifts no row position between a search and the fetch of its matches.

    `duplicate` marks the rows whose `row_id` an earlier row of the snapshot already has (two
    writers that raced, or a crash between a part's rename and the bookkeeping): readers skip
    them, so every row id counts once. None when there are none.
    """

    dir: Path
    parts: tuple[Path, ...]
    config: dict
    rows: int
    duplicate: np.ndarray | None = None  # [rows] bool

    def dataset(self):
        import pyarrow.dataset as ds

        return ds.dataset([str(p) for p in self.parts], format="parquet")

    @property
    def unique_rows(self) -> int:
        return self.rows - (0 if self.duplicate is None else int(self.duplicate.sum()))


def snapshot(table: "str | os.PathLike | TableSnapshot") -> TableSnapshot:
    """The table folder's parts now (a snapshot passes through); a bad part is named (InputError)."""
    if isinstance(table, TableSnapshot):
        return table
    import pyarrow.compute as pc

    table_dir = Path(table)
    parts = part_files(table_dir)
    if not parts:
        raise FileNotFoundError(f"{table_dir}: no embeddings table here (no {PART_GLOB} files)")
    config = part_config(parts[0])
    for path in parts[1:]:
        other = part_config(path)
        if _config_diff(config, other):
            raise TableConfigError(f"{path}: rows of another table ({_config_diff(config, other)}) in {table_dir}")
    found = TableSnapshot(table_dir, tuple(parts), config, 0)
    try:
        ids = found.dataset().to_table(columns=["row_id"]).column("row_id")
    except Exception as exc:  # noqa: BLE001 - a footer that reads but data that does not
        raise InputError(f"{table_dir}: a part file cannot be read ({exc}); move the damaged part out") from None
    duplicate = None
    if pc.count_distinct(ids).as_py() != len(ids):
        import pyarrow as pa

        first = pa.table({"row_id": ids, "i": np.arange(len(ids))}).group_by("row_id").aggregate([("i", "min")])
        duplicate = np.ones(len(ids), bool)
        first = first.column("i_min").to_numpy()
        duplicate[first] = False
        logger.warning("%s: %d row(s) repeat a row_id of an earlier row; each row id is read once",
                       table_dir, int(duplicate.sum()))
    return TableSnapshot(table_dir, tuple(parts), config, len(ids), duplicate)


def table_config(table_dir: str | os.PathLike) -> dict:
    """The configuration of a table folder (all its parts must agree), for readers such as search."""
    return snapshot(table_dir).config


def _config_diff(found: dict, expected: dict, keys: Iterable[str] = CONFIG_KEYS) -> str:
    return ", ".join(f"{k} {found.get(k)!r} (now {expected.get(k)!r})"
                     for k in keys if found.get(k) != expected.get(k))


def open_dataset(table: "str | os.PathLike | TableSnapshot"):
    """The table as one `pyarrow.dataset` (the part files in name order)."""
    if isinstance(table, TableSnapshot):
        return table.dataset()
    import pyarrow.dataset as ds

    parts = part_files(table)
    if not parts:
        raise FileNotFoundError(f"{table}: no embeddings table here (no {PART_GLOB} files)")
    return ds.dataset([str(p) for p in parts], format="parquet")


def rows_from_feature_file(path: str | os.PathLike, pooling: Pooling,
                           image_root: str | os.PathLike | None = None) -> Iterable[list[dict]]:
    """Rows of each window / image in an existing token file (a window file or an image chunk),
    one list per item: a table made afterwards, without re-encoding. Image paths in chunks are
    relative to the extraction's --image_dir: `image_root` makes them absolute."""
    path = Path(path)
    record = load_any(path)
    if "features" in record:
        yield build_rows(record["features"], record.get("model_info") or {}, record.get("metadata") or {},
                         pooling, token_file=str(path.resolve()))
        return
    written = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)  # chunks record no time of their own
    for rel, entry in record.items():
        meta = entry.get("metadata") or {}
        source = str((Path(image_root) / rel).resolve()) if image_root is not None else rel
        yield build_rows(entry["features"], meta.get("model_info") or {}, meta, pooling, source=source,
                         token_file=str(path.resolve()), extraction_time=written)


# --------------------------------------------------------------------------- writing


def check_part_rows(part_rows: int) -> None:
    """The one check of --part_rows (a writer checks it, and so does a run that opens its writer late)."""
    if part_rows < 1:
        raise UsageError(f"--part_rows must be >= 1, got {part_rows}")


class TableWriter:
    """Appends rows to a table folder as part files; knows which items the folder already holds.

    Args:
        table_dir: the table folder (created).
        shard: (index, count) of this process, in the part names.
        part_rows: rows per part file (the most rows held in memory).
        flush_seconds: also write a part once its oldest buffered row is this old.
        overwrite: ignore (and, once this run writes its first part, remove) this shard's parts there.
    """

    def __init__(self, table_dir: str | os.PathLike, shard: tuple[int, int] = (0, 1),
                 part_rows: int = DEFAULT_PART_ROWS, flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 overwrite: bool = False):
        check_part_rows(part_rows)
        self.dir = Path(table_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shard, self.part_rows, self.flush_seconds = shard, part_rows, flush_seconds
        # temp parts of writers killed mid-write; an hour leaves live writers (seconds per part) alone
        remove_stale_temp_files(self.dir, older_than_s=3600)
        # --overwrite replaces this shard's parts (other shards replace theirs; their new parts stay)
        own = f"part-shard{shard[0]:03d}of{shard[1]:03d}-"
        self._stale = {p for p in part_files(self.dir) if p.name.startswith(own)} if overwrite else set()
        self._seen: set[Path] = set(self._stale)
        self._items: dict[str, tuple] = {}
        self.config: dict | None = None  # fixed by the first row added
        self._expected: dict | None = None
        self._rows: list[dict] = []
        self._since: float | None = None
        self.rows_written = self.parts_written = 0
        self.refresh()

    def refresh(self) -> None:
        """Read the items of part files that appeared since the last look (other processes')."""
        import pyarrow.parquet as pq

        for path in part_files(self.dir):
            if path in self._seen:
                continue
            self._seen.add(path)
            self._check(path, part_config(path))
            table = pq.read_table(path, columns=["item", "start_frame", "end_frame"])
            for item, start, end in zip(*(table.column(c).to_pylist() for c in ("item", "start_frame", "end_frame"))):
                self._items[item] = (start, end)

    def _check(self, path: Path, config: dict) -> None:
        expected = self.config or self._expected
        if expected is None:
            return
        diff = _config_diff(config, expected, keys=[k for k in CONFIG_KEYS if k in expected])
        if diff:
            raise TableConfigError(f"{path}: table rows written by another run: {diff}; "
                                   "use another table folder or pass --overwrite")

    def expect(self, config: dict) -> None:
        """What this run writes (some of CONFIG_KEYS, known before any row): refuses a folder whose
        rows differ in any of them. The first row added then fixes (and checks) all the keys."""
        self._expected = {k: config[k] for k in CONFIG_KEYS if k in config}
        for path in sorted(self._seen - self._stale):
            self._check(path, part_config(path))

    def has(self, item: str) -> bool:
        return item in self._items or any(r["item"] == item for r in self._rows)

    def frames_of(self, item: str) -> tuple | None:
        """(start_frame, end_frame) of an item already in the table."""
        return self._items.get(item)

    def add(self, rows: list[dict]) -> bool:
        """Buffer the rows of one item; True if this wrote a part (everything buffered is on disk)."""
        if not rows:
            return False
        config = row_config(rows[0])
        if self.config is None:
            self.config = config
            for path in sorted(self._seen - self._stale):
                self._check(path, part_config(path))
        elif _config_diff(config, self.config):
            raise TableConfigError(f"{rows[0]['item']}: row does not fit table {self.dir} ({_config_diff(config, self.config)})")
        self._rows.extend(rows)
        self._since = self._since or time.monotonic()
        if len(self._rows) >= self.part_rows or time.monotonic() - self._since >= self.flush_seconds:
            self.flush()
            return True
        return False

    def flush(self) -> Path | None:
        """Write the buffered rows as one part file (atomically); None if nothing was buffered."""
        if not self._rows:
            return None
        import pyarrow.parquet as pq

        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")  # names sort in write order
        name = f"part-shard{self.shard[0]:03d}of{self.shard[1]:03d}-{stamp}-{secrets.token_hex(4)}.parquet"
        path = self.dir / name
        table = _rows_to_arrow(self._rows, self.config)
        # float vectors barely compress: stored plain, so a search reads them at disk speed
        codecs = {name: "none" if name == "vector" else "zstd" for name in table.schema.names}
        atomic_write(path, lambda handle: pq.write_table(table, handle, compression=codecs,
                                                         row_group_size=len(self._rows)), what="table part")
        self._seen.add(path)
        for row in self._rows:
            self._items[row["item"]] = (row["start_frame"], row["end_frame"])
        self.rows_written += len(self._rows)
        self.parts_written += 1
        logger.debug("wrote %s (%d rows)", name, len(self._rows))
        self._rows, self._since = [], None
        self._remove_stale()
        return path

    def _remove_stale(self) -> None:
        for path in sorted(self._stale):  # --overwrite: the old rows go once new ones are safe on disk
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if self._stale:
            logger.info("%s: removed %d part file(s) of the earlier table (--overwrite)", self.dir, len(self._stale))
        self._stale = set()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not issubclass(exc_type, OutputWriteError):
            self.flush()  # on a crash too: what was computed is kept (a failed write is not retried)


# --------------------------------------------------------------------------- a table from token files


def feature_files(entries: list[str | os.PathLike]) -> list[Path]:
    """The feature files named, and those found (recursively) in the folders named, sorted."""
    found = []
    for entry in map(Path, entries):
        if entry.is_dir():
            found += sorted({p for g in FEATURE_GLOBS for p in entry.rglob(g)})
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such feature file or folder")
    if not found:
        raise UsageError(f"no feature files ({', '.join(FEATURE_GLOBS)}) in {' '.join(map(str, entries))}")
    return found


@contextlib.contextmanager
def table_lock(table_dir: str | os.PathLike) -> Iterator[None]:
    """One `table` run per folder at a time: a second waits (an advisory flock, released when the
    run ends or dies), then skips the rows the first wrote, so no row id is written twice."""
    with exclusive_lock(Path(table_dir) / ".locks" / "table.lock", lambda: logger.info(
            "%s: another run is adding rows to this table; waiting for it to finish", table_dir)):
        yield


@dataclass
class TableRun:
    added: int = 0  # windows / images
    skipped: int = 0
    rows_written: int = 0
    files: int = 0


def table_from_feature_files(files: list[Path], table_dir: str | os.PathLike, pooling: Pooling, *,
                             image_root: str | os.PathLike | None = None, part_rows: int = DEFAULT_PART_ROWS,
                             overwrite: bool = False, progress: bool | None = None) -> TableRun:
    """Pool every window / image of `files` into table rows, skipping items the table holds."""
    from tqdm import tqdm

    if part_rows < 1:
        raise UsageError(f"--part_rows must be >= 1, got {part_rows}")
    run = TableRun(files=len(files))
    with table_lock(table_dir):
        table = TableWriter(table_dir, part_rows=part_rows, overwrite=overwrite)
        table.expect({"pooling": pooling.name})
        with closing(table):
            for path in tqdm(files, unit="file", desc="pooling", disable=progress):
                try:
                    items = list(rows_from_feature_file(path, pooling, image_root))
                except ValueError as exc:
                    if isinstance(exc, (UsageError, InputError)):
                        raise
                    raise InputError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
                for rows in items:
                    if table.config is None:  # the first file fixes the model: any other is refused
                        table.expect({**row_config(rows[0]), "pooling": pooling.name})
                    if not overwrite and table.has(rows[0]["item"]):
                        run.skipped += 1
                        continue
                    table.add(rows)
                    run.added += 1
        run.rows_written = table.rows_written
    return run
