"""`iggt predict` on a video streams it: only the picked frames are ever kept, and they are the frames (indices and
pixels) that decoding the whole clip and picking from it gives."""
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from iggt_lightning.inference import images  # noqa: E402
from iggt_lightning.inference.images import InputError, load_video_frames  # noqa: E402

W, H, N = 64, 48, 300
FRAME_BYTES = W * H * 3


def write_video(path: Path, n: int = N) -> Path:
    """``n`` frames of 64x48, each telling its index (red level, a green column, a blue row)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[..., 0] = i % 256
            rgb[:, i % W, 1] = 255
            rgb[(i // W) % H, :, 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def full_decode(path: Path, frames: int):
    """What `iggt predict` did before streaming: decode the whole clip, then pick."""
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = np.unique(np.linspace(0, len(decoded) - 1, min(frames, len(decoded))).round().astype(int))
    return [decoded[i] for i in picks], [f"{path.stem}_{i:05d}.png" for i in picks]


def assert_same(got, expected):
    (frames, names), (ref_frames, ref_names) = got, expected
    assert names == ref_names
    assert len(frames) == len(ref_frames)
    for a, b in zip(frames, ref_frames):
        assert a.dtype == np.uint8 and a.shape == (H, W, 3)
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    # mp4 states its frame count in the header; Matroska does not (the packets are counted instead)
    return {suffix: write_video(root / f"clip{suffix}") for suffix in (".mp4", ".mkv")}


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("frames", [8, 1, 2, N + 50])
def test_streamed_picks_equal_a_full_decode(clips, suffix, frames):
    got = load_video_frames(clips[suffix], frames)
    assert_same(got, full_decode(clips[suffix], frames))
    assert len(got[0]) == min(frames, N)


@pytest.mark.parametrize("hint", [0, N - 37, N + 41])
def test_a_wrong_frame_count_in_the_header_still_picks_as_a_full_decode(clips, monkeypatch, hint):
    monkeypatch.setattr(images, "_frame_count_hint", lambda av, path: hint)
    assert_same(load_video_frames(clips[".mp4"], 8), full_decode(clips[".mp4"], 8))


def test_the_reader_never_holds_more_than_the_picked_frames(clips, monkeypatch):
    video, frames = clips[".mp4"], 8
    load_video_frames(video, frames)                # warm up (lazy imports) before measuring
    live: list[weakref.ref] = []
    most = [0]
    convert = images._frame_rgb

    def counted(frame):
        array = convert(frame)
        live.append(weakref.ref(array))
        most[0] = max(most[0], sum(r() is not None for r in live))
        return array

    monkeypatch.setattr(images, "_frame_rgb", counted)
    tracemalloc.start()
    try:
        got, names = load_video_frames(video, frames)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(live) == frames and most[0] <= frames           # only the picked frames were ever converted
    assert all(a.flags.owndata or a.base is None for a in got)  # no hidden reference into a decoded frame
    # numpy-owned: tracemalloc sees them; the whole clip would be 300 x 9,216 B = 2.7 MB
    assert peak < frames * FRAME_BYTES + 256 * 1024 < N * FRAME_BYTES / 5, peak
    del got
    assert sum(r() is not None for r in live) == 0


def test_a_file_that_is_not_a_video_is_refused_naming_it(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    with pytest.raises(InputError, match="notes.mp4"):
        load_video_frames(fake, 8)
    with pytest.raises(InputError, match="--video-frames"):
        load_video_frames(write_video(tmp_path / "tiny.mp4", 3), 0)
