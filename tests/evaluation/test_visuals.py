"""Frame metrics (PSNR, SSIM) and the evaluation videos: values, shapes, and an mp4 round trip."""
import math

import numpy as np
import pytest
import torch

from wamforge.data_pipeline.decoders import available_backends
from wamforge.data_pipeline.video import decode_mp4, tile_views
from wamforge.evaluation.videos import (OBSERVED, PLAIN, PREDICTED, episode_video, future_beside_real,
                                        panel_slices, write_mp4)
from wamforge.evaluation.visual_metrics import SSIM_K1, psnr, ssim


def smooth_video(t=4, h=32, w=32, seed=0) -> np.ndarray:
    """uint8 [T, H, W, 3]: moving colour gradients, content a codec and SSIM both treat as an image."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    frames = [np.stack([np.sin(4 * x + 3 * y + i * 0.3 + p) for p in phase], -1) for i in range(t)]
    return ((np.stack(frames) + 1) * 127.5).round().astype(np.uint8)


# the same frames in each accepted form: uint8 video frames, float images, a torch batch
LAYOUTS = {
    "uint8 THWC": lambda v: v,
    "float NCHW": lambda v: v.transpose(0, 3, 1, 2).astype(np.float32) / 255,
    "torch NCHW": lambda v: torch.from_numpy(v).permute(0, 3, 1, 2).double() / 255,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_identical_frames_score_perfectly(layout):
    frames = LAYOUTS[layout](smooth_video())
    p, s = psnr(frames, frames), ssim(frames, frames)
    assert p.per_frame == [math.inf] * 4 and p.mean == math.inf
    assert s.per_frame == pytest.approx([1.0] * 4) and s.mean == pytest.approx(1.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_psnr_is_ten_log10_of_inverse_mse(layout):
    real = smooth_video()
    noisy = np.clip(real.astype(int) + np.random.default_rng(1).integers(-20, 21, real.shape), 0, 255).astype(np.uint8)
    mse = ((noisy / 255.0 - real / 255.0) ** 2).mean(axis=(1, 2, 3))
    scores = psnr(LAYOUTS[layout](noisy), LAYOUTS[layout](real))
    assert scores.per_frame == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    assert scores.mean == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5)


@pytest.mark.parametrize("a, b", [(51, 153), (0, 255), (200, 190)])
def test_ssim_of_constant_frames_is_the_luminance_term(a, b):
    """Constant frames have no variance or covariance, so SSIM reduces to (2ab + C1) / (a² + b² + C1)."""
    x, y = np.full((1, 16, 16, 3), a, np.uint8), np.full((1, 16, 16, 3), b, np.uint8)
    a, b, c1 = a / 255, b / 255, SSIM_K1 ** 2
    assert ssim(x, y).mean == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


@pytest.mark.parametrize("damage", ["negation", "noise"])
def test_ssim_drops_for_unlike_frames(damage):
    real = smooth_video()
    if damage == "negation":
        other = 255 - real
    else:
        other = np.random.default_rng(2).integers(0, 256, real.shape, dtype=np.uint8)
    assert ssim(other, real).mean < 0.2
    assert ssim(real, real).mean - ssim(other, real).mean > 0.8


def test_ssim_matches_pytorch_msssim():
    import pytorch_msssim as reference  # the test extra installs it

    rng = np.random.default_rng(3)
    real = smooth_video(t=3, h=40, w=36)
    predicted = np.clip(real + rng.normal(0, 25, real.shape), 0, 255).astype(np.uint8)
    as_batch = [torch.from_numpy(v).permute(0, 3, 1, 2).double() / 255 for v in (predicted, real)]
    expected = reference.ssim(*as_batch, data_range=1.0, size_average=False)
    assert ssim(predicted, real).per_frame == pytest.approx(expected.tolist(), abs=1e-5)  # its window is float32


def test_metrics_reject_mismatched_or_tiny_frames():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(smooth_video(h=32), smooth_video(h=30))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(smooth_video(h=8, w=8), smooth_video(h=8, w=8))


@pytest.mark.parametrize("backend", [b for b in ("torchcodec", "pyav") if b in available_backends()])
@pytest.mark.parametrize("h, w", [(64, 64), (33, 47)])
def test_write_mp4_round_trips(tmp_path, backend, h, w):
    frames = smooth_video(t=12, h=h, w=w)
    path = write_mp4(tmp_path / "clips" / "episode.mp4", frames, fps=10)
    decoded = decode_mp4(path.read_bytes(), backend)
    assert decoded.shape == (12, h + h % 2, w + w % 2, 3)  # odd sizes padded to even
    assert min(psnr(decoded[:, :h, :w], frames).per_frame) > 30  # lossy, but close
    assert path.stat().st_size < frames.nbytes / 4


@pytest.mark.parametrize("views, h, w, min_height, scale", [(1, 64, 64, 256, 4), (3, 64, 48, 256, 4),
                                                             (2, 100, 80, 256, 3), (2, 300, 200, 256, 1)])
def test_episode_video_tiles_and_upscales(views, h, w, min_height, scale):
    frames = np.random.default_rng(4).integers(0, 256, (2, views, h, w, 3), dtype=np.uint8)
    out = episode_video(frames, min_height)
    assert out.shape == (2, h * scale, views * w * scale, 3)
    np.testing.assert_array_equal(out[:, ::scale, ::scale], tile_views(frames))


@pytest.mark.parametrize("context", [0, 2, 5])
@pytest.mark.parametrize("h, w", [(64, 64), (32, 48)])
def test_future_beside_real_keeps_frames_and_marks_context(context, h, w):
    real = smooth_video(t=5, h=h, w=w)
    predicted = smooth_video(t=5, h=h, w=w, seed=9)
    out = future_beside_real(real, predicted, context)
    (rows, real_cols), (_, predicted_cols) = panel_slices(h, w)
    scale, border = 256 // h, real_cols.start
    assert out.dtype == np.uint8 and out.shape[:2] == (5, rows.stop + border)
    assert out.shape[2] == predicted_cols.stop + border
    np.testing.assert_array_equal(out[:, rows, real_cols], real.repeat(scale, 1).repeat(scale, 2))
    np.testing.assert_array_equal(out[:, rows, predicted_cols], predicted.repeat(scale, 1).repeat(scale, 2))

    observed = np.arange(5) < context
    real_border, predicted_border = out[:, rows.start, real_cols.start - 1], out[:, rows.start, predicted_cols.start - 1]
    np.testing.assert_array_equal(real_border, np.where(observed[:, None], OBSERVED, PLAIN))
    np.testing.assert_array_equal(predicted_border, np.where(observed[:, None], OBSERVED, PREDICTED))
    labels = out[0, :rows.start - border]  # the label bar above the border
    assert labels[:, real_cols].max() > 200 and labels[:, predicted_cols].max() > 200  # white text drawn


def test_future_beside_real_rejects_bad_input():
    with pytest.raises(ValueError, match="alike"):
        future_beside_real(smooth_video(t=5), smooth_video(t=4), 2)
    with pytest.raises(ValueError, match="outside"):
        future_beside_real(smooth_video(t=5), smooth_video(t=5), 6)
