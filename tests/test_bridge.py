"""The OptunaSearch corrections, driven directly through the Searcher API (no Ray needed).

Each test names the OptunaSearch pitfall it guards (numbered as the corrections in sweep/bridge.py); each fails against plain OptunaSearch.
"""

from __future__ import annotations

import json
import math
import pickle

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweep import bookkeeping, bridge
from sweep.budget import Budget, ledger_of
from sweep.storage import SafeRDBStorage, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(trial: optuna.Trial) -> dict:
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("zones", ["all", "high"])
    return {"noise_plan": {"sigma_end": x / 100, "multipliers": [0.5, 1.5]}}  # what SearchSpace.define returns


@pytest.fixture
def storage(tmp_path):
    return open_storage(f"sqlite:///{tmp_path / 'study.db'}")


def make(storage, name="s1", **kw) -> bridge.NoisesweepSearch:
    return bridge.NoisesweepSearch(
        space, storage=storage, study_name=name, sampler=optuna.samplers.RandomSampler(seed=0), **kw
    )


def res(step: int, value: float, it: int) -> dict:
    return {bridge.STEP_KEY: step, bridge.OBJECTIVE_KEY: value, "training_iteration": it,
            bridge.ELAPSED_KEY: 1.0 * it, bridge.METRICS_KEY: json.dumps({"acc": value})}


def final(value: float, status: str = "complete", step: int = 20, reason: str = "") -> dict:
    return {bridge.FINAL_KEY: True, bridge.STATUS_KEY: status, bridge.OBJECTIVE_KEY: value,
            bridge.REASON_KEY: reason, bridge.STEP_KEY: step, "ns_wall_time_s": 7200.0,
            bridge.APPLIED_KEY: '{"multipliers": [0.25, 1.75]}'}


def only_trial(searcher) -> optuna.trial.FrozenTrial:
    trials = searcher.study.get_trials()
    assert len(trials) == 1
    return trials[0]


def test_storage_object_and_study_name_not_optuna(storage):
    # pitfall 1: a URL is rejected (OptunaSearch asserts); the study gets its own name.
    with pytest.raises(TypeError):
        make("sqlite:///x.db")  # type: ignore[arg-type]
    s = make(storage, name="my-study")
    s.suggest("t1")
    names = optuna.get_all_study_names(storage)
    assert names == ["my-study"]
    # plain OptunaSearch without a name writes to "optuna": the default we correct
    plain = OptunaSearch(space, metric="m", mode="max", storage=storage)
    plain.suggest("t1")
    assert "optuna" in optuna.get_all_study_names(storage)


def test_intermediate_values_at_training_step(storage):
    # pitfall 2: OptunaSearch reports at training_iteration (1, 2, 3)
    s = make(storage)
    s.suggest("t1")
    for it, step in enumerate((5, 10, 15, 20), start=1):
        s.on_trial_result("t1", res(step, 0.1 * it, it))
    s.on_trial_complete("t1", final(0.4))
    t = only_trial(s)
    assert sorted(t.intermediate_values) == [5, 10, 15, 20]
    assert t.intermediate_values[15] == pytest.approx(0.3)


def test_scheduler_stop_is_pruned_not_complete(storage):
    # pitfall 3: Tune hands the stopping result to on_trial_complete; plain OptunaSearch tells
    # COMPLETE with the step-5 value, which then beats every real step-20 result.
    s = make(storage, scheduler_name="ASHA")
    s.suggest("good")
    for it, step in enumerate((5, 10, 15, 20), start=1):
        s.on_trial_result("good", res(step, 0.5, it))
    s.on_trial_complete("good", final(0.5))
    s.suggest("cut")
    s.on_trial_complete("cut", res(5, 0.9, 1))  # stopped by ASHA at its first rung
    by_state = {t.state: t for t in s.study.get_trials()}
    pruned = by_state[TrialState.PRUNED]
    assert pruned.user_attrs["fail_reason"] == "pruned at step 5 by ASHA"
    assert pruned.user_attrs["last_step"] == 5
    assert pruned.intermediate_values == {5: 0.9}
    assert s.study.best_trial.number == by_state[TrialState.COMPLETE].number
    assert s.study.best_value == 0.5


@pytest.mark.parametrize(
    "outcome, reason",
    [
        (final(float("nan")), "final objective is nan (not a finite number)"),
        (final(float("nan"), status="failed", step=10, reason="TimeoutError: trial ran past 60 s"),
         "TimeoutError: trial ran past 60 s"),
    ],
)
def test_nan_or_failed_result_is_fail_with_reason(storage, outcome, reason):
    # pitfall 4: plain OptunaSearch's tell raises on NaN, is swallowed, and the trial stays RUNNING
    s = make(storage)
    s.suggest("t1")
    s.on_trial_result("t1", res(5, 0.3, 1))
    s.on_trial_complete("t1", outcome)
    t = only_trial(s)
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == reason


def test_crashed_trial_process_is_fail(storage):
    s = make(storage)
    s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)
    t = only_trial(s)
    assert t.state == TrialState.FAIL
    assert "crashed" in t.user_attrs["fail_reason"]


def test_plain_optunasearch_leaves_nan_trial_running(storage):
    # documents the pitfall the test above corrects (if optuna/ray change, revisit the bridge)
    plain = OptunaSearch(space, metric="m", mode="max", storage=storage, study_name="plain")
    plain.suggest("t1")
    plain.on_trial_complete("t1", {"m": float("nan")})
    assert plain._ot_study.get_trials()[0].state == TrialState.RUNNING


def test_user_attrs_written_before_tell(storage):
    # pitfall 5: after tell, set_user_attr raises; every attr must already be there
    s = make(storage, cpus_per_trial=2.0, trial_seed=lambda n: 1000 + n)
    s.suggest("t1")
    s.on_trial_result("t1", res(5, 0.2, 1))
    s.on_trial_complete("t1", final(0.4))
    t = only_trial(s)
    assert t.state == TrialState.COMPLETE
    attrs = t.user_attrs
    assert attrs["wall_time_s"] == 7200.0
    assert attrs["compute_hours"] == pytest.approx(4.0)  # 2 h x 2 CPUs
    assert attrs["multipliers"] == [0.25, 1.75]  # the applied ones, not the planned ones
    assert attrs["sigma_end"] == pytest.approx(t.params["x"] / 100)
    assert attrs["seed"] == 1000
    assert attrs["last_step"] == 20
    assert attrs["metrics"] == {"acc": 0.2}
    assert s.study.user_attrs["ledger"] == {"compute_hours": 4.0, "trials": 1}


def test_seed_configs_enqueued_once_however_often_built(storage):
    # pitfall 6: points_to_evaluate is enqueued again each time the searcher is built
    seeds = [("A", {"x": 0.1, "zones": "all"}), ("B", {"x": 0.2, "zones": "high"})]
    for _ in range(3):
        s = make(storage)
        bookkeeping.enqueue_seed_configs(s.study, seeds)
    study = s.study
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["seed_config"] for t in waiting) == ["A", "B"]
    assert study.user_attrs["enqueued_seed_configs"] == ["A", "B"]
    # run them, then add a new seed config: only the new one is enqueued
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", final(0.3))
    assert bookkeeping.enqueue_seed_configs(study, seeds + [("C", {"x": 0.3, "zones": "all"})]) == ["C"]
    names = [t.user_attrs.get("seed_config") for t in study.get_trials()]
    assert sorted(n for n in names if n) == ["A", "B", "C"]
    # and plain OptunaSearch duplicates on every build
    for _ in range(2):
        OptunaSearch(space, metric="m", mode="max", storage=storage, study_name="dup",
                     points_to_evaluate=[{"x": 0.1, "zones": "all"}])
    dup = optuna.load_study(study_name="dup", storage=storage)
    assert len(dup.get_trials(states=(TrialState.WAITING,))) == 2


def test_stale_trials_failed_and_requeued_once(tmp_path):
    # pitfall 7: resume; a live driver's RUNNING trial (fresh heartbeat) is left alone
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    storage = open_storage(url, heartbeat_interval=10, grace_period=30)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat at all
    dead_params = dict(dead.params)
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(live._trial_id)
    failed = bookkeeping.fail_stale_trials(study, grace_period_s=0)
    assert failed == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[live.number] == TrialState.RUNNING
    assert states[dead.number] == TrialState.FAIL
    frozen = study.get_trials()[dead.number]
    assert frozen.user_attrs["fail_reason"] == "driver died"
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [dead_params]  # enqueued
    # the live driver then dies too: its last heartbeat ages past the grace period
    import datetime

    from optuna.storages._rdb import models

    with storage.scoped_session() as session:
        session.query(models.TrialHeartbeatModel).update({"heartbeat": datetime.datetime(2000, 1, 1)})
        session.commit()
    assert bookkeeping.fail_stale_trials(study, grace_period_s=3600) == [live.number]
    assert bookkeeping.fail_stale_trials(study, grace_period_s=0) == []  # nothing left, no re-queue twice
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2
    assert study.user_attrs["requeued_trials"] == [dead.number, live.number]


def test_nothing_pickled_holds_the_password(tmp_path, monkeypatch, storage):
    # pitfall 8: OptunaSearch.save pickles __dict__, storage URL (and password) included
    secret_url = "postgresql://sweeper:Pl4nted-S3cret@db.example:5432/noise"
    storage.url = secret_url  # what RDBStorage would pickle for a real PostgreSQL URL
    s = make(storage)
    s.suggest("t1")
    ckpt = tmp_path / "searcher.pkl"
    s.save(str(ckpt))
    assert b"Pl4nted-S3cret" not in ckpt.read_bytes()
    assert b"Pl4nted-S3cret" not in pickle.dumps(s)
    assert b"Pl4nted-S3cret" not in pickle.dumps(storage)
    raw = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'raw.db'}")
    raw.url = secret_url
    plain = OptunaSearch(space, metric="m", mode="max", storage=raw, study_name="p")
    plain.save(str(tmp_path / "plain.pkl"))
    assert b"Pl4nted-S3cret" in (tmp_path / "plain.pkl").read_bytes()  # the pitfall itself


def test_safe_storage_unpickles_with_password_from_env(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    storage = open_storage(url)
    assert isinstance(storage, SafeRDBStorage)
    monkeypatch.setenv("NOISESWEEP_STORAGE", url)
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.url == url
    optuna.create_study(storage=clone, study_name="ok")
    assert optuna.get_all_study_names(storage) == ["ok"]


def test_nan_intermediate_not_reported_and_trial_fails(storage):
    # pitfall 10: a NaN at step 10 must not reach the pruner or become a value
    s = make(storage)
    s.suggest("t1")
    s.on_trial_result("t1", res(5, 0.4, 1))
    s.on_trial_result("t1", res(10, float("nan"), 2))
    s.on_trial_complete("t1", res(10, float("nan"), 2))  # stopped there
    t = only_trial(s)
    assert t.intermediate_values == {5: 0.4}
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"] == "NaN objective at step 10"
    assert not any(math.isnan(v) for v in t.intermediate_values.values())


def test_budget_stops_suggesting(storage):
    s = make(storage, budget=Budget(trials=2))
    for i in range(2):
        assert s.suggest(f"t{i}") not in (None, Searcher.FINISHED)
    assert s.suggest("t2") == Searcher.FINISHED  # 0 done + 2 running + 1 > 2
    assert "trial budget reached" in s.stop_reason


class _StubTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def test_asha_rungs_at_validation_steps_and_final_step_never_pruned():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    from sweep.runner import PruningPlan, build_scheduler

    plan = PruningPlan(rungs=[5, 10, 15], final_step=20, min_samples=2)
    sched, name = build_scheduler(plan, "maximize")
    assert name == "ASHA"
    assert [m for m, _ in sched._brackets[0]._rungs] == [15, 10, 5]  # Tune's own: 10, 5 (x rf)
    good, other, early, bad = (_StubTrial(n) for n in ("good", "other", "early", "bad"))
    for t in (good, other, early, bad):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, good, {"step": 5, bridge.OBJECTIVE_KEY: 0.9}) == TrialScheduler.CONTINUE
    # below the only result so far, but one other result is too few to cut on (min_samples=2)
    assert sched.on_trial_result(None, early, {"step": 5, bridge.OBJECTIVE_KEY: 0.2}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, other, {"step": 5, bridge.OBJECTIVE_KEY: 0.8}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, bad, {"step": 5, bridge.OBJECTIVE_KEY: 0.1}) == TrialScheduler.STOP
    # at the final step the work is done: stopping now would turn a finished trial into "pruned"
    assert sched.on_trial_result(None, good, {"step": 20, bridge.OBJECTIVE_KEY: 0.0}) == TrialScheduler.CONTINUE
    plain = ASHAScheduler(time_attr="step", metric=bridge.OBJECTIVE_KEY, mode="max", max_t=20, grace_period=5)
    plain.on_trial_add(None, good)
    assert plain.on_trial_result(None, good, {"step": 20, bridge.OBJECTIVE_KEY: 1.0}) == TrialScheduler.STOP
    assert isinstance(build_scheduler(PruningPlan(enabled=False), "maximize")[0], FIFOScheduler)
    assert build_scheduler(PruningPlan(kind="median"), "maximize")[1] == "median rule"
    with pytest.raises(ValueError, match="pruning.kind"):
        build_scheduler(PruningPlan(kind="hyperband"), "maximize")


def test_close_requeues_own_unfinished_trials_and_periodic_check_spares_them(storage):
    # Ctrl-C / a crash in Tune: the driver's own RUNNING trials must not wait for a grace period
    s = make(storage, heartbeat_interval=None)
    s.suggest("done")
    s.on_trial_complete("done", final(0.5))
    s.suggest("cut")
    params = dict(s._ot_trials["cut"].params)
    # another driver's trial that never beat: reclaimed by the periodic check; ours is spared
    other = s.study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert s.reclaim_stale(0) == [other.number]
    assert s.study.get_trials()[s._ot_trials["cut"].number].state == TrialState.RUNNING
    assert s.close() == [s._ot_trials["cut"].number]
    cut = s.study.get_trials()[s._ot_trials["cut"].number]
    assert cut.state == TrialState.FAIL and cut.user_attrs["fail_reason"] == "driver died"
    waiting = s.study.get_trials(states=(TrialState.WAITING,))
    assert params in [t.system_attrs["fixed_params"] for t in waiting]


def test_racing_launches_replicates_through_the_searcher_with_their_own_seeds(storage):
    """With a RacingPolicy the searcher itself queues replicates: the incumbent's second seed once
    three configs ran, each a new trial (never an overwrite), on the tuning pool's next seed."""
    from sweep.racing import RacingPolicy

    s = make(storage, trial_seed=7, racing_policy=RacingPolicy(max_seeds=3, first_seed=7, incumbent_every=3))
    values = {"t1": 0.5, "t2": 0.9, "t3": 0.4}
    for tid, v in values.items():
        config = s.suggest(tid)
        assert config[bridge.SEED_KEY] == 7  # every new config: the first tuning seed (common random numbers)
        s.on_trial_complete(tid, final(v))
    best = max(s.study.get_trials(), key=lambda t: t.value)
    config = s.suggest("t4")
    t4 = s.study.get_trials()[-1]
    assert config[bridge.SEED_KEY] == 8 and t4.user_attrs["seed"] == 8
    assert t4.params == best.params and t4.user_attrs["replicate_of"] == best.number
    assert t4.user_attrs["racing"] == "incumbent"
    s.on_trial_complete("t4", final(0.88))
    trials = s.study.get_trials()
    assert len(trials) == 4 and [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.value for t in trials if t.params == best.params) == [0.88, 0.9]


def test_protected_trials_are_never_cut_by_asha():
    """The racing incumbent's replicates are the evidence the answer rests on: a low rung value
    that would get any other trial cut must not cut them."""
    from ray.tune.schedulers import TrialScheduler

    from sweep.runner import PruningPlan, build_scheduler

    for kind in ("asha",):  # the median rule takes the same guard; it needs Tune's controller to run
        sched, _ = build_scheduler(PruningPlan(kind=kind, rungs=[5, 10], final_step=20, min_samples=2),
                                   "maximize", protect=lambda tid: tid == "inc")
        trials = [_StubTrial(n) for n in ("a", "b", "c", "inc", "bad")]
        for t in trials:
            sched.on_trial_add(None, t)
        for t, v in zip(trials[:3], (0.9, 0.8, 0.85)):
            for step in (5, 10):
                sched.on_trial_result(None, t, {"step": step, bridge.OBJECTIVE_KEY: v, "time_total_s": step})
        inc, bad = trials[3], trials[4]
        actions = {t.trial_id: [sched.on_trial_result(None, t, {"step": s, bridge.OBJECTIVE_KEY: 0.1, "time_total_s": s})
                                for s in (5, 10)] for t in (bad, inc)}
        assert TrialScheduler.STOP in actions["bad"], kind
        assert actions["inc"] == [TrialScheduler.CONTINUE] * 2, kind


def test_a_trial_on_a_lost_ray_node_fails_and_is_requeued_once(storage, monkeypatch):
    # a lost node: the trial's process died (Tune: error=True) and Ray calls its node dead,
    # possibly a moment later. The node list stands in for ray.nodes() on a two-node cluster
    # (tests/test_ray_cluster.py removes a real node).
    nodes = [{"NodeID": "node-a", "Alive": True}, {"NodeID": "node-b", "Alive": True}]
    monkeypatch.setattr(bridge, "_ray_nodes", lambda: [dict(n) for n in nodes])
    s = make(storage, budget=Budget(trials=2))
    s.suggest("on-a")
    s.suggest("on-b")
    s.on_trial_result("on-a", {**res(5, 0.3, 1), bridge.NODE_KEY: "node-a"})
    s.on_trial_result("on-b", {**res(5, 0.4, 1), bridge.NODE_KEY: "node-b"})
    s.on_trial_complete("on-b", None, error=True)  # node b's raylet is gone; Ray has not noticed yet
    assert {t.state for t in s.study.get_trials()} == {TrialState.RUNNING}  # no verdict yet
    assert s.suggest("next") is None  # budget full, but a verdict pending: wait, do not finish
    nodes[1]["Alive"] = False
    s._resolve_errors()
    lost = s.study.get_trials()[1]
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == "Ray node lost"
    assert lost.user_attrs["compute_hours"] > 0  # the ledger charges the compute it spent
    copies = [t for t in s.study.get_trials() if t.user_attrs.get("requeued_trials") == lost.number]
    assert len(copies) == 1 and copies[0].system_attrs["fixed_params"] == lost.params
    assert s.study.user_attrs["ledger"]["trials"] == 0  # not counted toward the trial budget
    # the trial on node a is untouched and finishes normally
    s.on_trial_complete("on-a", final(0.5))
    assert s.study.get_trials()[0].state == TrialState.COMPLETE
    # the re-queued copy is lost too: it fails, but is not re-queued a second time
    while s.study.get_trials(states=(TrialState.WAITING,)):
        tid = f"copy-{len(s.study.get_trials())}"
        s.suggest(tid)
        s.on_trial_result(tid, {**res(5, 0.2, 1), bridge.NODE_KEY: "node-b"})
        s.on_trial_complete(tid, None, error=True)
        s._resolve_errors()
    again = [t for t in s.study.get_trials() if t.user_attrs.get("requeued_trials") == lost.number]
    assert again[0].state == TrialState.FAIL and again[0].user_attrs["fail_reason"] == "Ray node lost"
    assert not [t for t in s.study.get_trials() if t.user_attrs.get("requeued_trials") == again[0].number]


def test_a_crash_on_a_live_node_is_the_trials_own_failure(storage, monkeypatch):
    nodes = [{"NodeID": "node-a", "Alive": True}, {"NodeID": "node-b", "Alive": True}]
    monkeypatch.setattr(bridge, "_ray_nodes", lambda: [dict(n) for n in nodes])
    s = make(storage)
    s.node_loss_wait_s = 0.0  # nobody calls node b dead: the wait is over at once
    s.suggest("t1")
    s.on_trial_result("t1", {**res(5, 0.3, 1), bridge.NODE_KEY: "node-b"})
    s.on_trial_complete("t1", None, error=True)
    s._resolve_errors()
    t = only_trial(s)
    assert t.state == TrialState.FAIL and "crashed" in t.user_attrs["fail_reason"]
    assert "requeued_trials" not in s.study.user_attrs


def test_racing_queues_nothing_behind_waiting_trials(storage):
    """A replicate queued behind a waiting hand config would not be the one asked next and could
    be left WAITING when the budget runs out: the race waits for an empty queue."""
    from sweep.racing import RacingPolicy

    s = make(storage, racing_policy=RacingPolicy(max_seeds=3, incumbent_every=1))
    s.suggest("t1")
    s.on_trial_complete("t1", final(0.7))  # an incumbent that wants a second seed (incumbent_every=1)
    s.study.enqueue_trial({"x": 0.123, "zones": "all"})
    s.suggest("t2")
    trials = s.study.get_trials()
    assert len(trials) == 2 and trials[1].params["x"] == 0.123 and "replicate_of" not in trials[1].user_attrs
    s.on_trial_complete("t2", final(0.1))
    s.suggest("t3")  # queue empty now: the replicate goes in and is asked at once
    assert s.study.get_trials()[-1].user_attrs.get("replicate_of") == 0
    assert not s.study.get_trials(states=(TrialState.WAITING,))


def test_two_drivers_racing_for_the_last_trial_run_only_one(storage, monkeypatch):
    """Two searchers on one study both pass the launch check before either has created its trial
    (the read-then-ask window that overshot a PostgreSQL two-driver sweep by one trial under load):
    the later-numbered trial is failed as surplus, never launched, and not counted."""
    a, b = make(storage, name="shared", budget=Budget(trials=1)), make(storage, name="shared", budget=Budget(trials=1))
    monkeypatch.setattr(Budget, "launch_refusal", lambda self, ledger, running=None: None)  # both read "fits"
    assert a.suggest("a1") is not None
    assert b.suggest("b1") == Searcher.FINISHED
    assert "not run" in b.stop_reason
    first, second = a.study.get_trials()
    assert first.state == TrialState.RUNNING and second.state == TrialState.FAIL
    assert second.user_attrs["fail_reason"] == bridge.BUDGET_SURPLUS
    a.on_trial_complete("a1", final(0.7))
    assert ledger_of(a.study.get_trials()).trials == 1
