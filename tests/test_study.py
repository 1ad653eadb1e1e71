"""Study files: the shipped ones load, every bad input is one line naming the key path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from objective.config import TrialConfig
from sweep.errors import UserError
from sweep.overrides import apply_overrides, yaml_load
from sweep.preflight import preflight
from sweep.study import DEFAULT_SEED_NAMES, BuiltinObjective
from sweep.study_loader import load_study, resolve_storage
from sweep.trainer_config_doc import (
    TRAINER_CONFIG_MARKER,
    parse_trainer_config,
    trainer_config_document,
)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
TINY_LAYERS = 8  # objective/tiny/pretrain.py: num_hidden_layers=8


def make_profile(path: Path, num_layers: int = TINY_LAYERS, fmt: str = "mxfp4") -> Path:
    """An SRDD profile measured by quant.srdd on a random small Qwen2 (no checkpoint needed)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from quant.srdd import scan_model

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    batches = [torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    profile = scan_model(model, batches, fmt, model_name=f"random-qwen2-{num_layers}")
    profile.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_profile(tmp_path_factory.mktemp("prior") / "tiny-mxfp4.json")


def tiny_study_dir(tmp_path: Path, profile: Path) -> Path:
    """A copy of the shipped tiny study beside a freshly measured profile."""
    (tmp_path / "priors").mkdir(exist_ok=True)
    shutil.copy(profile, tmp_path / "priors" / "tiny-mxfp4.json")
    dst = tmp_path / "tiny-mxfp4-w4a4.yaml"
    shutil.copy(STUDIES / "tiny-mxfp4-w4a4.yaml", dst)
    return dst


def write_study(tmp_path: Path, profile_file: Path, **changes: object) -> Path:
    """The tiny study with top-level sections replaced (None deletes a key)."""
    src = tiny_study_dir(tmp_path, profile_file)
    data = yaml.safe_load(src.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    src.write_text(yaml.safe_dump(data, sort_keys=False))
    return src


# --------------------------------------------------------------------------- the shipped studies
def test_shipped_tiny_study_loads(tmp_path: Path, tiny_profile: Path) -> None:
    shipped = STUDIES / "priors" / "tiny-mxfp4.json"
    path = STUDIES / "tiny-mxfp4-w4a4.yaml" if shipped.is_file() else tiny_study_dir(tmp_path, tiny_profile)
    spec = load_study(path)
    assert spec.name == "tiny-mxfp4-w4a4"
    assert isinstance(spec.objective, BuiltinObjective)
    cfg = spec.objective.config
    assert (cfg.model.path, cfg.task.name, cfg.quant.format, cfg.quant.mode, cfg.quant.ste) == (
        "tiny", "tiny-arith", "mxfp4", "w4a4", True)
    assert spec.metric == "val-core/tiny-arith/acc/mean@1"
    assert spec.rungs() == [15]  # the late validation steps only (StudySpec.rungs)
    assert spec.srdd_profile.num_layers == TINY_LAYERS
    assert [s.name for s in spec.seed_config_list()] == list(DEFAULT_SEED_NAMES)
    # the sizing the comment promises: 16 trials, two at a time, one thread each
    assert (spec.budget.trials, spec.resources.max_concurrent, cfg.threads) == (16, 2, 1)


def test_shipped_qwen_study_matches_the_seeds() -> None:
    spec = load_study(STUDIES / "qwen2.5-1.5b-mxfp4-w4a4.yaml")
    cfg = spec.objective.config
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.algo.lr, cfg.algo.name) == (32, 16, 1e-5, "dapo")
    # objective = step-20 accuracy; the run and its noise schedule span those 20 steps
    assert (cfg.steps.total, max(cfg.steps.val_at)) == (20, 20)
    assert cfg.rollout.backend == "vllm" and spec.resources.gpus_per_trial >= 1
    assert spec.metric == "val-core/openai/gsm8k/acc/mean@1"
    assert spec.srdd_profile.num_layers == 28
    assert spec.profile_path == STUDIES / "priors" / "qwen2.5-1.5b-mxfp4.json"


def test_shipped_verl_command_study_maps_the_fork_keys() -> None:
    spec = load_study(STUDIES / "verl-command-mxfp4-w4a4.yaml")
    cmd = spec.objective.command
    assert cmd.noise_keys == "verl-fork-patched" and cmd.verify_mode == "strict"
    assert cmd.command[-1].endswith("studies/verl/e13-trial.sh") and cmd.param_map["seed"][0] == "data.seed"
    assert spec.rungs() == [15]


def test_relative_profile_resolves_against_the_study_folder(tmp_path: Path, tiny_profile: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    study = tiny_study_dir(tmp_path / "a", tiny_profile)
    monkeypatch.chdir(tmp_path)  # the CWD has no priors/ folder
    spec = load_study(Path("a") / study.name)
    assert spec.profile_path.resolve() == (tmp_path / "a" / "priors" / "tiny-mxfp4.json").resolve()


# --------------------------------------------------------------------------- one-line errors
ERROR_CASES = [
    # (id, study changes or raw text, --set overrides, expected substrings)
    ("sigma_start_low_negative", {"space": {"sigma_start": {"low": -1, "high": 0.1}}}, [],
     ["space.sigma_start.low: must be > 0 (got -1)"]),
    ("typo_key", {"space": {"sigam_start": {"low": 0.01, "high": 0.1}}}, [],
     ["unknown key 'sigam_start' at space"]),
    ("unknown_top_key", {"budgett": {"trials": 3}}, [], ["unknown key 'budgett' at top level"]),
    ("sigma_low_ge_high", {"space": {"sigma_start": {"low": 0.1, "high": 0.01}}}, [],
     ["space.sigma_start: low must be < high"]),
    ("ratio_above_one", {"space": {"sigma_ratio": {"low": 0.01, "high": 2}}}, [],
     ["space.sigma_ratio.high: must be <= 1 (got 2)"]),
    ("num_stages_below_3", {"space": {"num_stages": {"low": 2, "high": 8}}}, [],
     ["space.num_stages.low: must be >= 3 (got 2)"]),
    ("alpha_negative", {"space": {"alpha": {"low": -0.5, "high": 1}}}, [], ["space.alpha.low: must be >= 0"]),
    ("zone_not_in_profile", {"space": {"zones": ["all", "middle"]}}, [],
     ["space.zones: zone 'middle' is not in the profile"]),
    ("negative_trials", {"budget": {"trials": -3}}, [], ["budget.trials: must be > 0 (got -3)"]),
    ("empty_budget", {"budget": {}}, [], ["budget: give trials and/or compute_hours"]),
    ("zero_hours", {"budget": {"compute_hours": 0}}, [], ["budget.compute_hours: must be > 0 (got 0)"]),
    ("unknown_objective_kind", {"objective": {"kind": "shell", "config": {}}}, [],
     ["objective.kind: unknown kind 'shell'"]),
    ("unknown_quant_format", None, ["objective.config.quant.format=mxfp5"],
     ["objective.config.quant.format: must be", "(got 'mxfp5')", "(set by --set)"]),
    ("wrong_type", None, ["budget.trials=many"], ["budget.trials:", "(got 'many')"]),
    ("unknown_site", {"space": {"site": ["rmsnorm", "attention"]}}, [], ["space.site.1: must be"]),
    # settings that would silently change what is measured
    ("rung_not_a_validation_step", None, ["pruning.rungs=[3, 10]"],
     ["pruning.rungs: [3] are not validation steps before the final step"]),
    ("rung_at_the_final_step", None, ["pruning.rungs=[20]"], ["pruning.rungs: [20] are not validation steps"]),
    ("linear_site_on_vllm", None, ["objective.config.rollout.backend=vllm", "space.site=[rmsnorm, linear]"],
     ["space.site: 'linear' cannot run on rollout.backend=vllm"]),
    ("password_in_file", {"storage": "postgresql://u:hunter2@db/x"}, [], ["storage:", "password", "***"]),
    ("unknown_seed_config", {"seed_configs": ["E13i-baseline", "E99"]}, [],
     ["seed_configs: unknown seed config 'E99'"]),
    ("seed_config_field", {"seed_configs": ["E13i-low", {"name": "a", "sigma_start": 0.01, "sigma_end": 0.001,
                                                          "num_stages": 2}]}, [],
     ["seed_configs.1.num_stages: must be >= 3 (got 2)"]),
    ("seed_config_zone", {"seed_configs": [{"name": "a", "sigma_start": 0.01, "sigma_ratio": 0.1, "num_stages": 5,
                                            "zones": "middle"}]}, [],
     ["seed_configs.0.zones: zone 'middle' is not in the profile"]),
    ("seed_config_end_above_start", {"seed_configs": [{"name": "a", "sigma_start": 0.01, "sigma_end": 0.1,
                                                       "num_stages": 5}]}, [],
     ["seed_configs.0: sigma_end (0.1) must be <= sigma_start (0.01)"]),
    ("zones_not_auto", {"space": {"zones": "autox"}}, [], ["space.zones: must be 'auto' or a list"]),
    ("command_typo", {"objective": {"kind": "command", "command": {"commandd": "train.sh"}}}, [],
     ["unknown key 'commandd' at objective.command"]),
    ("command_bad_hydra_key", {"objective": {"kind": "command", "command": {"command": "x",
                                                                          "param_map": {"sigma_start": "bad key!"}}}},
     [], ["objective.command.param_map:", "'bad key!'"]),
    ("set_through_scalar", None, ["name.sub=1"], ["unknown path: name is a str"]),
    ("set_without_equals", None, ["budget.trials"], ["expected key=value"]),
    ("set_unknown_key", None, ["space.bogus=1"], ["unknown key 'bogus' at space", "(set by --set)"]),
    ("infinite_prior_weight", None, ["sampler.prior_weight=.inf"],
     ["sampler.prior_weight: must be a finite number (got inf)", "(set by --set)"]),
    ("nan_seed_sigma", {"seed_configs": [{"name": "a", "sigma_start": float("nan"), "sigma_ratio": 0.1,
                                          "num_stages": 5}]}, [],
     ["seed_configs.0.sigma_start: must be a finite number"]),
    ("infinite_cpus", None, ["resources.cpus_per_trial=.inf"], ["resources.cpus_per_trial: must be a finite number"]),
    ("trainer_config_bad", {"objective": {"kind": "builtin", "config": {"steps": {"totl": 3}}}}, [],
     ["unknown key 'totl' at objective.config.steps"]),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_each_bad_study_is_one_line_naming_the_key(case: tuple, tmp_path: Path, tiny_profile: Path) -> None:
    _, changes, overrides, expected = case
    path = write_study(tmp_path, tiny_profile, **(changes or {}))
    with pytest.raises(UserError) as info:
        load_study(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ": ") or msg.startswith("--set ")
    for part in expected:
        assert part in msg, msg
    assert "hunter2" not in msg


def test_file_problems_are_one_line(tmp_path: Path, tiny_profile: Path) -> None:
    with pytest.raises(UserError, match=r"no such study file"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace: {sigma_start: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_study(bad)
    path = write_study(tmp_path, tiny_profile, profile="priors/missing.json")
    with pytest.raises(UserError, match=r"profile: no such file priors/missing.json"):
        load_study(path)
    (tmp_path / "priors" / "broken.json").write_text("{not json")
    path = write_study(tmp_path, tiny_profile, profile="priors/broken.json")
    with pytest.raises(UserError, match=r"profile: .*invalid JSON"):
        load_study(path)


def test_profile_for_another_layer_count_is_refused(tmp_path: Path, tiny_profile: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"num_hidden_layers": 12}')
    path = write_study(tmp_path, tiny_profile, objective={"kind": "builtin", "config": {"model": {"path": str(model_dir)}}})
    with pytest.raises(UserError, match=r"profile: .* has 8 layers but the model has 12"):
        load_study(path)


def test_profile_for_another_format_is_refused(tmp_path: Path, tiny_profile: Path) -> None:
    path = write_study(tmp_path, tiny_profile)
    with pytest.raises(UserError, match=r"measured for mxfp4, but objective.config.quant.format is nvfp4"):
        load_study(path, ["objective.config.quant.format=nvfp4"])


# --------------------------------------------------------------------------- storage, overrides
def test_storage_precedence_cli_over_env_over_file(tmp_path: Path, tiny_profile: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_study(write_study(tmp_path, tiny_profile, storage="sqlite:///from-file.db"))
    monkeypatch.delenv("NOISESWEEP_STORAGE", raising=False)
    assert resolve_storage(spec) == "sqlite:///from-file.db"
    monkeypatch.setenv("NOISESWEEP_STORAGE", "postgresql://u:pw@h/db")
    assert resolve_storage(spec) == "postgresql://u:pw@h/db"
    assert resolve_storage(spec, "sqlite:///cli.db") == "sqlite:///cli.db"
    assert "pw" not in str(spec.to_record()["storage"])


def test_default_storage_when_the_file_has_none(tmp_path: Path, tiny_profile: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOISESWEEP_STORAGE", raising=False)
    spec = load_study(write_study(tmp_path, tiny_profile, storage=None))
    assert resolve_storage(spec) == "sqlite:///noisesweep.db"


def test_set_overrides_are_yaml_typed_and_reach_the_spec(tmp_path: Path, tiny_profile: Path) -> None:
    spec = load_study(write_study(tmp_path, tiny_profile), [
        "budget.trials=3", "space.site=[rmsnorm, linear]", "objective.config.algo.lr=1e-5",
        "space.sigma_start.high=0.5", "seed_configs=[E13i-baseline]", "pruning.enabled=false",
    ])
    assert spec.budget.trials == 3
    assert spec.space.site == ["rmsnorm", "linear"]
    assert spec.objective.config.algo.lr == 1e-5
    assert spec.space.sigma_start.high == 0.5
    assert [s.name for s in spec.seed_config_list()] == ["E13i-baseline"]
    assert spec.pruning.enabled is False


def test_apply_overrides_creates_sections_indexes_lists_and_copies() -> None:
    data = {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}
    out = apply_overrides(data, ["a.c.d=2.5e-3", "l.1.x=7", "new=[1, 2]"])
    assert out == {"a": {"b": 1, "c": {"d": 0.0025}}, "l": [{"x": 1}, {"x": 7}], "new": [1, 2]}
    assert data == {"a": {"b": 1}, "l": [{"x": 1}, {"x": 2}]}
    with pytest.raises(UserError, match="index out of range"):
        apply_overrides(data, ["l.5.x=1"])
    assert yaml_load("lr: 1e-5")["lr"] == 1e-5  # plain PyYAML would give the string '1e-5'


# --------------------------------------------------------------------------- trainer-config documents
def test_trainer_config_document_round_trips_with_overrides() -> None:
    cfg = TrialConfig.model_validate({"noise": {"enabled": True, "sigma_start": 0.03, "sigma_end": 0.0003}})
    doc = trainer_config_document(cfg, source={"study": "s", "trial": 4})
    assert doc[TRAINER_CONFIG_MARKER] == 1
    text = yaml.safe_dump(doc)
    back = parse_trainer_config(yaml_load(text), source="t.yaml", overrides=["steps.total=4", "steps.val_at=[0,4]"])
    assert back.noise.sigma_start == 0.03 and back.steps.total == 4
    assert back.model_dump(exclude={"steps"}) == cfg.model_dump(exclude={"steps"})
    with pytest.raises(UserError, match=r"t.yaml: unknown key 'bogus' at noise"):
        parse_trainer_config(yaml_load(text), source="t.yaml", overrides=["noise.bogus=1"])


def test_load_study_refuses_a_trainer_config(tmp_path: Path) -> None:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(trainer_config_document(TrialConfig())))
    with pytest.raises(UserError, match="trainer config"):
        load_study(p)


def test_preflight_names_missing_model_and_data_paths(tmp_path: Path, tiny_profile: Path) -> None:
    spec = load_study(STUDIES / "qwen2.5-1.5b-mxfp4-w4a4.yaml")  # loads here: paths are placeholders
    with pytest.raises(UserError, match=r"objective.config.model.path: no such model folder /models/Qwen2.5"):
        preflight(spec)
    model = tmp_path / "m"
    model.mkdir()
    spec = load_study(STUDIES / "qwen2.5-1.5b-mxfp4-w4a4.yaml", [f"objective.config.model.path={model}"])
    with pytest.raises(UserError, match=r"objective.config.task.train_path: no such file /data/gsm8k/train.parquet"):
        preflight(spec)
    spec = load_study(STUDIES / "verl-command-mxfp4-w4a4.yaml")
    with pytest.raises(UserError, match=r"objective.command.cwd: no such folder"):
        preflight(spec)
    workdir = tmp_path / "verl"
    workdir.mkdir()
    spec = load_study(STUDIES / "verl-command-mxfp4-w4a4.yaml", [f"objective.command.cwd={workdir}"])
    script = spec.objective.command.command
    script = script.split()[-1] if isinstance(script, str) else next(a for a in script if a.endswith(".sh"))
    with pytest.raises(UserError, match=rf"objective.command.command: no such script {script}"):
        preflight(spec)
    (workdir / script).parent.mkdir(parents=True, exist_ok=True)
    (workdir / script).write_text("#!/bin/bash\n")
    assert preflight(spec) is None
    tiny = load_study(write_study(tmp_path, tiny_profile))
    assert preflight(tiny) is None  # `tiny` is the shipped checkpoint, no path to check


def test_prior_override_outside_the_choices_fails_at_load(tmp_path: Path, tiny_profile: Path) -> None:
    path = write_study(tmp_path, tiny_profile)
    with pytest.raises(UserError, match=r"sampler.prior.zones: 'middle' is not among"):
        load_study(path, ["sampler.prior={zones: middle}"])
    spec = load_study(path, ["sampler.prior={sigma_start: 0.02, alpha: 0.5}"])
    from sweep.space import SearchSpace

    center = SearchSpace.from_spec(spec).prior_params()
    assert (center["sigma_start"], center["alpha"]) == (0.02, 0.5)


def test_budget_either_or_both(tmp_path: Path, tiny_profile: Path) -> None:
    hours_only = load_study(write_study(tmp_path, tiny_profile, budget={"compute_hours": 2.5})).budget
    assert (hours_only.trials, hours_only.compute_hours) == (None, 2.5)
    assert load_study(write_study(tmp_path, tiny_profile, budget=None)).budget.trials == 20


@pytest.mark.parametrize(
    "url, secret",
    [
        ("postgresql://u:hunter2@db/x", "hunter2"),
        ("postgresql://u@db/x?password=hunter2", "hunter2"),
        ("postgresql+psycopg://db/x?user=u&PASSWORD=hunter2&sslmode=require", "hunter2"),
        ("weird://u:hunter2@db:port/x?pwd=hunter2", "hunter2"),  # not parseable by SQLAlchemy
    ],
)
def test_mask_url_hides_passwords_in_userinfo_and_query(url: str, secret: str) -> None:
    """libpq also takes `?password=`: a URL written that way must not leak either."""
    from sweep.secrets import mask_url

    masked = mask_url(url)
    assert secret not in masked
    assert "***" in masked
    assert mask_url("sqlite:///plain.db") == "sqlite:///plain.db"


def test_a_query_string_password_in_the_study_file_is_refused(tmp_path: Path, tiny_profile: Path) -> None:
    with pytest.raises(UserError, match=r"storage:.*password") as err:
        load_study(write_study(tmp_path, tiny_profile, storage="postgresql://u@db/x?password=hunter2"))
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(("val_at", "configured", "expected"), [
    ("[0,5,10,15,20]", None, [15]),            # the shipped tiny schedule: 15 >= 3/4 of 20
    ("[0,2,4,6,8,10,12,14,16,18,20]", None, [16, 18]),
    ("[0,10,20]", None, [10]),                 # nothing that late: the last step before the final
    ("[0,20]", None, None),                    # only the final step: nothing to prune on
    ("[0,5,10,15,20]", "[5,10]", [5, 10]),     # configured rungs are kept as given
])
def test_default_rungs_are_the_late_validation_steps(tmp_path: Path, tiny_profile: Path, val_at: str,
                                                    configured: str | None, expected: list[int] | None) -> None:
    overrides = [f"objective.config.steps.val_at={val_at}"]
    if configured:
        overrides.append(f"pruning.rungs={configured}")
    spec = load_study(tiny_study_dir(tmp_path, tiny_profile), overrides)
    assert spec.rungs() == expected
