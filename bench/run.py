#!/usr/bin/env python
"""One benchmark command: the machine's matmul limit, the encoder against it and against
transformers, the extraction pipeline against the forward pass, image modes, whole-frame vs
centre-crop features on a 16:9 clip, peak memory.

    python bench/run.py --quick            # a few minutes on a 2-core CPU
    python bench/run.py                    # fuller (~10 min): deeper models, more runs, more configurations
    python bench/run.py --only v21         # V-JEPA 2.1 vs 2.0, 2.1's image path vs 16-frame images
    python bench/run.py --only compile     # --compile vs eager: first-call cost, per-window gain
    python bench/run.py --only peers       # ours vs transformers, ONNX Runtime, OpenVINO (exact export)
    python bench/run.py --only pages       # the explorer page's library, in headless Chromium (opt-in)
    python bench/run.py --only decode      # video decoding per backend, input pipeline per worker (opt-in)
    python bench/run.py --device cuda      # bf16 and fp16 encoder runs on the GPU, and the
                                           # model FLOPs utilisation of a full ViT-g/384 (bf16)

Writes bench/results.json and bench/results.md (the Markdown table, also printed). Wall times
are medians of several interleaved runs (the minimum is recorded too). On CPU the encoder and
matmul figures are also taken as one thread's CPU time (minimum over runs), which a busy,
shared machine disturbs far less than wall time.
Random weights throughout: speed does not depend on them; our encoder and transformers'
VJEPA2Model get the same weights through `encoder_to_hf`, and their outputs are compared.

Each section is one module of bench/sections/, registered in SECTIONS below.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine_info, machine_line, write_results  # noqa: E402
from bench.sections import (  # noqa: E402
    CLIP, Settings, decode, encoder, images, matmul, memory, mfu, pages, peers, pipeline, spatial, torch_compile, v21,
)

# name → section module, in the order of results.md (sections with RUN_FIRST run before the rest)
SECTIONS = {"matmul": matmul, "encoder": encoder, "mfu": mfu, "compile": torch_compile, "pipeline": pipeline,
            "images": images, "spatial": spatial, "v21": v21, "memory": memory, "peers": peers, "pages": pages,
            "decode": decode}
DEFAULT_ORDER = ["memory", "matmul", "encoder", "peers", "compile", "pipeline", "images", "spatial", "v21", "mfu",
                 "pages", "decode"]
log = logging.getLogger("bench")


def run_order(names: list[str]) -> list[str]:
    """The sections to run for `names`: their requirements added, RUN_FIRST ones first."""
    wanted = list(dict.fromkeys(req for name in names for req in (*getattr(SECTIONS[name], "REQUIRES", ()), name)))
    return sorted(wanted, key=lambda name: not getattr(SECTIONS[name], "RUN_FIRST", False))


# ----------------------------------------------------------------------------- report
def pass_fail(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Benchmark ({'quick' if r['quick'] else 'full'} run, {m['date']})", "",
             f"{machine_line(m)}; load average (1/5/15 min) before: {r['load_before']}, after: {r['load_after']}. "
             f"Times: median of {r['settings']['reps']} runs (encoder depth {r['settings']['depth']}).", ""]
    for name, section in SECTIONS.items():
        if name in r:
            lines += section.markdown(r[name])
    lines += ["", "## Targets", "", "| target | value | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {pass_fail(t['met'])} |")
    return "\n".join(lines) + "\n"


def targets(r: dict) -> list[dict]:
    return [row for name, section in SECTIONS.items() if name in r and hasattr(section, "targets")
            for row in section.targets(r[name], r["machine"])]


def report(path: Path) -> str:
    """Targets and Markdown again from a results.json (e.g. after changing how they are judged)."""
    import json

    r = json.loads(path.read_text())
    r["targets"] = targets(r)
    md = markdown(r)
    write_results(path, r, md)
    return md


# ----------------------------------------------------------------------------- command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: shallower models, fewer repetitions")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--depth", type=int, default=None, help="encoder blocks (default: 2 quick, 4 full)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default: 3 quick, 4 full)")
    p.add_argument("--output_dir", default=str(REPO / "bench"))
    p.add_argument("--only", nargs="+", choices=DEFAULT_ORDER, default=None,
                   help="run only these sections (default: all; 'mfu' only on CUDA unless named here)")
    p.add_argument("--report", metavar="RESULTS_JSON", default=None,
                   help="measure nothing: rewrite the targets and the .md next to an existing results.json")
    for section in SECTIONS.values():
        if hasattr(section, "add_arguments"):
            section.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("src", "vjepa2_sequential_extractor", "vjepa2_extractor", "src.models.weights"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    sections = args.only or [name for name in DEFAULT_ORDER if not getattr(SECTIONS[name], "OPT_IN", False)
                             and (getattr(SECTIONS[name], "DEFAULT_ON_CPU", True) or device.type == "cuda")]
    depth, reps = args.depth or (2 if args.quick else 4), args.reps or (3 if args.quick else 4)
    r = {"quick": args.quick, "machine": machine_info(device), "load_before": load_average(),
         "settings": {"depth": depth, "reps": reps, "clip": CLIP, "sections": sections}}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(args=args, device=device, quick=args.quick, depth=depth, reps=reps, tmp=Path(tmp),
                            dtypes=[torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float16])
        for name in run_order(sections):
            log.info("%s ...", name)
            r[name] = SECTIONS[name].run(settings, r)
    r["load_after"] = load_average()
    r["targets"] = targets(r)
    md = markdown(r)
    written = write_results(Path(args.output_dir) / "results.json", r, md)
    print(md)
    print(f"wrote {written[0]} and {written[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
