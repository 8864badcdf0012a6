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


def _tiny_video(path, frames: int, size: int):
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 30 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_too_small_frames_are_named_by_file_or_video_frame(tmp_path):
    import numpy as np
    from PIL import Image

    from src.windows import FrameWindowDataset, VideoWindowDataset

    def preprocess(clip):
        raise AssertionError("a too-small window must fail before preprocessing")

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"img_{i:03d}.png")
        Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(paths[-1])
    item = FrameWindowDataset(paths, plan_windows(4, window=2), preprocess, min_side=16)[1]
    assert item == {"window": 1, "error": "frame img_002.png is 12×8 px, smaller than one 16 px patch"}

    video = _tiny_video(tmp_path / "tiny.mp4", frames=8, size=16)
    # every 2nd source frame: window 1 covers source frames 4 and 6
    item = VideoWindowDataset(video, [0, 2, 4, 6], plan_windows(4, window=2), preprocess, min_side=32)[1]
    assert item == {"window": 1, "error": "tiny.mp4 frame 4 is 16×16 px, smaller than one 32 px patch"}


def test_worker_order_gives_each_worker_a_contiguous_run():
    from src.windows import worker_order

    batches = [[i] for i in range(10)]
    ordered = worker_order(batches, 3)
    assert sorted(ordered) == batches  # every batch, once
    by_worker = {w: [b[0] for b in ordered[w::3]] for w in range(3)}  # DataLoader: batch j → worker j mod 3
    assert by_worker == {0: [0, 1, 2, 3], 1: [4, 5, 6], 2: [7, 8, 9]}
    assert worker_order(batches, 1) == batches and worker_order(batches[:2], 4) == batches[:2]
