#!/usr/bin/env python
"""Run-wide projection: fit on a sample + transform per window vs UMAP on every token.

    python bench/projection.py                           # 9 windows x 4608 tokens x 1408 dims
    python bench/projection.py --windows 3 --skip_naive  # quicker

Prints a Markdown table and writes bench/projection.json. Data: synthetic clustered
tokens (Gaussian clusters with random centres in D dims, a shared offset, unit-scale
noise, per-window cluster mix), stored as float16 window feature files (.pt via
src.features.save_features) in a temporary folder, like a real run.

Variants, each in a fresh subprocess (so peak memory and imports are its own):
  unified-umap  sample_tokens(files) -> fit_projection("umap") -> transform window by window
  unified-pca   the same with method="pca"
  naive-umap    load every window, umap.UMAP(...).fit_transform on all raw tokens
Each UMAP variant runs twice: "cold" with an empty numba cache folder (NUMBA_CACHE_DIR, a fresh
temporary folder: what a first run on a new machine pays), then "warm" on the folder the cold run
filled (every later process). Both import umap through src.jit_cache (numba's on-disk cache on for
the umap/pynndescent kernels); "compile s" is the time numba spent compiling inside the process
(src.jit_cache.compile_time), included in the other times. "process s" is the subprocess's wall
time from start to exit (interpreter, imports, data loading, the work, the ARI evaluation);
"work s" is from the first feature read to the last colour.
Peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess (resident set,
includes the interpreter, torch and numba); "base MB" is the same read after the imports.
ARI: KMeans(k = true clusters, n_init=10, random_state=0) on the 3-D embedding of
every token vs the generating cluster labels.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


VARIANTS = ("unified-umap", "unified-pca", "naive-umap")


def rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --------------------------------------------------------------------------- data


def make_data(directory: Path, windows: int, tokens: int, dim: int, clusters: int, seed: int) -> list[Path]:
    """Write ``windows`` float16 feature files and their labels; one window in memory at a time."""
    import torch

    from src.features import save_features

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (clusters, dim)).astype(np.float32)
    offset = rng.normal(0.0, 2.0, dim).astype(np.float32)  # real features share a large mean
    paths = []
    for w in range(windows):
        wrng = np.random.default_rng([seed, w])
        mix = wrng.dirichlet(np.ones(clusters))  # clusters come and go between windows
        labels = wrng.choice(clusters, size=tokens, p=mix)
        feats = centres[labels] + offset + wrng.normal(0.0, 2.0, (tokens, dim)).astype(np.float32)
        record = {"features": torch.from_numpy(feats.astype(np.float16)), "shape": [tokens, dim],
                  "dtype": "float16", "model_info": {}, "metadata": {"window": w}}
        paths.append(save_features(record, directory / f"window_{w:05d}.pt"))
        np.save(directory / f"labels_{w:05d}.npy", labels)
    return paths


# --------------------------------------------------------------------------- worker


def ari(embedding: np.ndarray, labels: np.ndarray, clusters: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    predicted = KMeans(n_clusters=clusters, n_init=10, random_state=0).fit_predict(embedding)
    return float(adjusted_rand_score(labels, predicted))


def worker(variant: str, data: Path, sample_size: int, clusters: int, seed: int) -> dict:
    from src.jit_cache import compile_time, import_umap

    with compile_time("bench") as compiled:
        start_imports = time.perf_counter()
        umap = import_umap()  # with a cold cache this compiles pynndescent's eagerly typed kernels
        from src.features import load_features
        from src.projection import fit_projection, sample_tokens

        result = {"variant": variant, "import_s": time.perf_counter() - start_imports, "base_mb": rss_mb()}
        paths = sorted(data.glob("window_*.pt"))
        labels = np.concatenate([np.load(p) for p in sorted(data.glob("labels_*.npy"))])

        start = time.perf_counter()
        if variant.startswith("unified"):
            method = variant.split("-")[1]
            sample = sample_tokens(paths, sample_size, seed=seed)
            t_sample = time.perf_counter()
            proj = fit_projection(sample, method=method, seed=seed)
            del sample
            t_fit = time.perf_counter()
            embedding, digest = [], hashlib.sha256()
            for path in paths:
                emb = proj.transform(load_features(path)["features"])
                digest.update(proj.to_rgb(emb).tobytes())
                embedding.append(emb)
            embedding = np.concatenate(embedding)
            t_end = time.perf_counter()
            result.update(fitted_tokens=int(min(sample_size, len(labels))), sample_or_load_s=t_sample - start,
                          fit_s=t_fit - t_sample, transform_s=t_end - t_fit, colours_sha256=digest.hexdigest())
        else:
            x = np.concatenate([load_features(p)["features"].numpy() for p in paths]).astype(np.float32)
            t_load = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = umap.UMAP(n_components=3, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0)
                embedding = model.fit_transform(x)
            t_end = time.perf_counter()
            result.update(fitted_tokens=int(len(x)), sample_or_load_s=t_load - start,
                          fit_s=t_end - t_load, transform_s=0.0)
    result["work_s"] = t_end - start
    result["compile_s"] = compiled.seconds
    result["compiled_functions"] = len(compiled.functions)
    result["peak_mb"] = rss_mb()  # before KMeans, which is evaluation, not projection
    result["ari"] = ari(embedding, labels, clusters)
    result["tokens"] = int(len(labels))
    return result


def run_worker(variant: str, cache: str, cache_dir: Path, data: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", variant, "--_data", str(data),
           "--sample_size", str(args.sample_size), "--clusters", str(args.clusters), "--seed", str(args.seed)]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "cache": cache, "error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        return {"variant": variant, "cache": cache,
                "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cache"] = cache
    result["process_s"] = time.perf_counter() - start
    try:
        result["load_average"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return result


# --------------------------------------------------------------------------- report


def table(results: list[dict]) -> str:
    rows = ["| variant | cache | tokens fitted | import s | sample/load s | fit s | transform s | work s "
            "| compile s (in the above) | process s | base MB | peak MB | ARI | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['variant']} | {r['cache']} | – | – | – | – | – | {r['error']} | – | – | – | – | – | – |")
            continue
        rows.append(
            f"| {r['variant']} | {r['cache']} | {r['fitted_tokens']} | {r['import_s']:.1f} | "
            f"{r['sample_or_load_s']:.1f} | {r['fit_s']:.1f} | {r['transform_s']:.1f} | {r['work_s']:.1f} | "
            f"{r['compile_s']:.1f} | {r['process_s']:.1f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['ari']:.3f} | {r.get('load_average', float('nan')):.1f} |"
        )
    return "\n".join(rows)


def speedups(results: list[dict]) -> dict:
    """naive / unified UMAP time, per cache state: work (after imports) and whole process."""
    found = {(r["variant"], r["cache"]): r for r in results if "error" not in r}
    out = {}
    for cache in ("cold", "warm"):
        naive, unified = found.get(("naive-umap", cache)), found.get(("unified-umap", cache))
        if naive and unified:
            out[cache] = {"work": round(naive["work_s"] / unified["work_s"], 2),
                          "process": round(naive["process_s"] / unified["process_s"], 2)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=9)
    p.add_argument("--tokens", type=int, default=4608, help="tokens per window (8x24x24)")
    p.add_argument("--dim", type=int, default=1408)
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--sample_size", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_naive", action="store_true", help="skip UMAP on every raw token (slow)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per variant")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "projection.json")
    p.add_argument("--_worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--_data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._worker:
        print(json.dumps(worker(args._worker, args._data, args.sample_size, args.clusters, args.seed)))
        return 0

    variants = [v for v in VARIANTS if not (args.skip_naive and v.startswith("naive"))]
    config = {k: getattr(args, k) for k in ("windows", "tokens", "dim", "clusters", "sample_size", "seed")}
    with tempfile.TemporaryDirectory(prefix="bench_projection_") as tmp:
        start = time.perf_counter()
        make_data(Path(tmp), args.windows, args.tokens, args.dim, args.clusters, args.seed)
        print(f"data: {args.windows} x {args.tokens} x {args.dim} float16 "
              f"({args.windows * args.tokens * args.dim * 2 / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        results = []
        for variant in variants:
            caches = ["cold", "warm"] if variant.endswith("umap") else ["warm"]
            cache_dir = Path(tmp) / f"numba_{variant}"  # empty: this variant's cold run fills it
            if caches == ["warm"]:
                cache_dir = Path(tmp) / "numba_unified-umap"
            for cache in caches:
                print(f"running {variant} ({cache} numba cache) ...", file=sys.stderr)
                results.append(run_worker(variant, cache, cache_dir, Path(tmp), args))
    from bench.common import machine_info  # here, not at the top: the worker processes stay free of torch

    machine = machine_info(packages=("numpy", "umap", "numba", "sklearn"))
    try:
        machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    report = {"machine": machine, "config": config,
              "memory": "ru_maxrss (MiB) of each variant's own subprocess; base_mb after the imports",
              "speedup_naive_over_unified_umap": speedups(results), "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    for cache, ratio in report["speedup_naive_over_unified_umap"].items():
        print(f"\nunified UMAP vs naive, {cache} cache: {ratio['work']}x faster (work), "
              f"{ratio['process']}x (whole process)")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
