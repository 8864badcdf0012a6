#!/usr/bin/env python
"""The embeddings table: make one from existing token files, search it, find near-duplicates.

    python vjepa2_embeddings.py table feats/ --table_dir feats/embeddings            # no re-encoding
    python vjepa2_embeddings.py search --table_dir feats/embeddings --row '/data/a.mp4#window3' -k 10 --output_dir hits/
    python vjepa2_embeddings.py search --table_dir feats/embeddings --video query.mp4 --start_frame 100 --output_dir hits/
    python vjepa2_embeddings.py duplicates --table_dir feats/embeddings --threshold 0.98 --output dups.csv

`table` pools every window / image of the given feature files (or folders of them) into table rows
(`--pool`, L2-normalised unless `--no_l2`), skipping rows the table already holds. `search` finds the
k rows most cosine-similar to a query: a row of the table (`--row`), a feature file (`--features`:
one query per window/image) or an image / a video clip encoded with the table's own model; it
writes `matches.csv` and one contact sheet PNG per query. The search is exact and reads the table
in blocks of `--block_rows` vectors. `duplicates` lists the pairs of rows at least `--threshold`
similar, grouped, as a CSV.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from src import cli, embeddings_table, search

logger = logging.getLogger("vjepa2_embeddings")

FEATURE_GLOBS = ("window_*.pt", "window_*.safetensors", "features_shard*of*_chunk*.pt")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="{table,search,duplicates}")

    t = sub.add_parser("table", help="a table from existing token files (no re-encoding)",
                       formatter_class=cli.HelpFormatter)
    t.add_argument("features", nargs="+", help="feature files, or folders searched recursively for them")
    t.add_argument("--table_dir", required=True, help="table folder (created; rows already there are skipped)")
    t.add_argument("--pool", choices=embeddings_table.POOL_METHODS, default="mean",
                   help="mean or max over all tokens, or temporal (one row per temporal token)")
    t.add_argument("--no_l2", action="store_true", help="keep the pooled vectors unnormalised")
    t.add_argument("--image_root", default=None,
                   help="the extraction's --image_dir: makes image paths of chunk files absolute")
    t.add_argument("--part_rows", type=int, default=embeddings_table.DEFAULT_PART_ROWS, help="rows per part file")
    t.add_argument("--overwrite", action="store_true", help="replace the rows already in the table")

    s = sub.add_parser("search", help="the k nearest rows of a query", formatter_class=cli.HelpFormatter,
                       parents=[_device_parser(), cli.video_parser()])
    s.add_argument("--table_dir", required=True)
    q = s.add_argument_group("query (exactly one)")
    q.add_argument("--row", help="row_id of a row of the table")
    q.add_argument("--features", help="a feature file (window or chunk) written with the table's model")
    q.add_argument("--image", help="an image, encoded with the table's model")
    q.add_argument("--video", help="a video: the clip from --start_frame, encoded with the table's model")
    q.add_argument("--start_frame", type=int, default=0, help="first frame (index from 0) of the --video clip")
    q.add_argument("--frame_step", type=int, default=1, help="use every n-th frame of the --video clip")
    q.add_argument("--image_root", default=None, help="with --features of an image chunk: its --image_dir")
    s.add_argument("-k", type=int, default=10, help="matches per query")
    s.add_argument("--output_dir", required=True, help="matches.csv and contact sheets go here")
    s.add_argument("--block_rows", type=int, default=search.DEFAULT_BLOCK_ROWS,
                   help="vectors per block, at most one part file's rows (memory: about one block)")
    s.add_argument("--no_contact_sheet", action="store_true", help="CSV only (no frames are read)")

    d = sub.add_parser("duplicates", help="pairs of rows at least --threshold similar",
                       formatter_class=cli.HelpFormatter)
    d.add_argument("--table_dir", required=True)
    d.add_argument("--threshold", type=float, default=0.98, help="cosine similarity, in (-1, 1]")
    d.add_argument("--output", required=True, help="CSV of the pairs (group, similarity, rows)")
    d.add_argument("--block_rows", type=int, default=search.DEFAULT_BLOCK_ROWS, help="vectors read per block")
    return p


def _device_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("encoding an --image or --video query")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="compute dtype")
    return parser


def feature_files(entries: list[str]) -> list[Path]:
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
        raise cli.UsageError(f"no feature files ({', '.join(FEATURE_GLOBS)}) in {' '.join(entries)}")
    return found


def make_table(args) -> int:
    if args.part_rows < 1:
        raise cli.UsageError(f"--part_rows must be >= 1, got {args.part_rows}")
    files = feature_files(args.features)
    pooling = embeddings_table.Pooling(args.pool, l2=not args.no_l2)
    cli.check_output_dir(args.table_dir)
    table = embeddings_table.TableWriter(args.table_dir, part_rows=args.part_rows, overwrite=args.overwrite)
    table.expect({"pooling": pooling.name})
    added = skipped = 0
    with embeddings_table.closing(table):
        for path in tqdm(files, unit="file", desc="pooling", disable=None):
            try:
                items = list(embeddings_table.rows_from_feature_file(path, pooling, args.image_root))
            except ValueError as exc:
                if isinstance(exc, cli.UsageError):
                    raise
                raise cli.UsageError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
            for rows in items:
                if table.config is None:  # the first file fixes the model: any other is refused
                    table.expect({**embeddings_table.row_config(rows[0]), "pooling": pooling.name})
                if not args.overwrite and table.has(rows[0]["item"]):
                    skipped += 1
                    continue
                table.add(rows)
                added += 1
    print(f"table {args.table_dir}: {added} windows/images added ({table.rows_written} rows), "
          f"{skipped} already there, from {len(files)} file(s)")
    return cli.EXIT_OK


def run_search(args) -> int:
    chosen = [name for name in ("row", "features", "image", "video") if getattr(args, name)]
    if len(chosen) != 1:
        raise cli.UsageError(f"give exactly one query: --row, --features, --image or --video (got {len(chosen)})")
    if args.k < 1 or args.block_rows < 1:
        raise cli.UsageError(f"-k and --block_rows must be >= 1, got {args.k} and {args.block_rows}")
    config = embeddings_table.table_config(args.table_dir)
    for name in ("features", "image", "video"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"{value}: --{name} not found")
    out = cli.check_output_dir(args.output_dir)
    if args.row:
        queries = search.queries_from_row(args.table_dir, args.row)
    elif args.features:
        queries = search.queries_from_feature_file(args.features, config, args.image_root)
    else:
        queries = search.queries_from_media(config, image=args.image, video=args.video, start_frame=args.start_frame,
                                            frame_step=args.frame_step, device=args.device, dtype=args.dtype,
                                            video_backend=args.video_backend)
    import numpy as np

    scores, positions = search.top_k(args.table_dir, np.stack([q.vector for q in queries]), args.k, args.block_rows)
    rows = [search.fetch_rows(args.table_dir, p) for p in positions]
    from src.features import outputs_written

    with outputs_written(out):
        csv_path = search.write_matches_csv(out / "matches.csv", queries, scores, rows)
        sheets = [] if args.no_contact_sheet else [
            search.contact_sheet(out / f"contact_sheet_{i:03d}.png", q, scores[i], rows[i])
            for i, q in enumerate(tqdm(queries, unit="query", desc="contact sheets", disable=None))]
    for q, s, r in zip(queries[:3], scores, rows):
        best = ", ".join(f"{row['row_id']} ({score:.3f})" for score, row in zip(s[:3], r[:3]))
        logger.info("%s → %s", q.name, best)
    print(f"search: {len(queries)} quer{'y' if len(queries) == 1 else 'ies'}, top {scores.shape[1]} each → {csv_path}"
          + (f" and {len(sheets)} contact sheet(s)" if sheets else ""))
    return cli.EXIT_OK


def run_duplicates(args) -> int:
    if not -1.0 < args.threshold <= 1.0:
        raise cli.UsageError(f"--threshold must be in (-1, 1], got {args.threshold}")
    if args.block_rows < 1:
        raise cli.UsageError(f"--block_rows must be >= 1, got {args.block_rows}")
    embeddings_table.table_config(args.table_dir)
    pairs = search.near_duplicates(args.table_dir, args.threshold, args.block_rows)
    groups = search.duplicate_groups(pairs)
    rows_a = search.fetch_rows(args.table_dir, [i for i, _, _ in pairs])
    rows_b = search.fetch_rows(args.table_dir, [j for _, j, _ in pairs])
    from src.features import outputs_written

    with outputs_written(args.output):
        path = search.write_duplicates_csv(args.output, pairs, rows_a, rows_b, groups)
    total = open_rows(args.table_dir)
    n_groups = len(set(groups.values()))
    print(f"duplicates: {len(pairs)} pair(s) with similarity >= {args.threshold} among {total} rows, in {n_groups} "
          f"group(s); keeping one row per group drops {len(groups) - n_groups} → {path}")
    return cli.EXIT_OK


def open_rows(table_dir) -> int:
    return embeddings_table.open_dataset(table_dir).count_rows()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    return {"table": make_table, "search": run_search, "duplicates": run_duplicates}[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
