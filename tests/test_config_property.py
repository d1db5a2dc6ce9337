"""Property-based configuration checks: every invalid value or combination is refused before
any compute with one error naming the key, the value and the rule; every valid one is accepted.

The cases and the validity oracle live in tests/config_cases.py (shared with
bench/config_fuzz.py); here hypothesis draws them. :data:`RULES` must cover every key that
cpo/utils/config.py checks (found by parsing its source) and, with ``UNCHECKED``, every schema key.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cpo.utils.config
from cpo.app import check_argv, check_overrides, resume_config, schema_keys
from cpo.utils.config import PBT_HYPERPARAMS, ConfigError, validate
from tests import config_cases as cc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def fast(examples: int) -> settings:
    """Hypothesis settings: ``examples`` draws, no deadline (composition takes ~0.1 s)."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class HypothesisDraw:
    """The drawer of tests/config_cases.py over hypothesis' ``data.draw`` (shrinkable)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def pick(self, options: Sequence[Any]) -> Any:
        """One of ``options``."""
        return self.data.draw(st.sampled_from(list(options)))

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return self.data.draw(st.integers(lo, hi))

    def real(self) -> float:
        """An edge float, one in [-2, 2], or any float (nan and inf included)."""
        return self.data.draw(st.one_of(st.sampled_from(cc.EDGE_FLOATS), st.floats(-2.0, 2.0),
                                         st.floats(allow_nan=True, allow_infinity=True)))


def explain(case: cc.Case, out: cc.Outcome) -> str:
    """Why a case failed, for the assertion message."""
    want = "accepted" if case.valid else f"refused naming one of {case.names}, rule one of {case.rules}" + (
        ", with 'did you mean'" if case.hint else "")
    got = "accepted" if out.accepted else f"refused: {out.message}"
    return f"{case.category} {case.overrides()}: expected {want}; {got}"


# ---- coverage: RULES lists every key cpo/utils/config.py checks --------------------------------
#: keys the task registry (envs/registry.py, envs/tasks) checks rather than cpo/utils/config.py
REGISTRY_KEYS = {"env.name", "env.params"} | {r.key for r in cc.RULES if r.key.startswith("env.params.")}
#: (function, key expression) the parser cannot resolve -> the keys it stands for
TEMPLATES: Dict[Tuple[str, str], List[str]] = {
    ("validate_pbt", "f'algo.{key}'"): [f"algo.{k}" for k in PBT_HYPERPARAMS],  # the keys pbt.mutate lists
    ("validate", "ConfigError(str(err))"): sorted(REGISTRY_KEYS),  # the registry's EnvConfigError, re-raised
    # the memory estimate names the keys of the part that does not fit (cpo.utils.config._MEMORY_KEYS)
    ("check_memory", 'ConfigError(f"{values}: needs at least {_bytes(need)} ({part'):
        ["env.num_envs", "algo.horizon", "algo.num_minibatches", "net.actor_hidden", "net.critic_hidden",
         "net.rnn_hidden", "algo.latent_dim"],
}


def _loop_values(node: ast.AST, assigns: Dict[str, ast.AST]) -> Optional[List[str]]:
    """The strings a ``for`` loop walks: a literal tuple/list of strings (or of tuples whose
    first item is a string), directly or through a name assigned one in the function."""
    if isinstance(node, ast.Name) and node.id in assigns:
        node = assigns[node.id]
    if not isinstance(node, (ast.Tuple, ast.List)):
        return None
    out = []
    for elt in node.elts:
        if isinstance(elt, ast.Tuple) and elt.elts:
            elt = elt.elts[0]
        if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
            return None
        out.append(elt.value)
    return out


def _key_strings(node: ast.AST, env: Dict[str, List[str]]) -> Optional[List[str]]:
    """Every string a key expression can take (a literal, or an f-string over loop variables)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if not isinstance(node, ast.JoinedStr):
        return None
    outs = [""]
    for part in node.values:
        if isinstance(part, ast.Constant):
            outs = [o + part.value for o in outs]
        elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) and part.value.id in env:
            outs = [o + v for o in outs for v in env[part.value.id]]
        else:
            return None
    return outs


def _raised_key(node: ast.Raise) -> Optional[str]:
    """``raise ConfigError(f"<key>={...} ...")``: the key before the first ``={``."""
    call = node.exc
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "ConfigError" and call.args):
        return None
    msg = call.args[0]
    if isinstance(msg, ast.JoinedStr) and len(msg.values) >= 2 and isinstance(msg.values[0], ast.Constant):
        text = msg.values[0].value
        if text.endswith("=") and isinstance(msg.values[1], ast.FormattedValue):
            return text[:-1]
    return None


def checked_keys(source: str) -> Tuple[Set[str], Set[Tuple[str, str]]]:
    """Keys named by ``_check(cond, key, ...)``, ``_fail(key, ...)`` and ``raise ConfigError(
    f"key={...}")`` in ``source``, and the (function, expression) of keys it cannot resolve."""
    keys: Set[str] = set()
    unresolved: Set[Tuple[str, str]] = set()
    tree = ast.parse(source)

    def visit(node: ast.AST, env: Dict[str, List[str]], func: str, assigns: Dict[str, ast.AST]) -> None:
        if isinstance(node, ast.For):
            target = node.target.elts[0] if isinstance(node.target, ast.Tuple) else node.target
            values = _loop_values(node.iter, assigns)
            inner = dict(env)
            if isinstance(target, ast.Name):
                inner.pop(target.id, None)
                if values is not None:
                    inner[target.id] = values
            for child in node.body + node.orelse:
                visit(child, inner, func, assigns)
            return
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("_check", "_fail"):
            arg = node.args[1] if node.func.id == "_check" else node.args[0]
            found = _key_strings(arg, env)
            if found is None:
                unresolved.add((func, ast.unparse(arg)))
            else:
                keys.update(found)
        if isinstance(node, ast.Raise) and node.exc is not None:
            key = _raised_key(node)
            if key is not None:
                keys.add(key)
            elif getattr(getattr(node.exc, "func", None), "id", "") == "ConfigError":
                unresolved.add((func, ast.unparse(node.exc)[:60]))
        for child in ast.iter_child_nodes(node):
            visit(child, env, func, assigns)

    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name not in ("_check", "_fail")):
        assigns = {t.id: n.value for n in ast.walk(fn) if isinstance(n, ast.Assign)
                   for t in n.targets if isinstance(t, ast.Name)}
        visit(fn, {}, fn.name, assigns)
    return keys, unresolved


def test_checked_keys_parser_finds_loops_and_raises():
    """The source parser resolves literal keys, loops over tuples and raised f-strings."""
    src = '''
def validate(cfg):
    _check(x, "seed", 1, "r")
    names = ("a", "b")
    for key in names:
        _check(x, f"log.{key}", 1, "r")
    for key, val in (("gamma", 1), ("lam", 2)):
        _check(x, f"algo.{key}", val, "r")
    raise ConfigError(f"env.num_envs={n} is bad")
    for key in dynamic:
        _check(x, f"algo.{key}", 1, "r")
'''
    keys, unresolved = checked_keys(src)
    assert keys == {"seed", "log.a", "log.b", "algo.gamma", "algo.lam", "env.num_envs"}
    assert unresolved == {("validate", "f'algo.{key}'")}


def test_rules_cover_every_key_config_py_checks():
    """Every key that cpo/utils/config.py checks has a rule in RULES: a new ``_check`` on an unlisted
    key fails here until RULES (tests/config_cases.py) gains it; stale rules fail too."""
    with open(cpo.utils.config.__file__) as f:
        keys, unresolved = checked_keys(f.read())
    assert unresolved <= set(TEMPLATES), f"keys the parser cannot resolve (add to TEMPLATES): {unresolved - set(TEMPLATES)}"
    for template in unresolved:
        keys.update(TEMPLATES[template])
    ruled = {r.key for r in cc.RULES}
    assert len(keys) >= 70
    assert sorted(keys - ruled) == [], "keys checked by cpo/utils/config.py with no rule in tests/config_cases.py RULES"
    assert sorted(ruled - keys - REGISTRY_KEYS) == [], "rules for keys nothing checks"


def test_rules_and_unchecked_cover_every_schema_key():
    """Every key of the schema either has a rule or is listed in UNCHECKED with a reason."""
    ruled = {r.key for r in cc.RULES}
    schema = set(schema_keys())
    assert {"seed", "algo.lr", "perf.compile", "pbt.mutate", "env.params"} <= schema  # every section is walked
    assert sorted(schema - ruled - set(cc.UNCHECKED)) == []
    assert sorted(set(cc.UNCHECKED) & ruled) == [] and set(cc.UNCHECKED) <= schema


@pytest.mark.parametrize("name", sorted(cc.BASES))
def test_bases_are_what_the_rules_assume(name):
    """The base configs hold the values the rule predicates take for granted, and validate."""
    cfg = cc.base(name)
    for key, value in cc.base_facts(name).items():
        assert cc.get_key(cfg, key) == value, key
    validate(cfg)


# ---- every rule: its examples and 25 random values ----------------------------------------
#: rules whose key has no invalid value on its own base (only in combination: see below; and
#: log.wandb=true, which is refused only where the wandb package is not installed)
ONLY_IN_COMBINATION = {("algo.beta_adapt", "default"), ("pbt.shared_dir", "pbt")}
if cc._has("wandb"):
    ONLY_IN_COMBINATION.add(("log.wandb", "default"))


@pytest.mark.parametrize("rule", cc.RULES, ids=[f"{r.key}@{r.base}" for r in cc.RULES])
def test_each_rule_accepts_valid_and_refuses_invalid_clearly(rule):
    """Each rule's base value, examples and 25 seeded random values: valid ones pass
    validate(), invalid ones raise one ConfigError naming key=value and the rule; both kinds
    occur."""
    import random

    d = cc.RandomDraw(random.Random(rule.key + rule.base))
    values = [cc.current_value(rule)] + list(rule.examples) + [cc.draw_value(d, rule) for _ in range(25)]
    seen = set()
    for v in values:
        case = cc.value_case(rule, v)
        out = cc.run_direct(case)
        assert cc.passed(case, out), explain(case, out)
        seen.add(case.valid)
    assert True in seen
    assert False in seen or (rule.key, rule.base) in ONLY_IN_COMBINATION


# ---- hypothesis: random values and combinations against validate() ------------------------
@fast(400)
@given(data=st.data())
def test_random_values_are_accepted_or_clearly_refused(data):
    """A random value of a random key: 100 % of invalid values get a clear error, 100 % of
    valid ones pass."""
    case = cc.draw_value_case(HypothesisDraw(data))
    out = cc.run_direct(case)
    assert cc.passed(case, out), explain(case, out)


@fast(300)
@given(data=st.data())
def test_random_combinations_are_accepted_or_clearly_refused(data):
    """Keys whose rules depend on each other (env/policy/minibatch layout, the LR triple,
    nonfinite and fast-path switches, PBT population and workers), drawn together."""
    case = cc.draw_combo_case(HypothesisDraw(data))
    out = cc.run_direct(case)
    assert cc.passed(case, out), explain(case, out)


@fast(200)
@given(N=st.integers(1, 400), M=st.integers(1, 8), T=st.integers(1, 40), mb=st.integers(1, 64),
       W=st.integers(2, 4))
def test_torchrun_layouts_are_accepted_or_clearly_refused(N, M, T, mb, W):
    """Under torchrun (WORLD_SIZE=W) env.num_envs is global: it must split into W*M blocks and
    every rank's batch into the minibatches."""
    case = cc.Case("world", "default", {"env.num_envs": N, "algo.num_policies": M, "algo.horizon": T,
                                         "algo.num_minibatches": mb, "device": "cpu",
                                         "algo.offpolicy_blocks": "all",
                                         # one policy has no followers to couple (cpo's beta)
                                         **({"algo.beta": 0.0} if M == 1 else {})})
    case.valid = N % M == 0 and (N * T) % mb == 0 and N % (W * M) == 0 and (N // W * T) % mb == 0
    case.names = tuple((k, cc.value_texts(v)) for k, v in case.values.items())
    case.rules = ("is not divisible by", "does not divide")
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = str(W)
    try:
        out = cc.run_direct(case)
    finally:
        if old is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = old
    assert cc.passed(case, out), explain(case, out)


# ---- hypothesis: random override strings through train.py's composition path ----------
@fast(80)
@given(data=st.data())
def test_random_override_strings_are_accepted_or_clearly_refused(data):
    """Random override text (values, combinations, typos of keys, wrong types, unknown tasks
    and presets, missing resume directories) through the command-line check, Hydra, the
    schema and validate(): one clear error for each invalid one, none for valid ones."""
    case = cc.draw_case(HypothesisDraw(data))
    out = cc.run_hydra(case)
    assert cc.passed(case, out), explain(case, out)


@pytest.mark.parametrize("overrides,message", [
    (["algo.horizon=abc"], "Error merging override algo.horizon=abc\nValue 'abc' of type 'str' could not be converted to Integer"),
    (["log.progress=maybe"], "log.progress=maybe: must be true or false (true/false/yes/no/on/off/1/0)"),
    (["log.progress=2"], "log.progress=2: must be true or false"),
    (["algo.lamda_f=0.1"], "algo.lamda_f=0.1 is not a config key (valid under algo.: name, "),
    (["algo.lamda_f=0.1"], "; did you mean algo.lambda_f?"),
    (["+algo.lamda_f=0.1"], "; did you mean algo.lambda_f?"),
    (["horizon=8"], "horizon=8 is not a config key (valid under the root: seed, "),
    (["horizon=8"], "; did you mean algo.horizon?"),
    (["+perf.fsued_adam=true"], "perf.fsued_adam=True is not a config key (valid under perf.: compile, cuda_graphs, "
                                "update_step, fused_adam); did you mean perf.fused_adam?"),
    (["algo.gamma.x=1"], "algo.gamma.x=1 is not a config key (algo.gamma is a value, not a section)"),
    (["env.name=cartpol"], "env.name='cartpol' is not a registered task"),
    (["env.name=cartpol"], "did you mean 'cartpole'"),
    (["env=cartpol"], "env=cartpol: there is no preset 'cartpol' in conf/env (available: acrobot, "),
    (["env=cartpol"], "; did you mean env=cartpole?"),
    (["algo=cpoo"], "; did you mean algo=cpo?"),
    (["algo=[1]"], "algo=[1]: a config group takes one preset name (available: cpo, cpo_noadv, cpo_nokl, epo, pbt, ppo, sapg)"),
    (["perf.compile=fast"], "perf.compile='fast': must be none, policy, update or all"),
    (["device=cudax"], "device='cudax': must be auto, cpu, cuda or cuda:<index>"),
    (["seed=-1"], "seed=-1: must be an integer in [0, 4294967295]"),
    (["net.init_log_std=nan"], "net.init_log_std=nan: must be a finite number"),
    (["algo.lambda_f_tiers=[inf,1.0,1.0,1.0,1.0]"],
     "algo.lambda_f_tiers=[inf, 1.0, 1.0, 1.0, 1.0]: values must be finite numbers > 0"),
    (["algo.lr_min=0.001"], "algo.lr=0.0005: must lie within [algo.lr_min=0.001, algo.lr_max=0.01]"),
    (["algo=sapg", "algo.num_policies=1", "algo.lambda_adv=0.1"],
     "algo.lambda_adv=0.1: needs algo.num_policies >= 2 (algo.num_policies=1)"),
    (["algo.beta_adapt=true", "algo.num_policies=1"],
     "algo.beta_adapt=True: needs followers: algo.num_policies >= 2 (algo.num_policies=1)"),
    (["algo.horizon=33", "algo.num_minibatches=7"],
     "algo.num_minibatches=7 does not divide the batch env.num_envs*algo.horizon=39600 "
     "(env.num_envs=1200, algo.horizon=33)"),
    (["algo=pbt", "algo.horizon=3"],
     "algo.num_minibatches=4 does not divide a member's batch (env.num_envs/pbt.population)*algo.horizon=450 "
     "(env.num_envs=1200, pbt.population=8, algo.horizon=3)"),
    (["algo=pbt", "env.num_envs=4000"],
     "pbt.interval_steps=100000: must be >= algo.horizon*env.num_envs=128000 (one iteration; algo.horizon=32, "
     "env.num_envs=4000)"),
    (["resume=/nonexistent_dir/run"], "resume='/nonexistent_dir/run': the directory does not exist"),
])
def test_named_override_errors(overrides, message):
    """The errors the issue lists, through the composition path, with their exact text."""
    case = cc.Case("named", raw=overrides, valid=False)
    out = cc.run_hydra(case)
    assert not out.accepted and message in out.message, out.message


def test_previously_accepted_values_are_refused():
    """Values validate() used to accept and that failed later (or never): a device string
    that only starts with cuda, a seed torch cannot take, a non-finite initial log-std or
    lambda_f tier, a non-ASCII digit as off-policy block count, CUDA graphs without CUDA."""
    import torch

    cases = [("device", "cuda_fast", "device='cuda_fast'"), ("seed", 2 ** 64, "seed=18446744073709551616"),
             ("net.init_log_std", float("inf"), "net.init_log_std=inf"),
             ("algo.lambda_f_tiers", [0.1, 0.1, 0.1, 0.1, float("inf")], "values must be finite"),
             ("algo.offpolicy_blocks", "\u00b2", "algo.offpolicy_blocks='\u00b2': must be an integer k")]
    if not torch.cuda.is_available():
        cases.append(("perf.cuda_graphs", True, "perf.cuda_graphs=True: needs a CUDA device (device=auto"))
    for key, value, message in cases:
        cfg = cc.base("default")
        cc.set_key(cfg, key, value)
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert message in str(err.value)


def test_check_overrides_leaves_hydra_syntax_alone():
    """Flags, appends, deletions, Hydra's own keys, group paths, sweeps and dict-typed keys
    pass the command-line check untouched (Hydra and the schema judge them)."""
    check_overrides(["-m", "--cfg", "job", "+algo.x=1", "~algo.beta", "hydra.run.dir=/x", "hydra/launcher=joblib",
                     "algo=ppo,sapg", "algo=choice(ppo,cpo)", "experiment=null", "env.params.anything=1",
                     "algo.lambda_f=0.05,0.1", "seed=range(0,3)"])


def test_cli_check_exits_2_and_finds_presets_in_other_config_dirs(capsys, tmp_path):
    """check_argv (run by rank_argv, i.e. by train.py before Hydra) exits with code 2 and one
    line; with --config-dir or hydra.searchpath presets may live elsewhere: they are found
    there, and a preset that exists nowhere is refused in one line (Hydra's own words)."""
    (tmp_path / "algo").mkdir()
    (tmp_path / "algo" / "mine.yaml").write_text("defaults:\n  - cpo\nname: mine\nlambda_f: 0.1\n")
    check_argv(["train.py", "--config-dir", str(tmp_path), "algo=mine"])
    check_argv(["train.py", f"+hydra.searchpath=[file://{tmp_path}]", "algo=mine"])
    with pytest.raises(SystemExit) as err:
        check_argv(["train.py", "--config-dir", str(tmp_path), "env=mine"])
    assert err.value.code == 2
    assert capsys.readouterr().err.startswith("config error: Could not find 'env/mine' (available: ")
    with pytest.raises(SystemExit) as err:
        check_argv(["train.py", "algo=mine"])
    assert err.value.code == 2
    assert capsys.readouterr().err.startswith("config error: algo=mine: there is no preset 'mine' in conf/algo")


def test_cli_reports_unknown_key_before_hydra(tmp_path):
    """`python train.py algo.lamda_f=0.1`: exit code 2, one `config error:` line with a
    "did you mean", and no run directory."""
    proc = subprocess.run([sys.executable, "train.py", "algo.lamda_f=0.1", f"hydra.run.dir={tmp_path}/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1 and lines[0].startswith("config error: algo.lamda_f=0.1 is not a config key")
    assert lines[0].endswith("; did you mean algo.lambda_f?")
    assert not os.path.exists(tmp_path / "x")


def test_hydra_flags_move_before_the_overrides():
    """Hydra's argparse stops at an override that follows a flag ("unrecognized arguments"):
    train.py moves the flags, with their values, in front, keeping both orders."""
    from cpo.app import hydra_flags_first

    argv = ["train.py", "seed=1", "--config-dir", "/d", "experiment=mine", "-m", "algo.beta=0,1",
            "--info", "defaults", "+x=1", "~y", "--cfg=job", "--info", "z=2"]
    assert hydra_flags_first(argv) == ["train.py", "--config-dir", "/d", "-m", "--info", "defaults", "--cfg=job",
                                       "--info", "seed=1", "experiment=mine", "algo.beta=0,1", "+x=1", "~y", "z=2"]
    assert hydra_flags_first(["train.py"]) == ["train.py"]


def test_missing_cuda_device_is_refused_before_hydra_makes_a_directory(tmp_path):
    """`python train.py device=cuda` on a machine without CUDA (simulated: no GPU visible):
    exit code 2, one line, and not even an empty outputs/<algo>_<env>/ in the working
    directory (the check runs in the pre-Hydra precheck)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "device=cuda"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1 and "device='cuda': no CUDA device is available here" in lines[0]
    assert os.listdir(tmp_path) == []


def test_resume_directory_errors_name_it(tmp_path):
    """resume= a missing directory, or one without a checkpoint, fails naming it."""
    with pytest.raises(ConfigError, match=r"resume='.*/missing': the directory does not exist"):
        resume_config(str(tmp_path / "missing"), [])
    with pytest.raises(ConfigError, match=r"resume='.*/empty': no loadable checkpoint in .*/empty/checkpoints"):
        os.makedirs(tmp_path / "empty")
        resume_config(str(tmp_path / "empty"), [])


def test_fuzz_draws_cover_every_category():
    """The shared generator (also bench/config_fuzz.py's) draws every category, valid and
    invalid cases, and values of every rule, from a fixed seed (no composition here)."""
    import random

    d = cc.RandomDraw(random.Random(0))
    cases = [cc.draw_case(d) for _ in range(600)]
    combos = {"layout", "lr", "switches", "pbt"}
    assert {c.category for c in cases} == set(cc.CATEGORIES) - {"combo"} | combos
    for category in set(cc.CATEGORIES) - {"combo", "unknown_key", "wrong_type", "env_name"}:
        assert {c.valid for c in cases if c.category == category} == {True, False}, category
    keys = {k for c in cases if c.category == "value" for k in c.values}
    assert len(keys) >= 0.8 * len({r.key for r in cc.RULES})
