"""decord, torchcodec and PyAV behind one interface return the same frames."""
import numpy as np
import pytest
import torch

from tests import formats
from wamforge.data_pipeline import decoders
from wamforge.data_pipeline.decoders import ReaderCache, available_backends, open_reader
from wamforge.data_pipeline.video import decode_clip, decode_mp4, encode_mp4, read_video_file


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = np.concatenate([formats.moving_square(20, (200, 60, 30), 64), formats.moving_square(13, (20, 90, 200), 64)])
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    path.write_bytes(encode_mp4(frames[:, :48], 15))
    return path


def test_every_backend_is_installed_here():
    assert available_backends() == ("decord", "torchcodec", "pyav")


@pytest.mark.parametrize("backend", ["decord", "torchcodec", "pyav"])
@pytest.mark.parametrize("from_bytes", [True, False])
def test_backends_return_identical_frames(clip, backend, from_bytes):
    reference = open_reader(clip.read_bytes(), "pyav").get(range(33))
    reader = open_reader(clip.read_bytes() if from_bytes else clip, backend)
    assert len(reader) == 33 and reader.fps == pytest.approx(15.0)
    indices = np.random.default_rng(1).choice(33, 16, replace=False)
    np.testing.assert_array_equal(reader.get(indices), reference[indices])


def test_reader_cache_is_bounded_and_notices_rewritten_files(clip, tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"v{i}.mp4")
        paths[-1].write_bytes(clip.read_bytes())
    cache = ReaderCache(capacity=2, backend="torchcodec")
    first = cache(paths[0])
    assert cache(paths[0]) is first
    cache(paths[1]), cache(paths[2])
    assert len(cache.readers) == 2 and str(paths[0]) not in {k[0] for k in cache.readers}
    paths[2].write_bytes(encode_mp4(formats.moving_square(9, (0, 0, 0), 64), 15))
    assert len(cache(paths[2])) == 9


def test_decoding_falls_back_where_a_backend_refuses(clip):
    narrow = encode_mp4(formats.moving_square(9, (50, 50, 50), 32)[:, :, :16], 10)  # decord cannot copy 16 px rows
    frames = decode_mp4(narrow, backend="decord")
    assert frames.shape == (9, 32, 16, 3)
    np.testing.assert_array_equal(frames, open_reader(narrow, "pyav").get(range(9)))


def test_file_ranges_match_between_the_cached_reader_and_pyav_seeking(clip, monkeypatch):
    fast, fps = read_video_file(clip, 20 / 15, 30 / 15)
    monkeypatch.setenv("WAMFORGE_VIDEO_BACKEND", "pyav")
    slow, _ = read_video_file(clip, 20 / 15, 30 / 15)
    assert fps == pytest.approx(15.0) and len(fast) == 10
    np.testing.assert_array_equal(fast, slow)


def test_an_unusable_backend_override_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WAMFORGE_VIDEO_BACKEND", "opencv")
    with pytest.raises(ValueError, match="WAMFORGE_VIDEO_BACKEND=opencv is not usable here"):
        decoders.default_backend()


def test_a_window_decodes_to_views_side_by_side_split_apart():
    two_views = np.concatenate([formats.moving_square(9, (200, 60, 30), 32), formats.moving_square(9, (20, 90, 200), 32)], 2)
    clip = decode_clip(encode_mp4(two_views, 10), views=2)
    frames = decode_mp4(encode_mp4(two_views, 10))  # [T, H, 2W, 3]
    assert clip.shape == (9, 2, 3, 32, 32) and clip.dtype == torch.uint8
    for view in range(2):
        np.testing.assert_array_equal(clip[:, view].permute(0, 2, 3, 1).numpy(), frames[:, :, 32 * view:32 * (view + 1)])


def test_decoding_on_the_gpu_where_it_cannot_run_is_one_clear_error():
    assert decoders.decode_device("cpu", torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="decode_device: cuda .* but the ranks run on cpu; set it to cpu"):
        decoders.decode_device("cuda", torch.device("cpu"))
    if not torch.cuda.is_available():  # this machine's torchcodec and device say why they cannot
        assert decoders.gpu_decode_unavailable("cuda") == "no CUDA device is visible"
