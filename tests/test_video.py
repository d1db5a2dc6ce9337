"""Videos: ``eval.py video=true`` writes an MP4 of consecutive episodes of an embedded task.

The frame count is exact (one frame per env step: ``sum(episode lengths)``), the frame size
is the task's ``render()`` size padded to even numbers, and the first decoded frame matches
the first rendered one up to H.264's lossy compression. Skipped with the reason when
imageio / imageio-ffmpeg are not installed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("imageio", reason='videos need imageio (pip install -e ".[video]")')
pytest.importorskip("imageio_ffmpeg", reason='videos need imageio-ffmpeg (pip install -e ".[video]")')

import imageio.v2 as imageio  # noqa: E402

from cpo.utils.config import TrainConfig  # noqa: E402
from cpo.tools.evaluation import even_frame, record_video  # noqa: E402
from cpo.runners.runner import build_model  # noqa: E402
from envs import registry  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_even_frame_pads_by_repeating_the_edge():
    """A 3 x 5 frame becomes 4 x 6; the new row/column repeat the last ones."""
    f = np.arange(45, dtype=np.uint8).reshape(3, 5, 3)
    g = even_frame(f)
    assert g.shape == (4, 6, 3)
    assert np.array_equal(g[:3, :5], f) and np.array_equal(g[3, :5], f[2]) and np.array_equal(g[:3, 5], f[:, 4])
    assert even_frame(g).shape == (4, 6, 3)  # already even: unchanged


def test_cartpole_video_frames_and_size(tmp_path):
    """Two CartPole episodes capped at 15 steps: 30 frames of the even-padded render size."""
    cfg = TrainConfig(device="cpu")
    cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "cartpole", 1, 15
    env = registry.make(types.SimpleNamespace(name="cartpole", num_envs=1, max_episode_steps=15, params={}))
    env.reset(seed=5)
    first = env.render(0)
    model = build_model(cfg, env.obs_dim, env.act_dim)  # untrained: episodes of <= 15 steps
    out = record_video(model, cfg, str(tmp_path / "cp.mp4"), episodes=2, seed=5)
    lengths = out["episode_lengths"]
    assert len(lengths) == 2 and out["frames"] == sum(lengths)
    h, w = first.shape[:2]
    assert out["size"] == [h + h % 2, w + w % 2] and out["fps"] == 30
    reader = imageio.get_reader(out["path"])
    assert reader.count_frames() == out["frames"]
    decoded = reader.get_data(0)
    assert decoded.shape == (h + h % 2, w + w % 2, 3)
    # the first frame is the reset state of seed 5 (lossy codec: compare the mean error)
    assert np.abs(decoded[:h, :w].astype(float) - first.astype(float)).mean() < 8.0


MUJOCO_VIDEO = """
import json, sys
from cpo.utils.config import TrainConfig
from cpo.tools.evaluation import record_video
from cpo.runners.runner import build_model
cfg = TrainConfig(device="cpu")
cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "gymnasium", 1, 10
cfg.env.params = {"id": "HalfCheetah-v5", "kwargs": {"width": 64, "height": 48}}
model = build_model(cfg, 17, 6)
out = record_video(model, cfg, sys.argv[1], episodes=2)
print(json.dumps(out))
"""


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None,
                    reason='MuJoCo videos need mujoco (pip install -e ".[mujoco]")')
def test_mujoco_video_with_egl(tmp_path):
    """HalfCheetah-v5 frames through the gymnasium backend (MUJOCO_GL=egl, Mesa's software
    EGL on a headless CPU box): 2 episodes x 10 steps = 20 frames of 48 x 64 at 20 fps."""
    env = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    path = str(tmp_path / "cheetah.mp4")
    proc = subprocess.run([sys.executable, "-c", MUJOCO_VIDEO, path], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0 and ("EGL" in proc.stderr or "OpenGL" in proc.stderr):
        pytest.skip(f"no OpenGL context for MuJoCo here (MUJOCO_GL=egl): {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["frames"] == 20 and out["episode_lengths"] == [10, 10]
    assert out["size"] == [48, 64] and out["fps"] == 20
    reader = imageio.get_reader(path)
    assert reader.count_frames() == 20
    assert reader.get_data(0).std() > 1.0  # a real picture, not a blank frame


def test_eval_cli_writes_video(tmp_path):
    """``eval.py run=<dir> video=true video_episodes=1`` after a short training run."""
    import eval as eval_cli
    from cpo.app import run

    cfg = TrainConfig(device="cpu", max_iterations=1)
    cfg.env.name, cfg.env.num_envs, cfg.env.max_episode_steps = "pendulum", 8, 12
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 1
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16], [16]
    cfg.log.progress = False
    run(cfg, run_dir=str(tmp_path / "r"))
    summary = eval_cli.main([f"run={tmp_path / 'r'}", "episodes=2", "video=true", "video_episodes=1",
                             "video_fps=10"])
    path = summary["video"]
    assert path == str(tmp_path / "r" / "videos" / "policy0.mp4")
    reader = imageio.get_reader(path)
    assert reader.count_frames() == 12  # one 12-step Pendulum episode
    assert reader.get_meta_data()["fps"] == 10.0
