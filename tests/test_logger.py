"""The TensorBoard logger, read back with TensorBoard's own event reader."""
from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cpo.utils.logger import Logger, kl_heatmap_image


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
    # figsize (3.2 + 0.75 M, 2 + 0.75 M) inches at 100 dpi -> 620 x 500 for M = 4 (tight_layout
    # keeps the canvas size)
    assert img.shape == (500, 620, 3)
    assert (events[0].height, events[0].width) == (500, 620)
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


def test_kl_heatmap_colours_are_log_scaled_and_clipped():
    """One far follower (68 nats) must not flatten the other cells: on the heatmap's log scale
    over KL_COLOR_RANGE, 0.1 and 0.2 nats sit 0.075 apart on [0, 1] (a linear scale up to 68
    would put them 0.0015 apart), and values beyond the range take the end colours."""
    from matplotlib.colors import LogNorm

    from cpo.utils.logger import KL_COLOR_RANGE

    lo, hi = KL_COLOR_RANGE
    norm = LogNorm(vmin=lo, vmax=hi)
    assert float(norm(0.2) - norm(0.1)) == pytest.approx(math.log(2) / math.log(hi / lo))
    assert float(norm(0.2) - norm(0.1)) > 0.07
    assert float(np.clip(norm(1e-6), 0, 1)) == 0.0 and float(np.clip(norm(1e6), 0, 1)) == 1.0
    K = np.array([[0.0, 0.1, 68.0], [0.1, 0.0, 0.2], [68.0, 0.2, 0.0]])
    img = kl_heatmap_image(K)
    # three distinct off-diagonal levels (0.1, 0.2, 68) plus grey diagonal: many colours
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50


def test_wandb_offline_mirrors_scalars_heatmap_and_config(tmp_path, monkeypatch):
    """log.wandb=true log.wandb_mode=offline: a short CPO run writes one offline W&B run under
    <run dir>/wandb (upload later with `wandb sync`): its record file carries every scalar tag
    the TensorBoard writer got, the env_steps axis, the run's config keys, group and tags, and
    its media hold one KL heatmap image per TensorBoard heatmap (iterations 1 and 2)."""
    pytest.importorskip("wandb", reason='wandb is not installed (pip install -e ".[wandb]")')
    import glob

    from cpo.runners.runner import Runner
    from tests.test_runner import small_cfg

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = small_cfg("cpo", iters=2)
    cfg.log.wandb, cfg.log.wandb_mode, cfg.log.wandb_tags = True, "offline", ["ci-tag"]
    cfg.log.wandb_group = "test-group"
    run_dir = tmp_path / "run"
    out = Runner(cfg, str(run_dir)).train()
    runs = glob.glob(str(run_dir / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    records = glob.glob(os.path.join(runs[0], "*.wandb"))
    assert len(records) == 1
    blob = open(records[0], "rb").read()  # protobuf records: keys are stored as UTF-8 text
    for tag in list(out) + ["env_steps", "algo.beta", "algo.lambda_f", "test-group", "ci-tag"]:
        assert tag.encode() in blob, tag
    images = glob.glob(os.path.join(runs[0], "files", "media", "images", "diversity", "kl_matrix*.png"))
    assert len(images) == 2
    # TensorBoard got the same heatmaps
    acc = _read(run_dir)
    assert len(acc.Images("diversity/kl_matrix")) == 2
