"""Several processes (torchrun / gloo on CPU): the 2-rank update equals the 1-rank update on
the union of the halves, ranks stay identical, stop decisions reach every rank, exact resume,
and the torchrun command line end to end."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as tdist

from cpo.utils import distributed
from cpo.utils.config import AlgoConfig, ConfigError, TrainConfig, validate
from cpo.utils.distributed import SINGLE, Dist, combine_moments, global_env_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

# ---- pure pieces ----------------------------------------------------------------------------


def test_combine_moments_hand_computed():
    """Rank 0 saw [1, 2, 3], rank 1 saw [4, 5]: pooled count 5, mean 3, M2 = 4+1+0+1+4 = 10
    (rank M2s 2 and 0.5, plus 3*(2-3)^2 + 2*(4.5-3)^2 = 3 + 4.5 between ranks)."""
    n, mean, m2 = combine_moments(torch.tensor([3.0, 2.0], dtype=torch.float64),
                                  torch.tensor([[2.0], [4.5]], dtype=torch.float64),
                                  torch.tensor([[2.0], [0.5]], dtype=torch.float64))
    assert float(n) == 5.0 and float(mean) == 3.0 and float(m2) == 10.0


def test_global_env_ids_layout():
    """48 envs, 6 blocks, 2 ranks: rank 1 holds envs 4..7 of every 8-env block."""
    d = Dist(rank=1, world_size=2)
    assert global_env_ids([0, 3, 4, 7, 23], d, 24, 6) == [4, 7, 12, 15, 47]
    assert global_env_ids([0, 3, 4], Dist(0, 2), 24, 6) == [0, 3, 8]


def test_single_process_is_a_no_op():
    """One process: every hook hands back its input object untouched, nothing is reduced."""
    x = torch.randn(7)
    assert SINGLE.sync_grads([], (x,))[0] is x
    m, v, c = SINGLE.moments(x, x, 3.0)
    assert m is x and v is x and c == 3.0
    mean, std = SINGLE.mean_std(x)
    assert torch.equal(mean, x.mean()) and torch.equal(std, x.std())
    sums, means = {"a": x}, [{"b": x}]
    s2, m2 = SINGLE.reduce_stats(sums, means)
    assert s2 is sums and m2[0] is means[0]
    assert SINGLE.any_true(True) and not SINGLE.any_true(False)
    assert SINGLE.seed(5) == 5 and distributed.rank_seed(5, 2) == 5 + 2 * distributed.RANK_SEED_STRIDE


def test_layout_errors_name_keys(monkeypatch):
    """Under torchrun (WORLD_SIZE=2) env.num_envs is global: it must split into 2 x M blocks,
    the per-process batch must split into the minibatches, and no single GPU may be pinned."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = TrainConfig(device="cpu")
    cfg.env.name, cfg.env.num_envs = "cartpole", 18
    cfg.algo.num_policies, cfg.algo.horizon, cfg.algo.num_minibatches = 6, 4, 1
    with pytest.raises(ConfigError, match=r"env.num_envs=18 is not divisible by "
                                          r"WORLD_SIZE\*algo.num_policies=2\*6=12"):
        validate(cfg)
    cfg.env.num_envs, cfg.algo.num_minibatches = 24, 32
    with pytest.raises(ConfigError, match=r"algo.num_minibatches=32 does not divide the per-process "
                                          r"batch env.num_envs/WORLD_SIZE\*algo.horizon=24/2\*4=48"):
        validate(cfg)
    cfg.algo.num_minibatches, cfg.device = 4, "cuda:1"
    with pytest.raises(ConfigError, match=r"device='cuda:1' pins one GPU"):
        validate(cfg)
    cfg.device = "cpu"
    validate(cfg)
    monkeypatch.delenv("WORLD_SIZE")
    cfg.env.num_envs, cfg.algo.num_minibatches = 18, 1
    validate(cfg)  # one process: 18 envs in 6 blocks is fine


def test_rank_argv(monkeypatch):
    """Ranks > 0 get Hydra overrides that keep them from writing a run directory of their own."""
    from cpo.app import rank_argv

    argv = ["train.py", "algo=ppo"]
    monkeypatch.delenv("RANK", raising=False)
    assert rank_argv(argv) == argv
    monkeypatch.setenv("RANK", "1")
    assert rank_argv(argv) == argv + ["hydra.output_subdir=null", "hydra/job_logging=disabled",
                                      "hydra.run.dir=."]
    assert "hydra.run.dir=." not in rank_argv(["train.py", "hydra.run.dir=/x"])


# ---- two gloo processes ---------------------------------------------------------------------
T_U, N_U, M_U = 4, 12, 3  # union test: horizon, global envs, policies


def _union_cfg() -> AlgoConfig:
    """CPO with off-policy and coupling rows, one minibatch per epoch, adaptive LR."""
    return AlgoConfig(name="cpo", num_policies=M_U, horizon=T_U, num_epochs=3, num_minibatches=1,
                      beta=1e-2, lambda_f=0.5, entropy_scale=0.01, lr=3e-4, kl_threshold=0.008)


def _union_model():
    from cpo.models.ensemble import EnsembleActorCritic

    return EnsembleActorCritic(3, 2, num_policies=M_U, latent_dim=4, actor_hidden=[16, 16],
                               critic_hidden=[16, 16], seed=0)


@torch.no_grad()
def _union_rollout(model):
    """The same random rollout of N_U envs in every process (actions from the model)."""
    from cpo.algo.rollout import Rollout

    g = torch.Generator().manual_seed(1)
    ro = Rollout.empty(T_U, N_U, 3, 2, M_U, torch.device("cpu"))
    ro.obs.copy_(torch.randn(T_U + 1, N_U, 3, generator=g) * 2 + 1)
    ro.log_std.copy_(model.log_std.detach())
    pol = torch.arange(N_U) // (N_U // M_U)
    model.obs_rms.update(ro.obs[0])
    for t in range(T_U):
        a, logp, mu, v = model.act(ro.obs[t], pol, g)
        ro.actions[t], ro.logp[t], ro.mu[t], ro.values[t] = a, logp, mu, v
    ro.rewards.copy_(torch.randn(T_U, N_U, generator=g))
    ro.terminated.copy_(torch.rand(T_U, N_U, generator=g) < 0.15)
    ro.truncated.copy_((torch.rand(T_U, N_U, generator=g) < 0.15) & ~ro.terminated)
    ro.final_obs.copy_(torch.where(ro.truncated.unsqueeze(-1), torch.randn(T_U, N_U, 3, generator=g),
                                   ro.obs[1:]))
    model.obs_rms.count.zero_()
    model.obs_rms.mean.zero_()
    model.obs_rms.var.fill_(1.0)
    return ro


def _columns(rank: int, world: int):
    """Global env ids of ``rank``'s envs (its slice of every block)."""
    return global_env_ids(range(N_U // world), Dist(rank, world), N_U // world, M_U)


def _subset(ro, cols):
    """The rollout of envs ``cols`` only."""
    kw = {}
    for f in dataclasses.fields(ro):
        v = getattr(ro, f.name)
        if v is None or f.name == "log_std":
            kw[f.name] = v
        elif f.name in ("h0", "c0"):
            kw[f.name] = v[cols].clone()
        else:
            kw[f.name] = v[:, cols].clone()
    return type(ro)(**kw)


def _time_split_learner(*args, **kwargs):
    """The real Learner, except that minibatch j of an epoch holds every row whose time step
    t has t % K == j (PPO rows first). The real minibatcher shuffles each process's rows with
    its own permutation, so one process on the union and two ranks on the halves would see
    different (equally valid) minibatches; with this split every rank's minibatch j is
    exactly its share of the union's minibatch j, which is the property under test."""
    from cpo.algo.learner import Learner

    class TimeSplitLearner(Learner):
        def _minibatches(self, ro, batch):
            t = batch.src // ro.num_envs
            K = batch.num_minibatches
            for j in range(K):
                sel = t % K == j
                ppo = torch.nonzero(sel[:batch.n_ppo]).flatten()
                cpl = torch.nonzero(sel[batch.n_ppo:]).flatten() + batch.n_ppo
                yield torch.cat([ppo, cpl]), None, ppo.numel()

    return TimeSplitLearner(*args, **kwargs)


def _union_update(ro, num_envs):
    """Normaliser update + build_batch + update on ``ro`` in this process's group; returns
    every number the update produced."""
    model = _union_model()
    d = distributed.current()
    for rms in (model.obs_rms, model.value_rms):
        rms.sync = d.moments if d.enabled else None
    learner = _time_split_learner(model, _union_cfg(), num_envs, torch.device("cpu"), 10, seed=0)
    learner.dist = d
    model.obs_rms.update(ro.obs[:-1].reshape(-1, 3))
    batch = learner.build_batch(ro)
    assert batch.num_minibatches == 2  # CPO's extra rows: 2 minibatches of T*N rows per epoch
    stats = learner.update(ro, batch)
    opt = learner.optimizer.state_dict()["state"]
    return {"params": torch.cat([p.detach().flatten() for p in model.parameters()]),
            "buffers": {k: v.clone() for k, v in model.state_dict().items() if "rms" in k},
            "lr": learner.lr.clone(), "approx_kl": stats["approx_kl"].clone(),
            "adam": torch.cat([opt[i]["exp_avg_sq"].flatten() for i in sorted(opt)])}


def _worker(rank: int, world: int, init_file: str, out_dir: str, job: str) -> None:
    """One rank of a gloo job: join the group, run ``job``, save what it measured."""
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = _JOBS[job](rank, world, out_dir)
        torch.save(res, os.path.join(out_dir, f"{job}_{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def _job_union(rank, world, out_dir):
    ro = _union_rollout(_union_model())
    return _union_update(_subset(ro, _columns(rank, world)), N_U // world)


def _small_cfg(iters: int, env: str = "test_line") -> TrainConfig:
    """CPO with the discriminator on the test task, 48 global envs (24 per rank)."""
    cfg = TrainConfig(seed=0, device="cpu", max_iterations=iters)
    cfg.env.name, cfg.env.num_envs = env, 48
    cfg.algo.name, cfg.algo.num_policies, cfg.algo.entropy_scale = "cpo", 6, 0.005
    cfg.algo.horizon, cfg.algo.num_minibatches, cfg.algo.num_epochs = 8, 2, 2
    cfg.algo.beta, cfg.algo.lambda_f, cfg.algo.lambda_adv = 1e-3, 0.2, 0.01
    cfg.algo.disc_batch, cfg.algo.disc_hidden = 64, [16]
    cfg.net.actor_hidden, cfg.net.critic_hidden = [16, 16], [16, 16]
    cfg.log.progress, cfg.log.ckpt_every, cfg.log.heatmap_every, cfg.log.diag_samples = False, 2, 2, 64
    return cfg


def _state_vector(r) -> torch.Tensor:
    """Parameters, normalisers, discriminator and LR of a runner, flat."""
    parts = [v.flatten().double() for v in r.model.state_dict().values()]
    parts += [p.detach().flatten().double() for p in r.learner.disc.parameters()]
    return torch.cat(parts + [r.learner.lr.reshape(1).double(), r.learner.beta.double()])


def _job_runner(rank, world, out_dir):
    """Straight 4 iterations vs 2 + resume + 2; a SIGTERM on rank 1 only; NaN on rank 1 only."""
    import tests.fakes  # noqa: F401  (registers the test tasks in this fresh process)
    from cpo.utils import checkpoint as ckpt
    from cpo.runners.collect import NonFiniteError
    from cpo.runners.runner import Runner

    res = {}
    a = Runner(_small_cfg(4), os.path.join(out_dir, "a"))
    res["a_out"] = a.train()
    res["a"] = _state_vector(a)
    res["a_obs"] = a.obs.clone()
    Runner(_small_cfg(2), os.path.join(out_dir, "b")).train()
    b = Runner(_small_cfg(4), os.path.join(out_dir, "b"),
               resume_from=ckpt.latest(os.path.join(out_dir, "b")))
    b.train()
    res["b"] = _state_vector(b)
    res["b_obs"] = b.obs.clone()
    # a SIGTERM that only rank 1 receives stops both ranks after the same iteration
    c = Runner(_small_cfg(50), os.path.join(out_dir, "c"))
    step = c.step

    def step_and_signal():
        out = step()
        if rank == 1 and c.iteration == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    c.step = step_and_signal
    c.train()
    res["c_iteration"] = c.iteration
    # NaN observations on rank 1 only (at env step 3): every rank stops, naming global ids
    cfg = _small_cfg(3, "test_nan_line")
    cfg.env.params = {"nan_step": 3}
    d = Runner(cfg, os.path.join(out_dir, "d"))
    if rank == 0:
        d.env.bad_ids = []
    try:
        d.train()
        res["nan_error"] = None
    except NonFiniteError as err:
        res["nan_error"] = str(err)
    return res


def _job_all(rank, world, out_dir):
    """Both jobs in one pair of processes (process start-up dominates the cost on 2 cores)."""
    return {"union": _job_union(rank, world, out_dir), "runner": _job_runner(rank, world, out_dir)}


_JOBS = {"all": _job_all}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run every gloo job on 2 spawned CPU processes once; (out dir, [rank 0, rank 1] results)."""
    import torch.multiprocessing as mp

    out_dir = str(tmp_path_factory.mktemp("two_ranks"))
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(_worker, args=(2, init_file, out_dir, "all"), nprocs=2, join=True)
    return out_dir, [torch.load(os.path.join(out_dir, f"all_{r}.pt"), weights_only=False) for r in range(2)]


def test_two_rank_update_equals_one_rank_update_on_the_union(two_ranks):
    """Same data: 2 gloo ranks, each with half of every block, all-reducing gradients,
    advantage and normaliser statistics, give the parameters, normalisers, adaptive LR and
    Adam moments of one process updating on the union (3 epochs of CPO with off-policy and
    coupling rows), up to the order of floating-point sums; both ranks end bitwise equal."""
    ranks = [r["union"] for r in two_ranks[1]]
    ro = _union_rollout(_union_model())
    ref = _union_update(ro, N_U)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    assert torch.equal(ranks[0]["adam"], ranks[1]["adam"])
    moved = (ref["params"] - torch.cat([p.detach().flatten() for p in _union_model().parameters()])).abs().max()
    assert moved > 1e-4  # the update did move the parameters
    print("max |2 ranks - union|: params", float((ranks[0]["params"] - ref["params"]).abs().max()),
          "buffers", {k: float((ranks[0]["buffers"][k] - v).abs().max()) for k, v in ref["buffers"].items()})
    assert torch.allclose(ranks[0]["params"], ref["params"], atol=1e-6, rtol=0)
    assert torch.allclose(ranks[0]["adam"], ref["adam"], atol=1e-9, rtol=1e-4)
    assert torch.equal(ranks[0]["lr"], ref["lr"])
    assert torch.allclose(ranks[0]["approx_kl"], ref["approx_kl"], atol=1e-7, rtol=1e-5)
    for k, v in ref["buffers"].items():
        assert torch.allclose(ranks[0]["buffers"][k], v, atol=1e-6, rtol=1e-6), k
    assert float(ranks[0]["buffers"]["obs_rms.count"]) == T_U * N_U  # every rank's rows counted


def test_two_ranks_train_identically_stop_together_and_resume_exactly(two_ranks):
    """CPO with the discriminator on 2 gloo ranks: parameters, normalisers, discriminator, LR
    and beta bitwise identical across ranks after 4 iterations; 2 + resume + 2 == 4 straight
    (per-rank env states come back from rank 0's checkpoint); a SIGTERM on rank 1 alone stops
    both after iteration 3; NaN observations on rank 1 alone stop both, naming global env ids;
    only rank 0 writes files."""
    from cpo.utils import checkpoint as ckpt

    tmp_path = pathlib.Path(two_ranks[0])
    r0, r1 = (r["runner"] for r in two_ranks[1])
    assert torch.equal(r0["a"], r1["a"])
    assert not torch.equal(r0["a_obs"], r1["a_obs"])  # different envs, different seeds
    assert torch.equal(r0["a"], r0["b"]) and torch.equal(r1["a"], r1["b"])
    assert torch.equal(r0["a_obs"], r0["b_obs"]) and torch.equal(r1["a_obs"], r1["b_obs"])
    timing = ("perf/collect_s", "perf/learn_s", "perf/sps")
    assert {k: v for k, v in r0["a_out"].items() if k not in timing} == \
        {k: v for k, v in r1["a_out"].items() if k not in timing}
    assert r0["a_out"]["perf/env_steps"] == 4 * 8 * 48  # global env steps
    payload = ckpt.load(ckpt.latest(str(tmp_path / "a")))
    assert payload["world_size"] == 2 and len(payload["ranks"]) == 2
    assert {"ckpt_000002.pt", "ckpt_000004.pt"} <= set(os.listdir(tmp_path / "a" / "checkpoints"))
    assert len([f for f in os.listdir(tmp_path / "a") if f.startswith("events")]) == 1
    assert r0["c_iteration"] == r1["c_iteration"] == 3
    assert ckpt.load(ckpt.latest(str(tmp_path / "c")))["runner"]["iteration"] == 3
    assert r0["nan_error"] == r1["nan_error"]
    assert "non-finite observation from env ids [7, 15] (global ids; rank 1) in iteration 1" in r0["nan_error"]
    assert ckpt.load(str(tmp_path / "d" / "checkpoints" / "last_good.pt"))["runner"]["iteration"] == 0


def test_torchrun_command_line(tmp_path):
    """``torchrun --nproc_per_node 2 train.py``: exit 0, one run directory written by rank 0
    only, a checkpoint holding both ranks' states and the global step count. (resume=auto is
    checked in tests/test_launchers.py, the exact resume of a 2-rank run above.)"""
    from cpo.utils import checkpoint as ckpt

    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "train.py", "algo=cpo", "env=cartpole", "env.num_envs=24", "algo.horizon=8",
           "algo.num_epochs=1", "net.actor_hidden=[16]", "net.critic_hidden=[16]", "device=cpu",
           "torch_threads=1", "log.progress=false", f"hydra.run.dir={run_dir}", "resume=auto",
           "max_iterations=2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = ckpt.load(ckpt.latest(run_dir))
    assert payload["world_size"] == 2 and len(payload["ranks"]) == 2
    assert payload["runner"]["iteration"] == 2 and payload["runner"]["env_steps"] == 2 * 8 * 24
    assert len([f for f in os.listdir(run_dir) if f.startswith("events")]) == 1
    assert not os.path.exists(os.path.join(ROOT, ".hydra"))  # rank 1 wrote nothing in the cwd
