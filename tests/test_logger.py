"""The TensorBoard logger, read back with TensorBoard's own event reader."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cpo.logger import Logger, kl_heatmap_image


def _read(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_kl_heatmap_roundtrip(tmp_path):
    """The heatmap lands under `diversity/kl_matrix` at the given step as a PNG whose decoded
    pixels equal kl_heatmap_image(matrix) (an RGB image of the size the figure implies)."""
    M = 4
    rng = np.random.default_rng(0)
    K = rng.uniform(0.0, 4.0, (M, M))
    np.fill_diagonal(K, 0.0)
    log = Logger(str(tmp_path))
    log.kl_heatmap(K, step=12345)
    log.close()
    acc = _read(tmp_path)
    assert "diversity/kl_matrix" in acc.Tags()["images"]
    events = acc.Images("diversity/kl_matrix")
    assert len(events) == 1 and events[0].step == 12345
    png = events[0].encoded_image_string
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    # figsize (1.2 + 0.6 M, 1.0 + 0.5 M) inches at 80 dpi -> 288 x 240 for M = 4 (tight_layout
    # keeps the canvas size)
    assert img.shape == (240, 288, 3)
    assert (events[0].height, events[0].width) == (240, 288)
    expect = kl_heatmap_image(K)
    assert np.array_equal(img, expect)
    assert img.std() > 10  # not a blank image


def test_scalars_roundtrip(tmp_path):
    """Scalars written by Logger.scalars read back with the same values and steps."""
    log = Logger(str(tmp_path))
    log.scalars({"a/x": 1.5, "b": -2.25}, step=10)
    log.scalars({"a/x": 3.0}, step=20)
    log.close()
    acc = _read(tmp_path)
    xs = acc.Scalars("a/x")
    assert [(e.step, e.value) for e in xs] == [(10, 1.5), (20, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("b")] == [(10, -2.25)]


def test_disabled_logger_writes_nothing(tmp_path):
    """enabled=False swallows calls and creates no event file."""
    d = tmp_path / "off"
    log = Logger(str(d), enabled=False)
    log.scalars({"a": 1.0}, 1)
    log.kl_heatmap(np.zeros((2, 2)), 1)
    log.close()
    assert not d.exists()
