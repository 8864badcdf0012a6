"""bench/sections/peers.py (`bench/run.py --only peers`): every peer runtime is checked for exactness against our encoder before it is
raced, and the race reports a speed ratio for each contestant."""
from __future__ import annotations

import pytest

from bench.sections import peers


def test_race_checks_every_peer_for_exactness_first():
    pytest.importorskip("onnxscript")
    result = peers.race(quick=True, threads=1, depth=1, width_arch="tiny", reps=1)
    contestants = result["contestants"]
    assert set(contestants) >= {"ours", "matmul", "transformers", "onnxruntime", "openvino"}
    for name in ("transformers", "onnxruntime", "openvino"):
        entry = contestants[name]
        if "skipped" in entry and entry["skipped"].startswith("not installed"):
            continue
        assert entry["max_abs_diff"] <= peers.TOLERANCE, (name, entry)  # an exact export, not a lookalike
        assert entry["wall_median_s"] > 0 and entry["ours_speedup"] > 0
    assert 0 < result["ours_share_of_matmul_rate"]
    # ours on the CPU linear path this machine did not choose, for comparison (the same features in fp32)
    assert result["ours_cpu_linear"]["source"] == "small"  # a tiny model is not worth timing
    other = contestants["ours, plain linears"]
    assert other["max_abs_diff"] <= 1e-5 and other["wall_median_s"] > 0
    assert result["cpu_flags"] and any("| onnxruntime |" in line or "not installed" in line
                                       for line in peers.markdown(result))
    assert {row["target"].split(" ≥")[0] for row in peers.targets(result, {})} == {"our encoder"}
