"""`semspark web` for real: the server as a user starts it (its own process, waitress), driven by
Debian's Chromium through chromium-driver (Selenium), on the test session's ingested and scored
catalog. The truths are the catalog as Spark reads it and the generator's folders."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import free_port, stop_process_group

pytestmark = pytest.mark.spark

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
PASSWORD = "microscope-2026"


@pytest.fixture(scope="module")
def web(spark, scoring, tmp_path_factory):
    """The web app over the `scoring` catalog, with one account made by `semspark web-user add`."""
    from semspark.infer.job import production_model, promote, run_inference

    if production_model(spark, "scoring") is None:
        promote(spark, scoring.config, scoring.model.model_version)
    run_inference(spark, scoring.config)            # every image has the production model's prediction
    folder = tmp_path_factory.mktemp("web")
    config = folder / "semspark.yaml"
    port = free_port()
    config.write_text(f"catalog: {{database: scoring}}\n"
                      f"ingest: {{image_size: {scoring.config.ingest.image_size}, dataset_dir: {scoring.config.ingest.dataset_dir}}}\n"
                      f"web: {{port: {port}, users_file: web-test/users.yaml, write_wait_s: 2}}\n")
    semspark = [str(Path(sys.executable).parent / "semspark"), "--config", str(config)]
    made = subprocess.run(semspark + ["web-user", "add", "scientist", "--password-stdin"], input=PASSWORD + "\n",
                          capture_output=True, text=True, env=os.environ.copy())
    assert made.returncode == 0, made.stderr
    token = subprocess.run(semspark + ["web-user", "token", "scientist"], capture_output=True, text=True,
                           check=True).stdout.strip()
    log = open(folder / "web.log", "w")
    server = subprocess.Popen(semspark + ["web"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_process_group(server)
                raise AssertionError(f"semspark web did not start: {(folder / 'web.log').read_text()[-3000:]}")
            time.sleep(0.3)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "config": config, "folder": folder}
    finally:
        stop_process_group(server)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: apt-get install chromium "
                    "chromium-driver (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(10)
    try:
        yield driver
    finally:
        driver.quit()


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _post_json(url: str, headers: dict, body) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _navigate(browser, element) -> None:
    """Click something (or do something: a callable) that loads a page, and wait for the new page: reading the old one meanwhile
    would test nothing. The old page is marked in its window object, which a new page does not
    inherit; asking chromedriver whether an old element went stale instead can fail mid-navigation
    ("Node with given id does not belong to the document"), so a query that fails while the page
    changes is asked again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script("window.semsparkOldPage = true;")
    element.click() if not callable(element) else element()
    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.execute_script(
            "return window.semsparkOldPage === undefined && document.readyState === 'complete';"))


def _open(browser, web, path: str) -> None:
    """Open a page of the app, logging in first when the browser is not (a test run on its own)."""
    from selenium.webdriver.common.by import By

    browser.get(web["url"] + path)
    if "/login" in browser.current_url:
        browser.find_element(By.ID, "user").send_keys("scientist")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        _navigate(browser, browser.find_element(By.ID, "login"))
        assert "/login" not in browser.current_url


def _screenshot(browser, name: str) -> None:
    """Screenshots for the README: kept when SEMSPARK_SCREENSHOTS names a folder."""
    target = os.environ.get("SEMSPARK_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(target) / f"{name}.png"))


def test_nothing_is_served_without_a_login(web):
    status, body = _get(web["url"] + "/api/images")
    assert status == 401 and "log in" in body["error"]
    status, _ = _get(web["url"] + "/api/images", {"Authorization": "Bearer not-a-token"})
    assert status == 401
    with pytest.raises(urllib.error.HTTPError) as refused:   # a write without a session or token
        urllib.request.urlopen(urllib.request.Request(
            web["url"] + "/api/images/" + "0" * 64 + "/labels", data=b'{"label": "x"}', method="POST",
            headers={"Content-Type": "application/json"}), timeout=30)
    assert refused.value.code == 401
    # a page redirects to the login form instead
    with urllib.request.urlopen(web["url"] + "/?category=x", timeout=30) as response:
        assert "/login" in response.url


def test_the_api_answers_a_script_with_a_token(spark, web):
    expected = spark.table("scoring.images").count()
    status, body = _get(web["url"] + "/api/images?per_page=5", {"Authorization": f"Bearer {web['token']}"})
    assert status == 200
    assert body["total"] == expected and len(body["images"]) == 5
    status, body = _get(web["url"] + "/api/images?sort=sideways", {"Authorization": f"Bearer {web['token']}"})
    assert status == 400 and "sort" in body["error"]


def test_log_in_filter_open_and_correct_an_image(spark, web, browser, scoring):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from semspark.cli import main

    browser.get(web["url"] + "/")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "user").send_keys("scientist")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    _navigate(browser, browser.find_element(By.ID, "login"))
    assert "wrong password" in browser.find_element(By.ID, "login-error").text
    browser.find_element(By.ID, "user").clear()
    browser.find_element(By.ID, "user").send_keys("scientist")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    _screenshot(browser, "login")
    _navigate(browser, browser.find_element(By.ID, "login"))

    # the gallery: every image of the catalog, thumbnails drawn
    total = spark.table("scoring.images").count()
    assert int(browser.find_element(By.ID, "total").text) == total
    tiles = browser.find_elements(By.CSS_SELECTOR, "#gallery .tile")
    assert len(tiles) == min(total, 100)
    first_image = tiles[0].find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", first_image) > 0
    _screenshot(browser, "gallery")

    # filter by label: the count is the catalog's for that label (sem.current_labels, through Spark)
    counts = {r["label"]: r["n"] for r in spark.sql(
        "SELECT label, count(*) AS n FROM scoring.current_labels GROUP BY label").collect()}
    label = sorted(counts)[0]
    Select(browser.find_element(By.ID, "f-label")).select_by_visible_text(label)
    _navigate(browser, browser.find_element(By.ID, "apply"))
    assert int(browser.find_element(By.ID, "total").text) == counts[label]
    labels_shown = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#gallery .tile .label")}
    assert labels_shown == {label}

    # open the first image: its page names its file as sem.images does
    tile = browser.find_element(By.CSS_SELECTOR, "#gallery .tile")
    image_id = tile.get_attribute("data-image-id")
    _navigate(browser, tile.find_element(By.TAG_NAME, "a"))
    path = spark.sql(f"SELECT path FROM scoring.images WHERE image_id = '{image_id}'").first()["path"]
    assert browser.find_element(By.ID, "image-path").text == path
    assert browser.find_element(By.ID, "current-label").text == label

    # its databar, read again from the original file and drawn, as the API gives the reading
    import hashlib

    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda driver: driver.execute_script(
        "const p = document.getElementById('scale-reading-picture'); return p.complete && p.naturalWidth > 0;"))
    token = {"Authorization": f"Bearer {web['token']}"}
    status, reading = _get(f"{web['url']}/api/images/{image_id}/scale-reading", token)
    assert status == 200 and reading["ok"], reading
    assert reading["caption"] in browser.find_element(By.ID, "scale-reading-caption").text
    # the reading is the generator's truth (label value and unit, bar length within 2 px) for the
    # catalog's files from the generator's folder (other tests add images of other runs to this catalog)
    for record in scoring.records[:3]:
        record_id = hashlib.sha256((scoring.first / record.file).read_bytes()).hexdigest()
        status, reading = _get(f"{web['url']}/api/images/{record_id}/scale-reading", token)
        assert status == 200 and reading["ok"], reading
        assert (reading["scale"]["scale_value"], reading["scale"]["scale_unit"]) == (record.scale_value,
                                                                                    record.scale_unit)
        assert abs(reading["reading"]["bar"]["length_px"] - record.bar_px) <= 2, (record, reading["reading"])
    _screenshot(browser, "image")

    # correct its category; the page and the catalog (semspark sql) both say so, with who did it
    other = sorted(set(counts) - {label})[0]
    Select(browser.find_element(By.ID, "label-choice")).select_by_visible_text(other)
    _navigate(browser, browser.find_element(By.ID, "save-label"))
    assert browser.find_element(By.ID, "current-label").text == other
    # `semspark sql` runs in this process: a second one cannot open the embedded catalog the test
    # session holds. This session listed the table's files before the web app added one.
    spark.catalog.refreshTable("scoring.labels")
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--config", str(web["config"]), "sql", "SELECT label, source, labelled_by FROM "
                     f"scoring.current_labels WHERE image_id = '{image_id}'", "--format", "json"]) == 0
    row = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert row == {"label": other, "source": "person", "labelled_by": "scientist"}

    # put it back (the catalog is shared with other tests): the history keeps both
    Select(browser.find_element(By.ID, "label-choice")).select_by_visible_text(label)
    _navigate(browser, browser.find_element(By.ID, "save-label"))
    assert browser.find_element(By.ID, "current-label").text == label
    history = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#history tr")]
    assert len(history) >= 3 and other in history[1]


def test_a_form_from_another_site_cannot_write(spark, web, browser):
    """The browser is logged in (the test above); a page elsewhere that posts to the app writes nothing
    (the session cookie is not sent cross-site, and the post has no CSRF token either)."""
    image_id = spark.table("scoring.images").orderBy("image_id").first()["image_id"]
    headers = {"Authorization": f"Bearer {web['token']}"}
    before = _get(f"{web['url']}/api/images/{image_id}/labels", headers)[1]
    attacker = web["folder"] / "attacker.html"
    attacker.write_text(f"""<form id="f" method="post" action="{web['url']}/images/{image_id}/label">
        <input name="other" value="Vandalised"></form><script>document.getElementById('f').submit()</script>""")
    browser.get(attacker.as_uri())
    deadline = time.monotonic() + 10
    while browser.current_url.startswith("file:") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "/login" in browser.current_url or "did not come from a semspark page" in browser.page_source
    after = _get(f"{web['url']}/api/images/{image_id}/labels", headers)[1]
    assert after == before and after["current_label"] != "Vandalised"


def test_more_like_this_is_the_nearest_by_the_production_models_embedding(spark, web, browser):
    """The image page's "more like this" tiles are the images nearest by cosine similarity of the
    production model's embeddings as Spark reads them from sem.predictions (scikit-learn, brute force)."""
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from sklearn.neighbors import NearestNeighbors

    from semspark.infer.job import production_model

    model = production_model(spark, "scoring")
    rows = (spark.table("scoring.predictions").filter(f"model_version = '{model}' AND embedding IS NOT NULL")
            .select("image_id", "embedding").orderBy("image_id").collect())
    ids, matrix = [r["image_id"] for r in rows], np.array([r["embedding"] for r in rows], dtype=np.float64)
    query = ids[len(ids) // 2]
    found_by_sklearn = NearestNeighbors(metric="cosine", algorithm="brute").fit(matrix)
    _, nearest = found_by_sklearn.kneighbors(matrix[[ids.index(query)]], n_neighbors=13)
    expected = [ids[i] for i in nearest[0] if ids[i] != query][:12]
    distances, every = found_by_sklearn.kneighbors(matrix[[ids.index(query)]], n_neighbors=len(ids))
    distance_of = dict(zip((ids[i] for i in every[0]), distances[0]))

    def same_neighbours(shown: list[str], wanted: list[str]) -> bool:
        """The same images in the same order, but for two whose distances are equal to float32's
        precision (the app keeps unit vectors in float32, scikit-learn works in float64: a near tie
        may come out either way; seen once in CI, at the 4th of 12)."""
        if shown == wanted:
            return True
        if len(shown) != len(wanted) or set(shown) - set(distance_of) or len(set(shown)) != len(shown):
            return False
        return all(abs(distance_of[a] - distance_of[b]) < 1e-5 for a, b in zip(shown, wanted))

    _open(browser, web, f"/images/{query}")
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#similar .tile"))
    shown = [e.get_attribute("data-image-id") for e in browser.find_elements(By.CSS_SELECTOR, "#similar .tile")]
    assert same_neighbours(shown, expected), (shown, expected, [distance_of.get(i) for i in shown])
    assert model in browser.find_element(By.ID, "similar-status").text
    status, found = _get(f"{web['url']}/api/images/{query}/similar?k=3", {"Authorization": f"Bearer {web['token']}"})
    assert status == 200 and same_neighbours([r["image_id"] for r in found["images"]], expected[:3])
    assert _get(f"{web['url']}/api/images/{query}/similar?k=0", {"Authorization": f"Bearer {web['token']}"})[0] == 400


def test_the_review_queue_follows_the_confidence_order_and_keys_accept(spark, web, browser, scoring):
    """/review/confidence opens the least confident image no person has labelled; the key a makes its
    prediction its label (source person) and moves on; n skips."""
    from selenium.webdriver.common.by import By

    from semspark.infer.job import production_model

    model = production_model(spark, "scoring")

    def queue():
        spark.catalog.refreshTable("scoring.labels")
        return [r["image_id"] for r in spark.sql(f"""
            SELECT p.image_id FROM scoring.predictions p LEFT JOIN scoring.current_labels l USING (image_id)
            WHERE p.model_version = '{model}' AND (l.source IS NULL OR l.source <> 'person')
            ORDER BY p.confidence, p.image_id""").collect()]

    expected = queue()
    _open(browser, web, "/review/confidence")
    first = browser.find_element(By.ID, "image-id").text
    assert first == expected[0]
    assert f"{len(expected)} to go" in browser.find_element(By.ID, "review").text
    _screenshot(browser, "review")
    predicted = spark.sql(f"SELECT category FROM scoring.predictions WHERE image_id = '{first}' "
                          f"AND model_version = '{model}'").first()["category"]
    _navigate(browser, lambda: browser.find_element(By.TAG_NAME, "body").send_keys("a"))
    second = browser.find_element(By.ID, "image-id").text
    now = queue()
    assert second == now[0] == expected[1], (first, second, now[:3], expected[:3])   # the accepted image left the queue
    label = spark.sql(f"SELECT label, source, labelled_by FROM scoring.current_labels WHERE image_id = '{first}'").first()
    assert (label["label"], label["source"], label["labelled_by"]) == (predicted, "person", "scientist")
    _navigate(browser, lambda: browser.find_element(By.TAG_NAME, "body").send_keys("n"))
    assert browser.find_element(By.ID, "image-id").text == expected[2]


def test_a_person_confirming_a_folders_label_is_recorded_as_theirs(spark, web):
    """Accepting a prediction the folder's label already says is a person's review: a row of source
    person with the same label, so the current label's source is person (the review queues' test);
    saying it again records nothing."""
    image_id, label, source = spark.sql(
        "SELECT image_id, label, source FROM scoring.current_labels WHERE source <> 'person' "
        "ORDER BY image_id DESC LIMIT 1").first()
    headers = {"Authorization": f"Bearer {web['token']}"}
    url = f"{web['url']}/api/images/{image_id}/labels"
    status, result = _post_json(url, headers, {"label": label})
    assert status == 200 and (result["changed"], result["recorded"], result["label"]) == (False, True, label)
    spark.catalog.refreshTable("scoring.labels")
    row = spark.sql(f"SELECT label, source, labelled_by FROM scoring.current_labels WHERE image_id = '{image_id}'").first()
    assert (row["label"], row["source"], row["labelled_by"]) == (label, "person", "scientist"), source
    status, again = _post_json(url, headers, {"label": label})
    assert status == 200 and (again["changed"], again["recorded"]) == (False, False)
    status, history = _get(url, headers)
    assert [entry["source"] for entry in history["history"]].count("person") == 1, history


def test_a_correction_while_another_writer_holds_the_catalog_is_refused_and_says_why(spark, web):
    """A compaction (here: this test process) holds the catalog's writer lock: the web app waits
    web.write_wait_s (2 s here), then answers 503 naming the holder, and records nothing; once the
    lock is free the same label is recorded."""
    from semspark.storage import writer_lock

    image_id, label = spark.sql("SELECT image_id, label FROM scoring.current_labels WHERE label IS NOT NULL "
                                "ORDER BY image_id LIMIT 1 OFFSET 5").first()
    other = next(r["label"] for r in spark.sql("SELECT DISTINCT label FROM scoring.current_labels "
                                                "WHERE label IS NOT NULL ORDER BY label").collect() if r["label"] != label)
    headers = {"Authorization": f"Bearer {web['token']}"}
    url = f"{web['url']}/api/images/{image_id}/labels"
    before = _get(url, headers)[1]
    with writer_lock(purpose="compaction of the test"):
        started = time.monotonic()
        status, result = _post_json(url, headers, {"label": other})
        waited = time.monotonic() - started
    assert status == 503, result
    assert "nothing was recorded" in result["error"] and "compaction of the test" in result["error"]
    assert 2 <= waited < 20
    assert _get(url, headers)[1] == before
    status, result = _post_json(url, headers, {"label": other})
    assert status == 200 and result["recorded"] and _get(url, headers)[1]["current_label"] == other
    spark.catalog.refreshTable("scoring.labels")   # the later tests' Spark reads see the web app's row


def test_a_scale_corrected_in_the_app_is_applied_by_rescale(spark, web, scoring):
    """A scale recorded through the API (label 500 nm over a bar of 100 px) is what the next
    semspark rescale writes to sem.images: 5 nm per pixel, by hand."""
    from semspark.ingest.rescale import run_rescale

    image_id = spark.table("scoring.images").orderBy("image_id").first()["image_id"]
    headers = {"Authorization": f"Bearer {web['token']}", "Content-Type": "application/json"}
    for body, status in (({"value": -1, "unit": "nm"}, 400), ({"value": 500, "unit": "furlong"}, 400),
                         ({"value": 500, "unit": "nm", "bar_px": 100}, 200)):
        request = urllib.request.Request(f"{web['url']}/api/images/{image_id}/scale", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == status
        except urllib.error.HTTPError as exc:
            assert exc.code == status, exc.read()
    spark.catalog.refreshTable("scoring.scale_corrections")
    summary = run_rescale(spark, scoring.config, selection="corrections")
    assert summary.selected == 1 and summary.changed == 1
    spark.catalog.refreshTable("scoring.images")
    row = spark.sql(f"SELECT scale_value, scale_unit, scale_bar_px, nm_per_px, scale_source FROM scoring.images "
                    f"WHERE image_id = '{image_id}'").first()
    assert (row["scale_value"], row["scale_unit"], row["scale_bar_px"], row["scale_source"]) == (500.0, "nm", 100.0,
                                                                                                "correction")
    assert row["nm_per_px"] == pytest.approx(5.0)
    again = run_rescale(spark, scoring.config, selection="corrections")   # applied: nothing pending
    assert again.selected == 0


def test_the_models_and_runs_pages_show_the_catalogs_figures(spark, web, browser, scoring):
    """The models page: each model's test accuracy as sem.models has it, a line per model with a point
    per epoch of sem.training_history; the runs page: one row per nightly run of sem.run_events."""
    from selenium.webdriver.common.by import By

    version = scoring.model.model_version
    _open(browser, web, f"/models?model={version}")
    expected = spark.sql(f"SELECT test_accuracy, temperature, temperature_low, temperature_high, test_ece_before, "
                         f"test_ece_after FROM scoring.models WHERE model_version = '{version}'").first()
    row = browser.find_element(By.CSS_SELECTOR, f'tr.model[data-model="{version}"]')
    assert row.find_element(By.CLASS_NAME, "test-accuracy").text == f"{expected['test_accuracy']:.3f}"
    # the calibration the registry recorded, beside the accuracy (the metadata's figures: test_train)
    assert row.find_element(By.CLASS_NAME, "temperature").text == (
        f"{expected['temperature']:.2f} [{expected['temperature_low']:.2f}, {expected['temperature_high']:.2f}]")
    assert row.find_element(By.CLASS_NAME, "ece").text == f"{expected['test_ece_before']:.3f} → {expected['test_ece_after']:.3f}"
    epochs = spark.sql(f"SELECT count(*) FROM scoring.training_history WHERE model_version = '{version}' "
                       "AND test_accuracy IS NOT NULL").first()[0]
    line = browser.find_element(By.CSS_SELECTOR, f'#accuracy-chart polyline[data-model="{version}"]')
    assert int(line.get_attribute("data-points")) == epochs > 0
    _screenshot(browser, "models")
    browser.get(f"{web['url']}/runs")
    shown = browser.find_elements(By.CSS_SELECTOR, "#runs tr.run")
    if spark.catalog.tableExists("scoring.run_events"):
        assert len(shown) == spark.sql("SELECT count(DISTINCT run_id) FROM scoring.run_events").first()[0]
    else:
        assert not shown and browser.find_element(By.ID, "no-runs")
    status, body = _get(f"{web['url']}/api/models", {"Authorization": f"Bearer {web['token']}"})
    assert status == 200 and any(m["model_version"] == version and len(m["test_accuracy_per_epoch"]) == epochs
                                 for m in body)


@pytest.fixture(scope="module")
def analysis(spark, web, scoring) -> str:
    """An analysis of the production model, keeping the cuts at k = 3 and 6."""
    import dataclasses

    from semspark.analysis.job import AnalysisRequest, run_analysis
    from semspark.config import AnalysisConfig
    from semspark.infer.job import production_model

    settings = AnalysisConfig(scale_bins=(), heatmap_images=20, cluster_ks=(3, 6), gallery_method="ward", gallery_k=3,
                              gallery_clusters=3, gallery_images=2, autoencoder_epochs=5, id_repetitions=1,
                              density_neighbours=5)
    return run_analysis(spark, dataclasses.replace(scoring.config, analysis=settings),
                        AnalysisRequest(model=production_model(spark, "scoring"), coding_dim="4")).analysis


def test_the_clusters_of_an_analysis_are_shown_named_and_filtered(spark, web, browser, analysis):
    """An analysis of the production model: the clusters page shows each cluster's size and the labels
    inside as Spark counts them from sem.clusters and sem.current_labels; a name given in the page is
    a row of sem.cluster_names (who, which run); the gallery filtered to a cluster shows its images."""
    from selenium.webdriver.common.by import By
    sizes = {r["cluster"]: r["n"] for r in spark.sql(
        f"SELECT cluster, count(*) AS n FROM scoring.clusters WHERE analysis = '{analysis}' AND method = 'ward' "
        "AND k = 6 GROUP BY cluster").collect()}
    _open(browser, web, "/clusters")
    _navigate(browser, browser.find_element(By.LINK_TEXT, analysis))
    _navigate(browser, browser.find_element(By.LINK_TEXT, "ward 6"))
    shown = {int(e.get_attribute("data-cluster")): int(e.get_attribute("data-size"))
             for e in browser.find_elements(By.CSS_SELECTOR, "#clusters .cluster")}
    assert shown == sizes
    largest = max(sizes, key=lambda c: (sizes[c], -c))
    labels = {r["label"] or "(none)": r["n"] for r in spark.sql(
        f"SELECT l.label, count(*) AS n FROM scoring.clusters c LEFT JOIN scoring.current_labels l USING (image_id) "
        f"WHERE c.analysis = '{analysis}' AND c.method = 'ward' AND c.k = 6 AND c.cluster = {largest} "
        "GROUP BY l.label").collect()}
    item = browser.find_element(By.CSS_SELECTOR, f'#clusters .cluster[data-cluster="{largest}"]')
    assert {e.get_attribute("data-label"): int(e.get_attribute("data-images"))
            for e in item.find_elements(By.CSS_SELECTOR, ".composed")} == labels

    # name it: a row of sem.cluster_names, shown on the page
    item.find_element(By.CLASS_NAME, "name-input").send_keys("Bundled nanowires")
    _navigate(browser, item.find_element(By.CLASS_NAME, "save-name"))
    item = browser.find_element(By.CSS_SELECTOR, f'#clusters .cluster[data-cluster="{largest}"]')
    assert item.find_element(By.CLASS_NAME, "cluster-name").text == "Bundled nanowires"
    _screenshot(browser, "clusters")
    spark.catalog.refreshTable("scoring.cluster_names")
    run = spark.sql(f"SELECT max(analysis_run) FROM scoring.clusters WHERE analysis = '{analysis}'").first()[0]
    names = spark.sql(f"SELECT analysis_run, method, k, cluster, name, named_by FROM scoring.cluster_names "
                      f"WHERE analysis = '{analysis}'").collect()
    assert [r.asDict() for r in names] == [{"analysis_run": run, "method": "ward", "k": 6, "cluster": largest,
                                            "name": "Bundled nanowires", "named_by": "scientist"}]

    # the gallery of that cluster
    _navigate(browser, item.find_element(By.CLASS_NAME, "in-gallery"))
    assert int(browser.find_element(By.ID, "total").text) == sizes[largest]
    _screenshot(browser, "clusters-gallery")
    headers = {"Authorization": f"Bearer {web['token']}"}
    status, cut = _get(f"{web['url']}/api/clusters/{analysis}?method=ward&k=6", headers)
    assert status == 200 and {c["cluster"]: c["size"] for c in cut["clusters"]} == sizes
    assert _get(f"{web['url']}/api/images?analysis={analysis}&cluster=1", headers)[0] == 400   # half a cluster


def test_an_analysis_is_cut_at_any_k_from_its_hierarchy(spark, web, browser, analysis):
    """k = 4, which sem.clusters does not keep, cut from the hierarchy the report keeps: as many
    clusters as sem.cluster_scores says the ward cut at 4 obtained, nested between the kept cuts at 3
    and 6 (a hierarchy's cuts are); the gallery filter and a name work at that k too."""
    from selenium.webdriver.common.by import By

    headers = {"Authorization": f"Bearer {web['token']}"}
    kept = {k: {} for k in (3, 6)}
    for r in spark.sql(f"SELECT k, cluster, image_id FROM scoring.clusters WHERE analysis = '{analysis}' "
                       "AND method = 'ward'").collect():
        kept[r["k"]][r["image_id"]] = r["cluster"]
    obtained = spark.sql(f"SELECT clusters_obtained FROM scoring.cluster_scores WHERE analysis = '{analysis}' "
                         "AND method = 'ward' AND k = 4").first()[0]
    _open(browser, web, f"/clusters/{analysis}?method=ward&k=3")
    browser.find_element(By.ID, "cut-k").clear()
    browser.find_element(By.ID, "cut-k").send_keys("4")
    _navigate(browser, browser.find_element(By.ID, "cut-apply"))
    shown = {int(e.get_attribute("data-cluster")): int(e.get_attribute("data-size"))
             for e in browser.find_elements(By.CSS_SELECTOR, "#clusters .cluster")}
    assert len(shown) == obtained == 4 and sum(shown.values()) == len(kept[3])
    at_4 = {}
    for cluster, size in shown.items():
        status, found = _get(f"{web['url']}/api/images?analysis={analysis}&method=ward&k=4&cluster={cluster}"
                             "&per_page=500", headers)
        assert status == 200 and found["total"] == size
        at_4.update({row["image_id"]: cluster for row in found["images"]})
    assert set(at_4) == set(kept[3])

    def nested(fine: dict, coarse: dict) -> bool:   # every cluster of `fine` inside one of `coarse`
        return all(len({coarse[i] for i in fine if fine[i] == c}) == 1 for c in set(fine.values()))

    assert nested(at_4, kept[3]) and nested(kept[6], at_4)
    status, named = _post_json(f"{web['url']}/api/clusters/{analysis}/names", headers,
                               {"method": "ward", "k": 4, "cluster": next(iter(shown)), "name": "Split at four"})
    assert status == 200, named
    spark.catalog.refreshTable("scoring.cluster_names")
    assert spark.sql(f"SELECT count(*) FROM scoring.cluster_names WHERE analysis = '{analysis}' AND k = 4 "
                     "AND name = 'Split at four'").first()[0] == 1
    assert _get(f"{web['url']}/api/clusters/{analysis}?method=ward&k=1", headers)[0] == 400
