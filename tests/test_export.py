"""ONNX export (eval.py export=<file>.onnx): the deployed graph computes the eager policy's
deterministic action, with the normaliser and the latent baked in, named inputs and outputs, a
dynamic batch axis, and explicit state inputs/outputs for recurrent policies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cpo.tools.evaluation import ExportedPolicy, check_onnx, export_onnx
from cpo.models.ensemble import EnsembleActorCritic

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")


def trained_like_model(rnn_hidden: int = 0) -> EnsembleActorCritic:
    """A 3-policy model with non-trivial normaliser statistics and latents (what a trained
    checkpoint holds)."""
    torch.manual_seed(0)
    m = EnsembleActorCritic(5, 3, 3, latent_dim=4, actor_hidden=[16, 16], rnn_hidden=rnn_hidden, seed=3)
    m.obs_rms.update(torch.randn(500, 5) * torch.tensor([1.0, 3.0, 0.5, 10.0, 2.0]) + 4.0)
    with torch.no_grad():
        m.mu_head[0].weight.mul_(100.0)  # means beyond [-1, 1]: the export clamps them
    return m


def eager_action(m: EnsembleActorCritic, obs: torch.Tensor, policy: int) -> torch.Tensor:
    """The training model's deterministic action, clamped to the action range."""
    with torch.no_grad():
        pol = torch.full((obs.shape[0],), policy, dtype=torch.long)
        return m.mean_action(obs, pol).clamp(-1.0, 1.0)


def test_onnx_feed_forward_matches_eager_policy(tmp_path):
    """obs [batch, 5] -> action [batch, 3]: equal to the model's clamped mean action of the
    chosen policy for batches of 1 and 37 (dynamic axis); names and metadata as documented."""
    m = trained_like_model()
    path = export_onnx(m, str(tmp_path / "policy.onnx"), policy=2, metadata={"algo": "cpo", "env": "x"})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["obs"]
    assert [o.name for o in sess.get_outputs()] == ["action"]
    assert sess.get_inputs()[0].shape[1] == 5 and not isinstance(sess.get_inputs()[0].shape[0], int)
    g = torch.Generator().manual_seed(1)
    for batch in (1, 37):
        obs = 4.0 + 5.0 * torch.randn(batch, 5, generator=g)
        got = sess.run(None, {"obs": obs.numpy()})[0]
        want = eager_action(m, obs, 2)
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    assert np.abs(got).max() == pytest.approx(1.0)  # some actions clamped
    # another policy's latent gives other actions: the latent is really baked in
    assert not np.allclose(got, eager_action(m, obs, 0).numpy(), atol=1e-3)
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["obs_dim"] == "5" and meta["act_dim"] == "3" and meta["policy"] == "2"
    assert meta["algo"] == "cpo" and meta["env"] == "x"
    assert check_onnx(m, path, policy=2) < 1e-5


def test_onnx_refuses_an_observation_without_batch_axis_clearly(tmp_path):
    """The graph takes [batch, obs_dim]; a 1-D observation is refused by onnxruntime naming the
    input and the rank, while the eager ExportedPolicy accepts [obs_dim] -> [act_dim]."""
    m = trained_like_model()
    path = export_onnx(m, str(tmp_path / "policy.onnx"))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?i)rank.*obs|obs.*rank"):
        sess.run(None, {"obs": np.zeros(5, dtype=np.float32)})
    one = torch.full((5,), 4.0)
    out = ExportedPolicy(m, 0)(one)
    assert out.shape == (3,)
    assert torch.allclose(out, eager_action(m, one[None], 0)[0], atol=1e-6)


def test_onnx_recurrent_policy_has_explicit_state(tmp_path):
    """(obs, h, c) -> (action, h_out, c_out); stepping the ONNX graph through an episode from
    zero state gives the eager LSTM policy's actions and states."""
    m = trained_like_model(rnn_hidden=8)
    path = export_onnx(m, str(tmp_path / "lstm.onnx"), policy=1)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["obs", "h", "c"]
    assert [o.name for o in sess.get_outputs()] == ["action", "h_out", "c_out"]
    g = torch.Generator().manual_seed(2)
    B = 4
    h = torch.zeros(B, 8)
    c = torch.zeros(B, 8)
    hn, cn = h.numpy(), c.numpy()
    pol = torch.full((B,), 1, dtype=torch.long)
    for _ in range(6):
        obs = 4.0 + 5.0 * torch.randn(B, 5, generator=g)
        with torch.no_grad():
            feats, (h, c) = m.encode_step(obs, (h, c))
            want = m.mean_base(feats, pol).clamp(-1.0, 1.0)
        act, hn, cn = sess.run(None, {"obs": obs.numpy(), "h": hn, "c": cn})
        np.testing.assert_allclose(act, want.numpy(), atol=1e-5)
        np.testing.assert_allclose(hn, h.numpy(), atol=1e-5)
        np.testing.assert_allclose(cn, c.numpy(), atol=1e-5)


def test_eval_cli_exports_onnx_from_a_run(tmp_path, capsys):
    """eval.py run=<dir> export=policy.onnx on a trained run writes a graph that onnxruntime
    runs, checked against the eager policy (the printed line reports the difference)."""
    import eval as eval_cli
    from cpo.runners.runner import Runner
    from tests.test_runner import small_cfg

    cfg = small_cfg("sapg", iters=2)
    cfg.log.tensorboard = False
    run_dir = str(tmp_path / "run")
    Runner(cfg, run_dir).train()
    out = str(tmp_path / "policy.onnx")
    summary = eval_cli.main([f"run={run_dir}", "episodes=4", f"export={out}", "policy=3"])
    assert summary["export"] == out and summary["export_max_abs_diff"] < 1e-5
    assert "exported ONNX to" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert meta["policy"] == "3" and meta["algo"] == "sapg"


def test_eval_cli_says_the_run_directory_does_not_exist(tmp_path, capsys):
    """eval.py run=/nonexistent: one line naming the directory, exit code 2."""
    import eval as eval_cli

    assert eval_cli.cli([f"run={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope" in err and len(err.strip().splitlines()) == 1
