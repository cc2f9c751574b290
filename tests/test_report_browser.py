"""The report in a real browser (headless Chromium via selenium): the report of a real tiny-model
sweep and a rich synthetic one (every section, two runs) open without JavaScript errors, every
figure drawn, a hostile hardware label shown as text, the findings the first section and on the
first screen; and the check itself catches a figure that does not draw. Screenshots land in the
test's folder (their paths printed: `pytest -s` shows them) and in $GPTOSS_TEST_ARTIFACTS when set."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from harness.report import write_report
from test_findings import record_run
from test_report import ALL_SECTIONS, XSS, make_run

REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="chromium and chromedriver are not installed")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.unhandled_prompt_behavior = "ignore"  # an alert stays open for open_report to find
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _rendered(driver) -> list[bool]:
    return [bool(f.find_elements(By.CSS_SELECTOR, ".plotly-graph-div .main-svg"))
            for f in driver.find_elements(By.CSS_SELECTOR, "div.figure")]


def open_report(driver, path: Path) -> list[str]:
    """Open a report; return what is wrong with it: console errors, an alert, figures not drawn."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.as_uri())
    try:  # a page's alert can open after get() returns (seen once in ~5 runs on a loaded CI machine)
        WebDriverWait(driver, 2).until(expected_conditions.alert_is_present())
        problems = [f"an alert opened: {driver.switch_to.alert.text}"]
        driver.switch_to.alert.dismiss()
    except (NoAlertPresentException, TimeoutException):
        problems = []
    try:
        WebDriverWait(driver, 5).until(lambda d: all(_rendered(d)))
    except TimeoutException:
        pass  # named below, figure by figure
    problems += [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    for container, drawn in zip(driver.find_elements(By.CSS_SELECTOR, "div.figure"), _rendered(driver)):
        if not drawn:
            problems.append(f"figure not rendered: {container.find_element(By.XPATH, '..').get_attribute('id')}")
    return problems


def screenshot(driver, path: Path, full_page: bool = True) -> None:
    if full_page:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, min(height, 16000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1366, 900)
    print(f"screenshot: {path}")
    if os.environ.get("GPTOSS_TEST_ARTIFACTS"):
        artifacts = Path(os.environ["GPTOSS_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, artifacts / path.name)


def section_ids(driver) -> set[str]:
    return {s.get_attribute("id") for s in driver.find_elements(By.CSS_SELECTOR, "section")} - {"findings", "run", "points"}


def findings_first_and_visible(driver) -> list[str]:
    """What is wrong with the findings section as the page opens: not the first section, hidden, empty
    or below the first screen."""
    first = driver.find_elements(By.CSS_SELECTOR, "main section")[0]
    if first.get_attribute("id") != "findings":
        return [f"first section is {first.get_attribute('id')}"]
    problems = [] if first.is_displayed() else ["findings hidden"]
    shown = [li for li in first.find_elements(By.CSS_SELECTOR, "li") if li.is_displayed()]
    if not shown:
        problems.append("no finding shown")
    top = driver.execute_script("return arguments[0].getBoundingClientRect().top", first)
    if top > driver.execute_script("return window.innerHeight"):
        problems.append("findings below the first screen")
    return problems


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    """The report a sweep writes at its end: the tiny model on torch_ref on the CPU, 2 batch sizes x 2
    contexts, few tokens (a real sweep, kept short)."""
    root = tmp_path_factory.mktemp("sweep")
    command = [sys.executable, "-m", "harness", "backend=torch_ref", "model=gpt-oss-tiny", "device=cpu",
               "workload.batch_size=1,2", "workload.context_len=16,32", "workload.new_tokens=4", "workload.repeats=1",
               "workload.warmup_tokens=2", "agreement.tokens=4", f'hardware="{XSS}"',
               f"results_dir={root / 'results'}", f"reports_dir={root / 'reports'}", f"cache_dir={root / 'cache'}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [report] = (root / "reports").glob("*.html")
    assert str(report) in done.stdout  # the job ends by saying where its report is
    return report


@pytest.mark.slow
def test_sweep_report_renders(browser, sweep_report, tmp_path):
    assert open_report(browser, sweep_report) == []
    assert {"decode-throughput", "tpot", "ttft", "throughput-interactivity", "agreement"} <= section_ids(browser)
    assert findings_first_and_visible(browser) == []
    assert XSS in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, tmp_path / "report-sweep.png")


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = [make_run(root / "results", "20250601T120000Z", XSS),
            make_run(root / "results", "20250602T120000Z", "H200 SXM", speed=1.4)]
    return write_report(runs, root / "synthetic.html")


def test_synthetic_report_renders(browser, synthetic_report, tmp_path):
    assert open_report(browser, synthetic_report) == []
    assert section_ids(browser) == ALL_SECTIONS
    assert findings_first_and_visible(browser) == []
    assert XSS in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, tmp_path / "report-synthetic.png")


def test_findings_open_the_recorded_run(browser, tmp_path):
    """Two models, two engines, an MXFP4 and bf16 pair, failed, throttled, noisy and disagreeing
    points (tests/test_findings.py): the findings are the first thing the page shows."""
    report = write_report([record_run(tmp_path / "results")], tmp_path / "findings.html")
    assert open_report(browser, report) == []
    assert findings_first_and_visible(browser) == []
    findings = browser.find_element(By.ID, "findings")
    kinds = {li.get_attribute("data-kind") for li in findings.find_elements(By.CSS_SELECTOR, "li")}
    assert {"setup", "fastest", "quant", "path", "failed", "throttled", "disagrees", "noisy"} <= kinds
    red = findings.find_elements(By.CSS_SELECTOR, "li.warning")
    assert red and red[0].value_of_css_property("color") != findings.find_element(
        By.CSS_SELECTOR, "li.info").value_of_css_property("color")
    screenshot(browser, tmp_path / "report-findings-first-screen.png", full_page=False)
    screenshot(browser, tmp_path / "report-findings.png")


def test_check_catches_a_figure_that_does_not_draw(browser, synthetic_report, tmp_path):
    html = synthetic_report.read_text()
    # a figure whose JSON is broken (a console error), one whose drawing call is gone (silent), a script
    broken = re.sub(r'(Plotly\.newPlot\(\s*"fig-roofline",\s*)\[', r"\1[[", html, count=1)
    silent = re.sub(r'Plotly\.newPlot\((\s*"fig-tpot")', r"void(\1", html, count=1)
    alerting = html.replace("</main>", "<script>alert('injected')</script></main>")
    assert broken != html and silent != html and alerting != html
    for name, text in {"broken": broken, "silent": silent, "alerting": alerting}.items():
        (tmp_path / f"{name}.html").write_text(text)
    problems = open_report(browser, tmp_path / "broken.html")
    assert "figure not rendered: roofline" in problems and any(p.startswith("console:") for p in problems)
    assert open_report(browser, tmp_path / "silent.html") == ["figure not rendered: tpot"]
    moved = html.replace('<section id="findings">', '<section id="findings" hidden>')
    (tmp_path / "moved.html").write_text(moved)
    open_report(browser, tmp_path / "moved.html")
    assert moved != html and findings_first_and_visible(browser) == ["findings hidden", "no finding shown"]
    assert open_report(browser, tmp_path / "alerting.html") == ["an alert opened: injected"]
