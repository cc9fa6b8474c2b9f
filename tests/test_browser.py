"""The Prefect UI in a real browser: on the team server of tests/prefect_team.py (``dsclab server``
on 127.0.0.1: a Prefect server with the pools and deployments), headless Chromium (Debian's ``chromium``
driven by playwright, never a downloaded browser) opens the UI, finds the sample-complexity
deployment on the gpu pool, opens its custom-run form and sees the study spec's fields with the
preset's defaults; and, once the tiny study of tests/prefect_team.py has run on the gpu worker,
the flow run's Artifacts tab lists the summary table and the plot, whose pages show the table and
the image. The form refuses a spec its schema rules out (``n: [0]``: the error under the field,
no run created). Screenshots are saved under the tests' tmp dirs.

Skips when playwright or chromium is missing, except on CI (``CI`` set), where it fails."""
import os
import shutil

import pytest

from flows import server as srv

pytest_plugins = ["prefect_team"]
# The number inputs of the spec's ``n`` axis in the run form (one per value).
N_INPUTS = ("xpath=//span[contains(@class,'schema-form-property__label') and normalize-space()='N']"
            "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]"
            "//input[@type='number']")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def need_browser():
    """(playwright's sync API, chromium path), or skip with the reason (fail on CI)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright; no browser download needed)"
    exe = chromium_path()
    if reason is None and exe is None:
        reason = "Debian's chromium is not installed (apt-get install chromium)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"browser test must run on CI: {reason}")
        pytest.skip(reason)
    return sync_playwright, exe


@pytest.fixture(scope="module")
def browser_bin():
    return need_browser()


def test_ui_shows_the_deployment_run_form(browser_bin, team, tmp_path):
    sync_playwright, exe = browser_bin
    base = team["base"]
    dep = srv.api_request("GET", f"{base}/api/deployments/name/sample-complexity/gpu").json()
    shot = tmp_path / "run-form.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/deployments")
            # the deployment list: the flow's name and its deployment 'gpu' (each study has one)
            page.get_by_text("sample-complexity").first.wait_for()
            link = page.locator(f"a[href*='/deployments/deployment/{dep['id']}']").first
            assert link.inner_text().strip() == "gpu"
            link.click()
            page.wait_for_url(f"**/deployments/deployment/{dep['id']}**")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").first.click()
            page.wait_for_url(f"**/deployments/deployment/{dep['id']}/run**")
            # the typed form: the spec's fields, the preset's values, and the runner choice
            page.get_by_text("spec", exact=True).first.wait_for()
            text = page.locator("body").inner_text()
            for label in ["Workers", "Distribution", "Train", "Evaluation", "Steps", "Batch Size", "N Samples",
                          "Store", "runner"]:
                assert f"\n{label}" in text, label
            labels = page.eval_on_selector_all(".schema-form-property__label", "els => els.map(e => e.textContent.trim())")
            assert labels.count("Store (Optional)") == 1  # one store field: the spec's
            assert not {"store", "store (Optional)"} & set(labels)  # no top-level one
            values = page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value)")
            assert "quick" in values  # spec.name from studies/quick.yaml
            assert "1500" in values and "256" in values  # train.steps, train.batch_size
            assert "sample-complexity" in text and "gpu" in text
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_ui_shows_the_run_artifacts(browser_bin, team, tiny_run, tmp_path):
    sync_playwright, exe = browser_bin
    assert tiny_run["flow_run"]["state_type"] == "COMPLETED"
    base, name = team["base"], tiny_run["spec"]["name"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            run_page = f"{base}/runs/flow-run/{tiny_run['id']}"
            page.goto(run_page)
            page.get_by_text("Artifacts", exact=True).first.click()
            for suffix in ["summary", "report", "plot"]:
                page.get_by_text(f"{name}-{suffix}", exact=True).first.wait_for()
            page.screenshot(path=str(tmp_path / "artifacts.png"))
            # the table artifact's page shows the summary with its 'd=...' columns
            page.get_by_text(f"{name}-summary", exact=True).first.click()
            page.get_by_text("d=2", exact=True).first.wait_for()
            page.screenshot(path=str(tmp_path / "table.png"))
            # the image artifact's page shows the plot (a decoded PNG, not a broken image)
            page.goto(run_page)
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text(f"{name}-plot", exact=True).first.click()
            img = page.locator("img[src^='data:image/png']").first
            img.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
            assert img.evaluate("img => img.naturalWidth") > 500
            page.screenshot(path=str(tmp_path / "plot.png"))
        finally:
            browser.close()
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_ui_form_refuses_what_the_schema_rules_out(browser_bin, team, tmp_path):
    """``n: [0]`` typed into the run form: Submit shows the schema's message under the field and
    creates no run (the page stays on the form)."""
    sync_playwright, exe = browser_bin
    base = team["base"]
    dep = srv.api_request("GET", f"{base}/api/deployments/name/sample-complexity/gpu").json()

    def runs() -> int:
        return srv.api_request("POST", f"{base}/api/flow_runs/count",
                               json={"deployments": {"id": {"any_": [dep["id"]]}}}).json()

    before = runs()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            form = f"{base}/deployments/deployment/{dep['id']}/run"
            page.goto(form)
            page.get_by_text("spec", exact=True).first.wait_for()
            first = page.locator(N_INPUTS).first
            assert first.input_value() == "100"  # studies/quick.yaml: n = [100, ...]
            first.fill("0")
            page.get_by_role("button", name="Submit").click()
            error = page.locator(".schema-form-property-array-item__error", has_text="0 is less than the minimum of 1")
            error.first.wait_for()
            page.screenshot(path=str(tmp_path / "refused.png"))
            assert page.url == form
        finally:
            browser.close()
    assert runs() == before

