#!/usr/bin/env python
"""Every second of the README's main job: run it as a user does, into new folders, and account
for its wall time (issue 22's drawing ≤ 0.15 and non-encoder ≤ 0.40 of the extraction).

    python bench/readme_job.py                     # 3 warm runs of the README command (after 1 untimed)
    python bench/readme_job.py --against HEAD~3    # interleaved with another commit's tree, run by run
    python bench/readme_job.py --model random:tiny --runs 1 --no_warmup   # a quick check of the script

Each run is `python vjepa2_pipeline.py <the README's flags> --output_dir <new folder>` in a child
process (the process's start-up and exit are part of what is measured). The phases come from the
package's `metadata.json` (`timings_s`): *windows* is the window loop ("windows written … in X s",
the issue's extraction time), *set-up* the model build and input scan before it, *projection* and
*drawing* as logged, *rest* = wall − all of those (interpreter start, imports, the package, exit).
*CPU s* is the run's user + system time, its ffmpeg included; *busy cores* = CPU s / wall.
Prints a Markdown table with the CPU it ran on and writes `bench/readme_job.json`.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine_info, machine_line, write_results  # noqa: E402

README_FLAGS = ["--frame_dir", "examples/frames", "--umap_visualization", "--pca_visualization",
                "--video_animation", "--video_stacked_visualization", "--mp4", "--gif", "--annotate"]


def run_once(tree: Path, out: Path, model: str) -> dict:
    """One run of the README job from `tree` into `out` (new); its phases in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # grows by each reaped descendant (ffmpeg too)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "vjepa2_pipeline.py", *README_FLAGS, "--model", model,
                           "--output_dir", str(out)], cwd=tree, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"the README job failed in {tree} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    timings = json.loads((out / "package" / "metadata.json").read_text())["timings_s"]
    windows = timings.get("windows_s")
    if windows is None:  # a tree from before the pipeline recorded it: the log line's rounded figure
        line = next(l for l in proc.stderr.splitlines() if " windows written, " in l)
        windows = float(line.rsplit(" in ", 1)[1].split(" s")[0])
    phases = {"wall": wall, "windows": windows, "setup": timings["extraction_s"] - windows,
              "projection": timings.get("projection_fit_s", 0.0), "drawing": timings.get("render_s", 0.0)}
    phases["rest"] = wall - timings["extraction_s"] - phases["projection"] - phases["drawing"]
    # CPU-seconds of the run, and how many cores they kept busy on average: a run whose cores are
    # all busy only gets shorter by removing work, not by moving it between phases
    phases["cpu"], phases["busy_cores"] = cpu, cpu / wall
    phases["drawing_per_extraction"] = phases["drawing"] / windows
    phases["non_encoder_per_extraction"] = (wall - windows) / windows
    phases["load"] = load_average()
    return phases


def checkout(revision: str, into: Path) -> Path:
    """The tree of `revision` (git archive) in `into`, sharing this checkout's examples."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def markdown(result: dict) -> str:
    warm = "after an untimed warm-up run" if result["warmed_up"] else "no warm-up run"
    lines = [f"## The README main job: {result['runs']} timed run(s) per tree of `--model {result['model']}`, {warm}",
             "",
             machine_line(result["machine"]), "",
             "| run | tree | wall s | windows s | set-up s | projection s | drawing s | rest s "
             "| drawing / extraction | non-encoder / extraction | CPU s | busy cores | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(result["rows"]):
        lines.append(f"| {i // len(result['trees']) + 1} | {r['tree']} | {r['wall']:.2f} | {r['windows']:.2f} "
                     f"| {r['setup']:.2f} | {r['projection']:.2f} | {r['drawing']:.2f} | {r['rest']:.2f} "
                     f"| {r['drawing_per_extraction']:.3f} | {r['non_encoder_per_extraction']:.3f} "
                     f"| {r['cpu']:.1f} | {r['busy_cores']:.2f} | {r['load']} |")
    lines.append("")
    for tree, m in result["medians"].items():
        lines.append(f"- {tree}: medians drawing / extraction {m['drawing_per_extraction']:.3f} (target ≤ 0.15), "
                     f"non-encoder / extraction {m['non_encoder_per_extraction']:.3f} (target ≤ 0.40), "
                     f"wall {m['wall']:.2f} s, {m['busy_cores']:.2f} cores busy")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="random:vit_large", help="the README's model (default: %(default)s)")
    parser.add_argument("--against", default=None, help="a git revision to run interleaved with this tree")
    parser.add_argument("--no_warmup", action="store_true", help="skip the untimed first run of each tree")
    parser.add_argument("--output", default=str(REPO / "bench" / "readme_job.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme_job_") as tmp:
        tmp = Path(tmp)
        trees = {"this tree": REPO}
        if args.against:
            trees[args.against] = checkout(args.against, tmp / "against")
        count = 0

        def out_dir() -> Path:
            nonlocal count
            count += 1
            return tmp / f"run_{count}"

        if not args.no_warmup:  # numba's cache, the CPU linear choice, the page cache: warm, as the README says
            for tree in trees.values():
                run_once(tree, out_dir(), args.model)
        rows = []
        for _ in range(args.runs):
            for name, tree in trees.items():
                out = out_dir()
                rows.append({"tree": name, **run_once(tree, out, args.model)})
                shutil.rmtree(out)
    medians = {name: {k: statistics.median(r[k] for r in rows if r["tree"] == name)
                      for k in ("wall", "windows", "drawing_per_extraction", "non_encoder_per_extraction",
                                "busy_cores")}
               for name in trees}
    result = {"model": args.model, "runs": args.runs, "warmed_up": not args.no_warmup, "trees": list(trees),
              "machine": machine_info("cpu"),
              "rows": rows, "medians": medians}
    text = markdown(result)
    print(text)
    for path in write_results(args.output, result, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
