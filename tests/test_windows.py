import pytest

from src.windows import Window, plan_windows, temporal_mapping


def test_full_windows_no_tail():
    ws = plan_windows(32, window=16)
    assert [w.positions for w in ws] == [tuple(range(16)), tuple(range(16, 32))]
    assert all(w.num_padded == 0 for w in ws)


def test_tail_padded_with_last_frame():
    ws = plan_windows(37, window=16, stride=16, tail="pad")
    assert len(ws) == 3
    last = ws[-1]
    assert last.positions == tuple(range(32, 37)) + (36,) * 11
    assert last.num_padded == 11 and last.real_positions == tuple(range(32, 37))
    covered = sorted({p for w in ws for p in w.real_positions})
    assert covered == list(range(37))  # every frame in exactly the windows it should be


def test_tail_dropped_is_warned(caplog):
    ws = plan_windows(37, window=16, tail="drop")
    assert len(ws) == 2
    assert "positions 32..36 (5 frames) are in no window" in caplog.text


def test_overlapping_stride_and_short_sequence():
    ws = plan_windows(20, window=8, stride=4)
    assert [w.positions[0] for w in ws] == [0, 4, 8, 12, 16]
    assert ws[-1].num_padded == 4
    short = plan_windows(5, window=16)
    assert len(short) == 1 and short[0].positions == (0, 1, 2, 3, 4) + (4,) * 11
    assert plan_windows(5, window=16, tail="drop") == []
    assert plan_windows(0, window=16) == []


def test_stride_larger_than_window_skips_by_design():
    ws = plan_windows(40, window=8, stride=16)
    assert [w.positions[0] for w in ws] == [0, 16, 32]
    assert ws[-1].num_padded == 0


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=15), "positive multiple of 2"),
    (dict(window=0), "positive multiple of 2"),
    (dict(window=16, stride=0), "stride must be positive"),
    (dict(window=16, tail="wrap"), "tail must be one of"),
])
def test_bad_plans(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(32, **kwargs)


def test_temporal_mapping_pairs():
    assert temporal_mapping([5, 6, 7, 8]) == [[5, 6], [7, 8]]
    assert Window(0, (1, 2)).real_positions == (1, 2)
