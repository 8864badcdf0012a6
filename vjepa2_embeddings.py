#!/usr/bin/env python
"""The embeddings table: make one from existing token files, search it, find near-duplicates.

    python vjepa2_embeddings.py table feats/ --table_dir feats/embeddings            # no re-encoding
    python vjepa2_embeddings.py search --table_dir feats/embeddings --row '/data/a.mp4#window3' -k 10 --output_dir hits/
    python vjepa2_embeddings.py search --table_dir feats/embeddings --video query.mp4 --start_frame 100 --output_dir hits/
    python vjepa2_embeddings.py duplicates --table_dir feats/embeddings --threshold 0.98 --output dups.csv
    python vjepa2_embeddings.py explore --table_dir feats/embeddings --output explorer.html --labels labels.csv

`table` pools every window / image of the given feature files (or folders of them) into table rows
(`--pool`, L2-normalised unless `--no_l2`), skipping rows the table already holds. `search` finds the
k rows most cosine-similar to a query: a row of the table (`--row`), a feature file (`--features`:
one query per window/image) or an image / a video clip encoded with the table's own model; it
writes `matches.csv` and one contact sheet PNG per query. The search is exact and reads the table
in blocks of `--block_rows` vectors. `duplicates` lists the pairs of rows at least `--threshold`
similar, grouped, as a CSV. `explore` writes one self-contained HTML page: a map of the rows, with
thumbnails, search and nearest neighbours (see docs/pages.md).
"""
from __future__ import annotations

import argparse
import logging
import sys
from fnmatch import fnmatch
from pathlib import Path

from tqdm import tqdm

from src import cli, embeddings_table, search
from src.embeddings_table import FEATURE_GLOBS, feature_files  # noqa: F401  (names this script offered)
from src.features import outputs_written
from src.guards import refuse_folder_as_file, refuse_output_over_input
from src.pages import explorer as pages

logger = logging.getLogger("vjepa2_embeddings")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="{table,search,duplicates,explore}")

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
    d.add_argument("--threshold", type=float, default=0.98,
                   help="cosine similarity, in (-1, 1]; pairs up to 1e-5 below it count too (float32 rounding: "
                        "bit-identical vectors score 1 ± 2e-7)")
    d.add_argument("--output", required=True, help="CSV of the pairs (group, similarity, rows)")
    d.add_argument("--block_rows", type=int, default=search.DEFAULT_BLOCK_ROWS, help="vectors read per block")
    add_explore_parser(sub)  # issue 21: the explorer page (src/pages)
    return p


def _device_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("encoding an --image or --video query")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="compute dtype")
    return parser


def make_table(args) -> int:
    files = embeddings_table.feature_files(args.features)
    pooling = embeddings_table.Pooling(args.pool, l2=not args.no_l2)
    if args.part_rows < 1:
        raise cli.UsageError(f"--part_rows must be >= 1, got {args.part_rows}")
    cli.check_output_dir(args.table_dir)
    run = embeddings_table.table_from_feature_files(files, args.table_dir, pooling, image_root=args.image_root,
                                                    part_rows=args.part_rows, overwrite=args.overwrite)
    print(f"table {args.table_dir}: {run.added} windows/images added ({run.rows_written} rows), "
          f"{run.skipped} already there, from {run.files} file(s)")
    return cli.EXIT_OK


def run_search(args) -> int:
    chosen = [name for name in ("row", "features", "image", "video") if getattr(args, name)]
    if len(chosen) != 1:
        raise cli.UsageError(f"give exactly one query: --row, --features, --image or --video (got {len(chosen)})")
    if args.k < 1 or args.block_rows < 1:
        raise cli.UsageError(f"-k and --block_rows must be >= 1, got {args.k} and {args.block_rows}")
    table = embeddings_table.snapshot(args.table_dir)  # every read below sees these parts only
    query_files = [(f"--{name}", getattr(args, name)) for name in ("features", "image", "video") if getattr(args, name)]
    for flag, value in query_files:
        if not Path(value).is_file():
            raise FileNotFoundError(f"{value}: {flag} not found")
    out = Path(args.output_dir)
    refuse_output_over_input([("--output_dir", out)], [*query_files, ("the table folder", table.dir)])
    refuse_output_over_input([("matches.csv", out / "matches.csv")], query_files)
    for flag, value in query_files:  # contact sheets are numbered per query: any of those names would do
        if Path(value).resolve().parent == out.resolve() and fnmatch(Path(value).name, "contact_sheet_*.png"):
            raise cli.UsageError(f"{flag} {value}: named like the contact sheets this search writes to "
                                 f"--output_dir {out} (it would be replaced); choose another --output_dir")
    out = cli.check_output_dir(out)
    if args.row:
        queries = search.queries_from_row(table, args.row)
    elif args.features:
        queries = search.queries_from_feature_file(args.features, table.config, args.image_root)
    else:
        queries = search.queries_from_media(table.config, image=args.image, video=args.video,
                                            start_frame=args.start_frame, frame_step=args.frame_step,
                                            device=args.device, dtype=args.dtype, video_backend=args.video_backend)
    import numpy as np

    scores, positions = search.top_k(table, np.stack([q.vector for q in queries]), args.k, args.block_rows)
    rows = [search.fetch_rows(table, p) for p in positions]
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
    output = refuse_folder_as_file(args.output, "--output")
    table = embeddings_table.snapshot(args.table_dir)  # every read below sees these parts only
    refuse_output_over_input([("--output", output)], [("a part of the table", p) for p in table.parts])
    if output.parent.resolve() == table.dir.resolve() and output.match(embeddings_table.PART_GLOB):
        raise cli.UsageError(f"--output {output}: named like a part of the table in {table.dir}, so the table "
                             "would read it as one; choose another name or folder")
    pairs = search.near_duplicates(table, args.threshold, args.block_rows)
    groups = search.duplicate_groups(pairs)
    rows_a = search.fetch_rows(table, [i for i, _, _ in pairs])
    rows_b = search.fetch_rows(table, [j for _, j, _ in pairs])
    with outputs_written(output):
        path = search.write_duplicates_csv(output, pairs, rows_a, rows_b, groups)
    n_groups = len(set(groups.values()))
    print(f"duplicates: {len(pairs)} pair(s) with similarity >= {args.threshold} among {table.unique_rows} rows, in "
          f"{n_groups} group(s); keeping one row per group drops {len(groups) - n_groups} → {path}")
    return cli.EXIT_OK


# ---- explore (issue 21): the explorer page; the work is in src/pages
def add_explore_parser(sub) -> None:
    e = sub.add_parser("explore", help="one self-contained HTML page: a map of the rows",
                       formatter_class=cli.HelpFormatter)
    e.add_argument("--table_dir", required=True)
    e.add_argument("--output", required=True, help="the HTML file to write")
    e.add_argument("--labels", default=None, help="path,label CSV (as vjepa2_probe.py reads it)")
    e.add_argument("--color_by", choices=pages.COLOR_MODES, default="auto",
                   help="auto: label with --labels, else source")
    e.add_argument("--max_points", type=int, default=pages.DEFAULT_MAX_POINTS, help="rows shown (sampled beyond)")
    e.add_argument("--max_thumbnails", type=int, default=pages.DEFAULT_MAX_THUMBNAILS,
                   help="rows with a thumbnail (sampled)")
    e.add_argument("--thumbnails", action="store_true", default=True, help="preview frames on hover (the default)")
    e.add_argument("--no_thumbnails", dest="thumbnails", action="store_false", help="points and text only")
    e.add_argument("-k", "--neighbors", type=int, default=pages.DEFAULT_NEIGHBORS,
                   help="nearest rows listed per row (0: none; costs an exact pass over the table per 2 048 rows)")
    e.add_argument("--seed", type=int, default=0, help="sampling, map and clusters")


def run_explore(args) -> int:
    output = refuse_folder_as_file(args.output, "--output")
    table = embeddings_table.snapshot(args.table_dir)
    refuse_output_over_input([("--output", output)], [("a part of the table", p) for p in table.parts]
                             + ([("--labels", args.labels)] if args.labels else []))
    summary = pages.write_explorer(args.table_dir, args.output, labels=args.labels, color_by=args.color_by,
                                   max_points=args.max_points, max_thumbnails=args.max_thumbnails,
                                   thumbnails=args.thumbnails, neighbors=args.neighbors, seed=args.seed)
    print(f"explorer: {summary.rows_shown} of {summary.table_rows} rows, {summary.thumbnails} thumbnails, "
          f"{summary.bytes / 1e6:.1f} MB → {summary.path}")
    return cli.EXIT_OK
# ---- end of explore


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    commands = {"table": make_table, "search": run_search, "duplicates": run_duplicates, "explore": run_explore}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
