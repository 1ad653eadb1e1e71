"""`noisesweep confirm`: top-K configs on fresh seeds, mean and Student-t CI, stored without touching trials."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from test_export import PLANTED, STUDY, make_study

from objective.result import TrialResult
from sweep.cli import main
from sweep.confirm import confirm_study, fresh_seeds, top_trials
from sweep.stats import mean_ci
from sweep.record import open_record


def test_mean_ci_is_the_student_t_interval():
    values = [0.50, 0.56, 0.53]
    m, lo, hi = mean_ci(values)
    sd = statistics.stdev(values)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert m == pytest.approx(0.53) and lo == pytest.approx(0.53 - half) and hi == pytest.approx(0.53 + half)
    assert mean_ci([0.7]) == (0.7, None, None)


def test_fresh_seeds_skip_every_used_seed():
    assert fresh_seeds(3, {1000, 1002}) == [1001, 1003, 1004]


class FakeRunner:
    """A deterministic objective: value depends on the config and the seed; records the calls."""

    def __init__(self, fail_seed: int | None = None) -> None:
        self.calls: list[tuple[dict, int]] = []
        self.fail_seed = fail_seed

    def __call__(self, params: dict, seed: int) -> TrialResult:
        self.calls.append((params, seed))
        if seed == self.fail_seed:
            return TrialResult(status="failed", reason="NaN in loss")
        base = 0.4 if params["zones"] != "high" else 0.55 if params["sigma_start"] == 0.05 else 0.5
        return TrialResult(status="complete", value=base + 0.01 * (seed % 3), step=20)


def _snapshot(url: str) -> list[tuple]:
    study = optuna.load_study(study_name=STUDY, storage=url)
    return [(t.number, t.state, t.value, t.params, t.user_attrs, t.intermediate_values) for t in study.trials]


def test_confirm_runs_top_k_on_fresh_seeds_and_stores_without_touching_trials(tmp_path):
    url, _, _ = make_study(tmp_path)
    before = _snapshot(url)
    record = open_record(STUDY, url)
    record.study.set_user_attr("confirmations", {"99": {"values": [0.1], "seeds": [1000], "mean": 0.1}})
    runner = FakeRunner()
    confs = confirm_study(record, top=2, seeds=3, runner=runner)
    assert [c.trial for c in confs] == [2, 1]  # the two best COMPLETE trials by value
    sweep_seeds = set(range(len(PLANTED))) | {0}
    used = [s for _, s in runner.calls]
    assert len(used) == 6 and len(set(used)) == 6 and not set(used) & (sweep_seeds | {1000})
    assert runner.calls[0][0] == PLANTED[2][1]
    stored = optuna.load_study(study_name=STUDY, storage=url).user_attrs["confirmations"]
    assert set(stored) == {"99", "2", "1"}  # merged, the other entry kept
    for c in confs:
        entry = stored[str(c.trial)]
        m, lo, hi = mean_ci(entry["values"])
        assert entry["mean"] == pytest.approx(m) and entry["ci_low"] == pytest.approx(lo) and entry["ci_high"] == pytest.approx(hi)
        assert entry["seeds"] == [s for p, s in runner.calls if p == c.params]
        assert entry["params"] == c.params and entry["sweep_value"] == c.sweep_value
    assert _snapshot(url) == before


def test_confirm_again_accumulates_and_failed_runs_are_recorded(tmp_path):
    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    confirm_study(record, top=1, seeds=2, runner=FakeRunner())
    record = open_record(STUDY, url)
    runner = FakeRunner(fail_seed=1002)
    (conf,) = confirm_study(record, top=1, seeds=2, runner=runner)
    assert [s for _, s in runner.calls] == [1002, 1003]
    assert conf.seeds == [1000, 1001, 1003] and len(conf.values) == 3
    assert conf.failures == [{"seed": 1002, "status": "failed", "reason": "NaN in loss"}]
    assert conf.mean == pytest.approx(statistics.fmean(conf.values))
    runner = FakeRunner()  # a third round: the failed seed is not fresh, it is skipped
    confirm_study(open_record(STUDY, url), top=1, seeds=1, runner=runner)
    assert [s for _, s in runner.calls] == [1004]


def test_single_seed_has_no_interval(tmp_path):
    url, _, _ = make_study(tmp_path)
    (conf,) = confirm_study(open_record(STUDY, url), top=1, seeds=1, runner=FakeRunner())
    assert conf.ci_low is None and conf.ci_high is None and conf.mean == conf.values[0]


def test_top_trials_deduplicates_requeued_configs(tmp_path):
    planted = [PLANTED[1], PLANTED[1], PLANTED[3]]  # the same config twice (a re-queued trial)
    url, _, _ = make_study(tmp_path, planted=planted)
    assert [t.number for t in top_trials(open_record(STUDY, url), 3)] == [0, 2]


def test_confirm_command_with_the_real_tiny_trainer(tmp_path, capsys):
    """End to end through the CLI: the study's own objective, rebuilt from the stored spec."""
    pytest.importorskip("objective.trainer")
    from objective.tiny import TINY_CHECKPOINT_DIR

    if not (TINY_CHECKPOINT_DIR / "config.json").is_file():
        pytest.skip("the tiny checkpoint is not built yet")
    planted = [(None, dict(sigma_start=0.05, sigma_ratio=0.01, num_stages=3, zones="high", alpha=0.0),
                PLANTED[1][2], 0.3, [0.3])]
    url, _, _ = make_study(tmp_path, planted=planted)
    record = open_record(STUDY, url)
    cfg = record.space.to_trial_config(planted[0][1], seed=0)
    assert cfg.noise.layer_multipliers == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # keep the real run tiny: 1 step, a small validation set
    spec_rec = record.study.user_attrs["noisesweep_spec"]
    spec_rec["objective"]["config"]["steps"] = {"total": 1, "val_at": [1]}
    spec_rec["objective"]["config"]["task"]["num_val"] = 8
    spec_rec["objective"]["config"]["algo"]["prompts_per_step"] = 2
    spec_rec["objective"]["config"]["algo"]["samples_per_prompt"] = 2
    record.study.set_user_attr("noisesweep_spec", spec_rec)
    assert main(["confirm", STUDY, "--storage", url, "--top", "1", "--seeds", "1"]) == 0
    captured = capsys.readouterr()
    entry = optuna.load_study(study_name=STUDY, storage=url).user_attrs["confirmations"]["0"]
    assert len(entry["values"]) == 1 and 0.0 <= entry["values"][0] <= 1.0 and entry["seeds"] == [1000]
    assert entry["ci_low"] is None and "no interval (n=1)" in captured.out
    # progress lines, named by run: runs go through Ray Tune side by side
    assert "noisesweep confirm:   trial 0, seed 1000, step 1: val-core/tiny-arith/acc/mean@1=" in captured.err


def test_table_shows_the_single_run_beside_the_confirmed_mean(tmp_path):
    from sweep.confirm import format_table

    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    confs = confirm_study(record, top=2, seeds=3, runner=FakeRunner())
    table = format_table(record, confs)
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    c2 = confs[0]
    assert rows["2"].split()[1:5] == ["E13i-high", "0.6200", f"{c2.mean:.4f}", f"[{c2.ci_low:.4f},"]
    assert f"{c2.mean - 0.62:+.4f}" in rows["2"]
    # trial 1 (targeted, 0.60 single run) confirms higher than trial 2 (0.62): the luck is called out
    assert "best confirmed: trial 1" in table and "its single run was partly luck" in table


def test_an_interrupted_confirmation_keeps_the_runs_it_finished(tmp_path):
    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    runner = FakeRunner()

    def interrupted(params, seed):
        if len(runner.calls) == 2:
            raise KeyboardInterrupt
        return runner(params, seed)

    with pytest.raises(KeyboardInterrupt):
        confirm_study(record, top=1, seeds=3, runner=interrupted)
    entry = optuna.load_study(study_name=STUDY, storage=url).user_attrs["confirmations"]["2"]
    assert entry["seeds"] == [1000, 1001] and len(entry["values"]) == 2 and entry["ci_low"] is not None


def test_a_spec_problem_stops_instead_of_failing_every_run(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    calls = []

    def crashing(params, seed):
        calls.append(seed)
        if seed == 1000:
            raise RuntimeError("CUDA error: device-side assert")  # one bad run: recorded, the rest go on
        raise FileNotFoundError("command cwd '/nope' is not a directory")

    with pytest.raises(FileNotFoundError):
        confirm_study(record, top=1, seeds=3, runner=crashing)
    assert calls == [1000, 1001]
    entry = optuna.load_study(study_name=STUDY, storage=url).user_attrs["confirmations"]["2"]
    assert entry["values"] == [] and entry["mean"] is None
    assert entry["failures"] == [{"seed": 1000, "status": "failed", "reason": "RuntimeError: CUDA error: device-side assert"}]


def test_confirmation_seeds_never_come_from_the_tuning_pool(tmp_path):
    """Tune and test on disjoint seeds: the whole racing pool is reserved, even its unused seeds."""
    from sweep.confirm import used_seeds

    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    pool = set(range(record.spec.trial_seed, record.spec.trial_seed + record.spec.racing.max_seeds))
    assert pool <= used_seeds(record)
    record.spec.trial_seed = 998  # a pool that reaches into the confirmation range: 998..1002
    runner = FakeRunner()
    confirm_study(record, top=1, seeds=3, runner=runner)
    assert [s for _, s in runner.calls] == [1003, 1004, 1005]
