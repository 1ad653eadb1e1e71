"""`noisesweep dashboard` seen through a real browser (Debian's chromium, headless, Playwright).

The study is recorded the way `noisesweep run` records one (params from the product's search
space, contract user_attrs, intermediate values at the real steps 5/10/15/20) with COMPLETE,
PRUNED and FAIL trials. The dashboard runs as a subprocess on 127.0.0.1; the test asserts the
trial count the page shows and that the intermediate-value chart plotted one line per
non-failed trial with one point per reported step, and saves screenshots under test-artifacts/.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import faultlib
from servers import ensure_chromium, free_port

pytestmark = pytest.mark.slow
STATES = ["complete", "complete", "pruned", "fail", "complete", "pruned"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# The intermediate-values plot: the Plotly div inside the card whose heading reads so.
PLOT_JS = """() => {
  const h = [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')]
      .find(e => e.textContent.trim().toLowerCase() === 'intermediate values');
  if (!h) return null;
  let card = h;
  while (card && !card.querySelector('.js-plotly-plot')) card = card.parentElement;
  if (!card) return null;
  const plot = card.querySelector('.js-plotly-plot');
  return {
    traces: plot.querySelectorAll('.scatterlayer .trace').length,
    points: plot.querySelectorAll('.scatterlayer .point').length,
    legend: [...plot.querySelectorAll('.legendtext')].map(e => e.textContent.trim()),
    xticks: [...plot.querySelectorAll('.xtick text')].map(e => e.textContent.trim()),
  };
}"""


@pytest.fixture
def dashboard(tmp_path: Path):
    """A recorded study and `noisesweep dashboard` serving it; yields (base URL, study)."""
    db = tmp_path / "dash.db"
    study_path = faultlib.write_study(tmp_path / "dash.yaml", faultlib.command_study("dash", trials=len(STATES)))
    study = faultlib.make_contract_study(f"sqlite:///{db}", study_path, states=STATES)
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen(
        [faultlib.NOISESWEEP, "dashboard", "--storage", f"sqlite:///{db}", "--port", str(port)],
        env=faultlib.clean_env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {(tmp_path / 'dashboard.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/dashboard", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        faultlib.wait_for(up, timeout=90, what="the dashboard to answer")
        yield base, study
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_dashboard_shows_trials_and_intermediate_values(dashboard):
    from playwright.sync_api import sync_playwright

    base, study = dashboard
    chromium = ensure_chromium()
    faultlib.ARTIFACTS.mkdir(exist_ok=True)
    trials = study.get_trials()
    with_curves = [t for t in trials if t.state.name != "FAIL"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{base}/dashboard/studies/{study._study_id}")
            page.get_by_text("Intermediate values", exact=True).wait_for(timeout=60_000)
            page.get_by_text(f"{study.study_name} (id={study._study_id})").wait_for(timeout=10_000)
            deadline = time.monotonic() + 30
            plot = page.evaluate(PLOT_JS)
            while (plot is None or plot["points"] == 0) and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                plot = page.evaluate(PLOT_JS)
            page.screenshot(path=str(faultlib.ARTIFACTS / "dashboard-study.png"), full_page=True)
            assert plot is not None, "no intermediate-values chart on the study page"
            assert plot["traces"] == len(with_curves)
            assert plot["points"] == sum(len(t.intermediate_values) for t in with_curves)
            assert sorted(plot["legend"]) == sorted(f"trial #{t.number}" for t in with_curves)
            assert {"5", "10", "15", "20"} <= set(plot["xticks"]), plot["xticks"]  # the real steps
            best = study.best_trial
            page.get_by_text(f"Best Trial (number={best.number})").wait_for(timeout=10_000)

            page.goto(f"{base}/dashboard/studies/{study._study_id}/trials")
            page.get_by_text(f"{len(trials)} Trials", exact=True).wait_for(timeout=60_000)
            page.screenshot(path=str(faultlib.ARTIFACTS / "dashboard-trials.png"), full_page=True)
            text = page.inner_text("body")
            for state in ("Complete", "Pruned", "Fail"):
                assert state in text, state
        finally:
            browser.close()
    assert (faultlib.ARTIFACTS / "dashboard-study.png").stat().st_size > 10_000
