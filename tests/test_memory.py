"""Image runs hold at most one chunk of features, and a chunk is bounded by bytes (issue 23.1): with
ViT-g-sized features (4608 tokens × 1408, 13 MB per image) the peak RSS of a process stays under the
byte budget plus the model, where a chunk bounded by image count alone grows with --chunk_size."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.extract.image_run import split_chunks
from tests.conftest import clean_env, make_image_dir

REPO = Path(__file__).resolve().parents[1]
MB = 2**20

# One process: the model loads, then an image run whose encoder returns ViT-g/384-sized features
# (16 frames: 8 × 24 × 24 tokens, width 1408) without the forward pass (the memory is the point, not
# the minutes of CPU a real one would take). Prints the growth of its peak RSS over the run.
MEASURE = r"""
import json, sys, torch
from src.extract.image_run import extract_directory, feature_bytes
from src.inference import ClipEncoder

image_dir, out, count, budget_mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
encoder = ClipEncoder("random:vit_giant_xformers,depth=1", device="cpu", img_size=384)
tokens = encoder.grid(16)[0] * encoder.grid(16)[1] * encoder.grid(16)[2]

def encode(clips):  # the shape and dtype a ViT-g/384 gives, every page written
    return torch.full((clips.shape[0], tokens, encoder.embed_dim), 0.5, dtype=torch.float16)

encoder.encode = encode
import os
names = sorted(os.listdir(image_dir))[:count]

def status(key):  # kB in /proc/self/status
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak RSS (VmHWM) starts again from the current RSS: model loading is not the run
before = status("VmRSS:")
summary = extract_directory(encoder, image_dir, names, out, image_frames=16, batch_size=2, chunk_size=1000,
                            chunk_bytes=None if budget_mb == "none" else int(budget_mb) * 2**20, progress=False)
after = status("VmHWM:")
print(json.dumps({"growth": after - before, "image_bytes": feature_bytes(encoder, 16, None),
                  "chunks": summary.chunks_written, "done": summary.done}))
"""


def _measure(image_dir: Path, out: Path, count: int, budget_mb: int | None) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(image_dir), str(out), str(count),
                           "none" if budget_mb is None else str(budget_mb)],
                          # glibc's heap, not the run, once made the peak swing by ~40-50 MB (one suite in six
                          # failed, even with one arena): its mmap threshold adapts upwards, so freed 13 MB
                          # tensors stayed in the heap. A fixed 1 MB threshold returns them to the system at
                          # once: 6 pairs of runs then read 95-96 MB and 96-97 MB (12-24 MB apart before)
                          cwd=REPO, env=clean_env(OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="1048576"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_split_chunks_by_count_and_bytes():
    items = list("abcdefg")
    assert split_chunks(items, 3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    sizes = [4, 4, 4, 9, 1, 1, 1]
    assert split_chunks(items, 3, sizes, 8) == [["a", "b"], ["c"], ["d"], ["e", "f", "g"]]  # an item > budget alone
    assert split_chunks(items, 2, sizes, 100) == [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]  # the count still bounds
    assert split_chunks([], 3, [], 8) == []
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        split_chunks(items, 3, sizes, 0)


def test_peak_rss_stays_under_the_byte_budget_where_an_image_count_does_not(tmp_path):
    image_dir = tmp_path / "images"
    make_image_dir(image_dir, 24, height=24, width=32)
    budget = 40  # MiB: 3 images of 13 MB a chunk
    small = _measure(image_dir, tmp_path / "small", 8, budget)
    large = _measure(image_dir, tmp_path / "large", 24, budget)
    unbounded = _measure(image_dir, tmp_path / "unbounded", 24, None)
    image = large["image_bytes"]
    assert image == 8 * 24 * 24 * 1408 * 2  # ViT-g/384, 16 frames: 13 MB of fp16 tokens per image
    assert large["done"] == 24 and large["chunks"] == 8 and unbounded["chunks"] == 1
    # one chunk (≤ the budget) and one batch in flight (2 images, and its finiteness mask), beyond the
    # model; 64 MB for what the run imports and allocates besides features (tables, tqdm, the heap)
    bound = budget * MB + 4 * image + 64 * MB
    assert small["growth"] < bound and large["growth"] < bound, (small, large, bound)
    assert large["growth"] < small["growth"] + 3 * image  # three times the images, the same peak (± the heap)
    # bounded by count alone, the whole shard's features (24 × 13 MB) were held at once
    assert unbounded["growth"] > 20 * image, unbounded


def test_a_chunk_of_batch_rows_is_saved_as_it_is_and_a_partial_slice_is_not_dragged_along(tmp_path, monkeypatch):
    import torch

    from src import features

    batch = torch.arange(4 * 1000, dtype=torch.float16).reshape(4, 1000)
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda t, *a, **k: clones.append(t.shape) or real_clone(t, *a, **k))
    whole = {f"img{i}": {"features": batch[i], "metadata": {"i": i}} for i in range(4)}
    features.save_chunk(whole, tmp_path / "whole.pt")
    assert clones == []  # the rows tile the batch: written once, no second copy in memory
    part = {f"img{i}": {"features": batch[i], "metadata": {"i": i}} for i in range(2)}
    features.save_chunk(part, tmp_path / "part.pt")
    assert len(clones) == 2  # half a batch: cloned, or the other half would be written too
    monkeypatch.undo()
    assert (tmp_path / "part.pt").stat().st_size < (tmp_path / "whole.pt").stat().st_size - 3000
    loaded = features.load_chunk(tmp_path / "whole.pt")
    assert all(torch.equal(loaded[f"img{i}"]["features"], batch[i]) for i in range(4))
