"""Peak memory of a whole sequential extraction of 10 and 100 windows, in a fresh process each."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.common import REPO, WINDOW, make_frames
from bench.sections import Settings

RUN_FIRST = True  # while bench/run.py's process is still small (see bench_memory)

_MEMORY_CHILD = textwrap.dedent("""
    import json, logging, resource, sys
    sys.path.insert(0, {repo!r})
    logging.disable(logging.WARNING)
    from src.extract.seed import SequentialVJEPA2Extractor
    ex = SequentialVJEPA2Extractor({model!r}, device="cpu", img_size={img}, batch_size=1, overwrite=True)
    summary = ex.process_frame_directory({frames!r}, {out!r}, last_frame={last})
    assert summary["ok"] == {windows}, summary
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    print(json.dumps({{"vmhwm_kb": int(hwm[0].split()[1]) if hwm else None,
                       "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       "children_ru_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                       "num_workers": ex.num_workers}}))
""")


def bench_memory(model: str, img: int, counts: tuple[int, ...], tmp: Path) -> dict:
    """RSS high-water mark of a whole sequential extraction of n windows, in a fresh process each.

    The child reports `ru_maxrss` and `VmHWM`. On Linux `ru_maxrss` survives fork+exec: a child
    of this (large) benchmark process starts at the parent's RSS, so it cannot show the child's
    own peak. `VmHWM` is the high-water mark of the child's own address space (fresh at exec):
    that is the figure compared. (Run at the very start, before the parent grows, the two agree.)
    """
    frames_dir = tmp / "memframes"
    make_frames(frames_dir, max(counts) * WINDOW, size=(img + img // 4, img))
    res = {"model": model, "img_size": img, "runs": {}}
    for n in counts:
        code = _MEMORY_CHILD.format(repo=str(REPO), model=model, img=img, frames=str(frames_dir),
                                    out=str(tmp / f"mem_out_{n}"), last=n * WINDOW - 1, windows=n)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res["runs"][str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "vmhwm_kb" if res["runs"][str(min(counts))]["vmhwm_kb"] else "ru_maxrss_kb"
    res["measure"] = key
    lo, hi = (res["runs"][str(n)][key] for n in (min(counts), max(counts)))
    res["ratio_max_vs_min"] = hi / lo
    return res


def run(settings: Settings, results: dict) -> dict:
    # bench/run.py runs this first, while its process is small (see bench_memory)
    return bench_memory("random:tiny", 64, (10, 100), settings.tmp)


def markdown(result: dict) -> list[str]:
    lines = []
    mem = result
    lines += ["", f"## Peak memory of a sequential extraction ({mem['model']}, {mem['img_size']} px crop; fresh process each)", "",
              "| windows | VmHWM (MB) | ru_maxrss (MB) | workers' ru_maxrss (MB) |", "|---|---|---|---|"]
    for n, v in mem["runs"].items():
        hwm = f"{v['vmhwm_kb'] / 1024:.0f}" if v["vmhwm_kb"] else "–"
        lines.append(f"| {n} | {hwm} | {v['ru_maxrss_kb'] / 1024:.0f} | {v['children_ru_maxrss_kb'] / 1024:.0f} |")
    lines += ["", f"100 vs 10 windows ({mem['measure']}): **{mem['ratio_max_vs_min']:.3f}×**"]
    return lines


def targets(result: dict, machine: dict) -> list[dict]:
    out = []
    out.append({"target": "peak RSS 100 windows ≤ 1.10× 10 windows", "value": f"{result['ratio_max_vs_min']:.3f}×",
                "met": result["ratio_max_vs_min"] <= 1.10})
    return out
