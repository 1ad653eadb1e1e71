"""`noisesweep report`: every PNG written, and H1-H5 verdicts that follow from planted data."""

from __future__ import annotations

import re

import pytest
from optuna.trial import TrialState
from test_export import PLANTED, STUDY, conf_entry, make_study

from sweep.cli import main
from sweep.record import open_record
from sweep.hypotheses import INCONCLUSIVE, Hypothesis, Side, analyze, decide
from sweep.report import PLOTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _verdicts(md: str) -> dict[str, str]:
    return dict(re.findall(r"^- \*\*(H\d): ([^*]+)\*\*", md, flags=re.M))


def _assert_pngs(out):
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name


def test_report_writes_all_plots_and_answers_the_hypotheses(tmp_path, capsys):
    confs = {"2": conf_entry([0.54, 0.55, 0.56], PLANTED[2][1]), "1": conf_entry([0.57, 0.58, 0.59], PLANTED[1][1])}
    url, _, _ = make_study(tmp_path, confirmations=confs)
    out = tmp_path / "report"
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    _assert_pngs(out)
    md = (out / "summary.md").read_text()
    for name in PLOTS:
        assert f"]({name})" in md
    assert "| COMPLETE | 6 |" in md and "| PRUNED | 1 |" in md and "| FAIL | 1 |" in md
    assert "Budget ledger: 7 counted trials" in md
    assert "Trial 1 (E13i-targeted), chosen by confirmed" in md
    v = _verdicts(md)
    # targeted (confirmed 0.58, noise sd 0.01) vs global (best 0.45): far outside the noise
    assert v["H1"] == "targeted better"
    # worst zone only: E13i-high (0.08, confirmed 0.55) vs E13i-low (0.03, 0.50)
    assert v["H2"] == "more noise better"
    # variable best 0.58 (trial 7) vs uniform confirmed 0.58: a tie
    assert v["H3"] == INCONCLUSIVE and v["H4"] == INCONCLUSIVE
    # no linear-site trial at all
    assert v["H5"] == INCONCLUSIVE and "no COMPLETE trial on the linear side" in md
    assert "trial 3 (E13i-low): 0.5000, unconfirmed" in md
    assert url not in capsys.readouterr().out  # nothing on stdout


def test_summary_states_the_verdict_rule(tmp_path):
    from sweep.hypotheses import RULE_TEXT

    url, _, _ = make_study(tmp_path)
    assert main(["report", STUDY, "--storage", url, "-o", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "summary.md").read_text()
    assert f"Verdict rule: {RULE_TEXT}" in md and "intervals do not overlap" in md


def test_without_confirmations_no_verdict_is_claimed(tmp_path):
    url, _, _ = make_study(tmp_path)
    out = tmp_path / "r"
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    v = _verdicts((out / "summary.md").read_text())
    assert set(v.values()) == {INCONCLUSIVE} and len(v) == 5
    assert "no run-to-run noise estimate" in (out / "summary.md").read_text()


def test_verdicts_flip_with_the_data_and_h5_sees_linear_trials(tmp_path):
    site = dict(site="linear")
    planted = [
        ("E13i-baseline", {**PLANTED[0][1], "site": "rmsnorm"}, TrialState.COMPLETE, 0.70, [0.7]),
        ("E13i-targeted", {**PLANTED[1][1], "site": "rmsnorm"}, TrialState.COMPLETE, 0.50, [0.5]),
        (None, {**PLANTED[1][1], **site}, TrialState.COMPLETE, 0.30, [0.3]),
    ]
    confs = {"0": conf_entry([0.69, 0.70, 0.71], planted[0][1])}
    url, _, _ = make_study(tmp_path, planted=planted, confirmations=confs, sites=["rmsnorm", "linear"])
    hs = {h.key: h for h in _analyze(url)}
    assert hs["H1"].verdict_text == "global better"
    assert hs["H5"].verdict_text == "rmsnorm better" and hs["H5"].b.n == 1


def _analyze(url):
    from sweep.report import analyze_record

    return analyze_record(open_record(STUDY, url))


def test_overlapping_confidence_intervals_are_inconclusive():
    class T:  # the fields analyze/decide read
        def __init__(self, n, v):
            self.number, self.value, self.user_attrs = n, v, {}

    a, b = Side("a", [T(0, 0.6)]), Side("b", [T(1, 0.5)])
    confs = {"0": {"mean": 0.60, "ci_low": 0.50, "ci_high": 0.70, "values": [0.5, 0.6, 0.7]},
             "1": {"mean": 0.55, "ci_low": 0.52, "ci_high": 0.58, "values": [0.52, 0.55, 0.58]}}
    for side in (a, b):
        from sweep.hypotheses import _fill

        _fill(side, confs, True)
    h = Hypothesis("Hx", "?", a, b)
    decide(h, confs, True)
    assert h.verdict == INCONCLUSIVE and "overlap" in h.reason
    confs["0"].update(ci_low=0.59, ci_high=0.61)
    decide(h, confs, True)
    assert h.verdict_text == "a better"


def test_too_few_trials_gives_notes_not_a_crash(tmp_path):
    url, _, _ = make_study(tmp_path, planted=[PLANTED[1], PLANTED[5]])
    out = tmp_path / "r"
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    md = (out / "summary.md").read_text()
    assert "Too few COMPLETE trials with varying params for importances (1 complete; need >= 3)" in md
    assert "Parallel coordinates need >= 2 COMPLETE trials" in md


def test_report_of_an_unknown_study_is_one_line(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    assert main(["report", "missing", "--storage", url, "-o", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("noisesweep: error: no study named 'missing'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", [0.05])
def test_h2_reference_sigma_sits_on_neither_side(value):
    class T:
        def __init__(self, n, s):
            self.number, self.value = n, 0.5
            self.params = dict(sigma_start=s, sigma_ratio=0.01, num_stages=10, zones="high", alpha=0.0)
            self.user_attrs = {"multipliers": [0, 0, 0, 1, 1, 1, 0, 0]}

    hs = analyze([T(0, value), T(1, 0.08)], {}, worst_zone="high", worst_layers=[3, 4, 5])
    assert hs[1].a.n == 1 and hs[1].b.n == 0 and hs[1].verdict == INCONCLUSIVE


def test_a_study_without_complete_trials_still_reports(tmp_path):
    url, _, _ = make_study(tmp_path, planted=[PLANTED[5], PLANTED[6]])
    out = tmp_path / "r"
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    assert all((out / n).read_bytes()[:8] == PNG_MAGIC for n in PLOTS)
    md = (out / "summary.md").read_text()
    assert "No COMPLETE trial yet." in md
    assert "- **H1: inconclusive**: no COMPLETE trial on the global and targeted sides." in md


def test_report_into_a_file_path_is_one_line(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    target = tmp_path / "not-a-folder"
    target.write_text("keep me")
    assert main(["report", STUDY, "--storage", url, "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisesweep: error: -o:") and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


def test_report_files_are_replaced_whole_and_leave_no_temp_files(tmp_path):
    """Running the report twice rewrites every file in place (atomic rename), no .tmp left over."""
    url, _, _ = make_study(tmp_path)
    out = tmp_path / "r"
    (out).mkdir()
    (out / "summary.md").write_text("stale")
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    assert (out / "summary.md").read_text().startswith("# noisesweep report:")
    assert sorted(p.name for p in out.iterdir()) == sorted([*PLOTS, "summary.md"])


def test_foreign_confirmation_entries_do_not_break_the_report(tmp_path):
    """`confirmations` is a plain user_attr: an entry someone else wrote is skipped, not a crash."""
    confs = {"2": conf_entry([0.54, 0.55, 0.56], PLANTED[2][1]), "notes": {"mean": 0.9}, "5": [0.1]}
    url, _, _ = make_study(tmp_path, confirmations=confs)
    out = tmp_path / "r"
    assert main(["report", STUDY, "--storage", url, "-o", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "| 2 | " in md and "0.5500" in md


def test_replicates_alone_give_verdicts_with_intervals():
    """No confirmations, but racing's replicates: the noise is measured, so each hypothesis with
    both sides gets a verdict with an interval or an upper bound on the difference."""

    class T:
        def __init__(self, n, zones, v):
            self.number, self.value = n, v
            self.params = dict(sigma_start=0.05, sigma_ratio=0.01, num_stages=10, zones=zones, alpha=0.0)
            self.user_attrs = {}

    close = [T(0, "all", 0.70), T(1, "all", 0.72), T(2, "all", 0.71), T(3, "high", 0.69), T(4, "high", 0.71)]
    h1 = analyze(close, {})[0]
    assert h1.a.runs_behind_best() == 3 and h1.b.runs_behind_best() == 2
    assert h1.verdict == INCONCLUSIVE and h1.reason.startswith("no difference larger than ")
    assert "points at 95 %" in h1.reason and "[95% CI" in h1.reason
    apart = [T(0, "all", 0.80), T(1, "all", 0.81), T(2, "all", 0.79), T(3, "high", 0.60), T(4, "high", 0.61)]
    h1 = analyze(apart, {})[0]
    assert h1.verdict_text == "global better" and "+19.5 points [95% CI" in h1.reason
