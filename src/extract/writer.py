"""One writer for both runs: an encoded record → its feature file (``--store tokens|both``), its table
rows (``pooled|both``) and its manifest line; and the pooling of missing table rows from a
finished feature file (a run killed between the file and its rows), under the file's claim."""
from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import torch

from src import embeddings_table
from src.embeddings_table import Pooling, TableWriter
from src.errors import ConfigError
from src.features import Manifest, claim_output, save_features

logger = logging.getLogger(__name__)


class RecordWriter:
    """Where a run's records go.

    Args:
        manifest: the manifest of the output folder (one line per input: ok / skipped / failed).
        table: the embeddings table (None with ``store="tokens"``).
        pooling: how a record's tokens become its table vector(s).
        store: "tokens", "pooled" or "both".
        overwrite: rewrite rows the table already holds.
        shard: (index, count) of this process, on every manifest line.
        sharded_by: "windows" (each shard takes its share of every input's windows) or "input" (whole
            inputs per shard), on every manifest line.
    """

    def __init__(self, manifest: Manifest, table: TableWriter | None, pooling: Pooling | None = None,
                 store: str = "tokens", overwrite: bool = False, shard: tuple[int, int] = (0, 1),
                 sharded_by: str | None = None):
        if store not in embeddings_table.STORE_CHOICES:
            raise ConfigError(f"--store must be one of {embeddings_table.STORE_CHOICES}, got {store!r}")
        if (table is None) != (store == "tokens"):
            raise ValueError(f"store {store!r} {'needs' if table is None else 'takes no'} table")
        self.manifest, self.table, self.pooling = manifest, table, pooling or Pooling()
        self.store, self.overwrite = store, overwrite
        self.extra = {"shard": f"{shard[0]}/{shard[1]}"}  # run_parallel_extraction.sh counts per shard
        if sharded_by is not None:
            self.extra["sharded_by"] = sharded_by

    @property
    def store_tokens(self) -> bool:
        return self.store != "pooled"

    def output_name(self, path: Path) -> str:
        """What the manifest names as an input's output: its feature file, or the table folder."""
        return path.name if self.store_tokens else str(self.table.dir)

    def log(self, input_name: str, output: str | None, status: str, error: str | None = None) -> None:
        self.manifest.record(input_name, output, status, error, extra=self.extra)

    def has_rows(self, item: str) -> bool:
        """The table already holds `item` (and this run keeps it)."""
        return self.table is not None and not self.overwrite and self.table.has(item)

    def add_rows(self, features: torch.Tensor, model_info: dict, metadata: dict, token_file: Path | None,
                 source: str | None = None, extraction_time=None) -> bool:
        """Buffer the table rows of one record unless the table holds them; True if that wrote a part
        (everything buffered is then on disk)."""
        if self.table is None:
            return False
        item = embeddings_table.item_id(metadata, source)
        if self.has_rows(item):
            return False
        return self.table.add(embeddings_table.build_rows(
            features, model_info, metadata, self.pooling, source=source,
            token_file=str(token_file.resolve()) if token_file is not None and self.store_tokens else None,
            extraction_time=extraction_time))

    def write_window(self, record: dict, path: Path, fmt: str, input_name: str) -> bool:
        """A window's file, rows and manifest line; True if its rows (and all buffered) are on disk."""
        if self.store_tokens:
            save_features(record, path, fmt)
        flushed = self.add_rows(record["features"], record["model_info"], record["metadata"], path)
        self.log(input_name, self.output_name(path), "ok")
        return flushed

    def pool_rows_from_file(self, path: Path, items: list[str], claims: ExitStack,
                            image_root: Path | None = None) -> bool:
        """Rows the table lacks for `items`, pooled from the finished feature file `path` rather than
        re-encoded. The file's claim is entered on `claims` (the caller releases it once the rows are
        on disk); nothing is done when another process holds it. True if a part was written."""
        if not claims.enter_context(claim_output(path)):
            return False
        self.table.refresh()  # parts other processes wrote meanwhile
        if all(self.table.has(item) for item in items):
            return False
        flushed = False
        for rows in embeddings_table.rows_from_feature_file(path, self.pooling, image_root):
            if not self.table.has(rows[0]["item"]):
                flushed |= self.table.add(rows)
        logger.info("%s: table rows pooled from the feature file", path.name)
        return flushed
