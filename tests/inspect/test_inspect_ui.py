"""`clipflow inspect` in headless Chromium, serving the session's small pipeline run: the
funnel and each rule's gallery, duplicate clusters, decontamination pairs, search with the
trained model, the evaluation pages, hostile captions and path traversal."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import duckdb
import pytest

from tests.inspect.conftest import HOSTILE_CAPTIONS, HOSTILE_PAGE_URL, SCREENSHOTS, Served, Ui

BROKEN_IMAGES = """() => Array.from(document.images)
    .filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src)"""


ALL_IMAGES_DONE = "() => Array.from(document.images).every(img => img.complete)"


def _load(ui: Ui, url: str) -> None:
    ui.page.goto(url, wait_until="networkidle")
    # loading="lazy" images below the fold load only when scrolled to; the load state is
    # already "networkidle" by then, so wait for every image to finish, loaded or failed.
    ui.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    ui.page.wait_for_function(ALL_IMAGES_DONE, timeout=60_000)


def _images(ui: Ui, selector: str = "img") -> int:
    """How many images match ``selector``; fails if any image on the page did not load."""
    assert ui.page.evaluate(BROKEN_IMAGES) == []
    return ui.page.locator(selector).count()


def _first_reasons(served: Served) -> dict[str, int]:
    samples = served.storage.uri("curate", "samples.parquet")
    rows = duckdb.execute(
        "SELECT reasons[1], count(*) FROM read_parquet($p) WHERE NOT keep GROUP BY 1",
        {"p": samples},
    ).fetchall()
    return {reason: n for reason, n in rows}


def test_funnel_links_every_rule_to_a_gallery_of_its_dropped_samples(served: Served, ui: Ui):
    expected = _first_reasons(served)
    _load(ui, served.url + "/")
    ui.page.screenshot(path=str(SCREENSHOTS / "funnel.png"), full_page=True)
    links = ui.page.locator("a.rule-link")
    shown = {links.nth(i).get_attribute("data-rule"): int(links.nth(i).inner_text())
             for i in range(links.count())}  # fmt: skip
    assert shown == expected
    with_images = 0
    for rule, count in expected.items():
        _load(ui, served.url + "/")
        ui.page.locator(f'a.rule-link[data-rule="{rule}"]').click()
        ui.page.wait_for_load_state("networkidle")
        ui.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        ui.page.wait_for_load_state("networkidle")
        assert ui.page.locator("h2").inner_text() == f"dropped: {rule}"
        cards = ui.page.locator(".card")
        assert cards.count() == min(count, served.cfg.inspect.page_size)
        with_images += _images(ui, ".card img") > 0
        if rule == "eval_contamination":
            ui.page.screenshot(path=str(SCREENSHOTS / "rule.png"), full_page=True)
    assert with_images >= 2, "most rules drop downloaded images, which the gallery shows"


def test_kept_samples_filter_with_bound_parameters(served: Served, ui: Ui):
    _load(ui, served.url + "/kept?caption=%27%3B+DROP+TABLE+samples%3B+--")
    assert ui.page.locator(".card").count() == 0  # a caption, matched as text: nothing
    _load(ui, served.url + "/kept?caption=bag&language=en")
    cards = ui.page.locator(".card .caption")
    assert cards.count() > 0
    assert all("bag" in cards.nth(i).inner_text().lower() for i in range(cards.count()))
    # Each card shows what the language rule judged: the allowed languages' probability.
    assert "allowed language" in ui.page.locator(".card .muted").first.inner_text()
    _images(ui)
    ui.page.screenshot(path=str(SCREENSHOTS / "kept.png"), full_page=True)


def test_duplicate_cluster_shows_the_kept_and_the_dropped_image(served: Served, ui: Ui):
    _load(ui, served.url + "/duplicates")
    ui.page.screenshot(path=str(SCREENSHOTS / "duplicates.png"), full_page=True)
    ui.page.locator("a.cluster-link").first.click()
    ui.page.wait_for_load_state("networkidle")
    assert _images(ui, "#cluster img") >= 2
    assert ui.page.locator("#cluster .distance", has_text="kept (survivor)").count() == 1
    assert ui.page.locator("#cluster .distance", has_text="bits").count() >= 1
    assert ui.page.locator("#cluster .similarity").count() >= 1  # the matcher's, recomputed
    ui.page.screenshot(path=str(SCREENSHOTS / "cluster.png"), full_page=True)


def test_decontamination_shows_the_training_image_beside_the_evaluation_image(served, ui):
    _load(ui, served.url + "/decontamination")
    pairs = ui.page.locator(".pair")
    assert pairs.count() > 0
    assert _images(ui, ".pair img") == 2 * pairs.count()
    ui.page.screenshot(path=str(SCREENSHOTS / "decontamination.png"), full_page=True)


def test_captions_with_html_and_script_render_as_text(served: Served, ui: Ui):
    for key in served.hostile_keys:
        _load(ui, f"{served.url}/sample/{key}")
    _load(ui, served.url + "/kept")
    for caption in HOSTILE_CAPTIONS:
        assert ui.page.get_by_text(caption, exact=True).count() == 1
    assert ui.page.locator(f'a[href="{HOSTILE_PAGE_URL}"]').count() == 0
    assert ui.page.get_by_text(HOSTILE_PAGE_URL).count() == 2  # shown, not linked
    assert ui.page.locator("main script").count() == 0
    assert ui.dialogs == []


@pytest.mark.parametrize(
    "path",
    [
        "/files/../_manifests/curate.json",
        "/files/%2e%2e/_manifests/curate.json",
        "/files/%2E%2E%2F_manifests%2Fcurate.json",
        "/files/%252e%252e%252f_manifests/curate.json",
        "/files/curate/report/../../_manifests/curate.json",
        "/files/curate/report/..%2f..%2f_manifests%2fcurate.json",
        "/files/eval/..%5c..%5c_manifests%5ccurate.json",
        "/files/curate/report/data_docs/../../../../../etc/passwd",
        "/files//etc/passwd",
        "/files/curate/samples.parquet",
    ],
)
def test_paths_outside_the_report_folders_are_refused(served: Served, path: str):
    # http.client sends the path as written (a browser or httpx would normalise ../ away).
    parts = urlsplit(served.url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    con.request("GET", path)
    response = con.getresponse()
    body = response.read()
    assert response.status in (403, 404), (path, response.status)
    assert b"config_hash" not in body and b"root:" not in body


def test_data_docs_are_served_over_http(served: Served, ui: Ui):
    _load(ui, served.url + "/")
    ui.page.get_by_text("great-expectations Data Docs").click()
    ui.page.wait_for_load_state("networkidle")
    assert ui.page.url.startswith(served.url + "/files/curate/report/data_docs/")
    assert "Expectation" in ui.page.content() or "Validation" in ui.page.content()


def test_search_by_text_then_by_image(served: Served, ui: Ui):
    """The mechanics on the small run's model (its precision is measured on the demo run:
    bench/search_precision.py)."""
    _load(ui, served.url + "/search?q=pair+of+sneakers")
    hits = ui.page.locator("#hits .card")
    assert hits.count() == served.cfg.inspect.search_results
    assert _images(ui, "#hits img") == hits.count()
    ui.page.screenshot(path=str(SCREENSHOTS / "search.png"), full_page=True)
    first = hits.first.get_attribute("data-key")
    hits.first.get_by_text("more like this").click()
    ui.page.wait_for_load_state("networkidle")
    assert ui.page.locator("#hits .card").first.get_attribute("data-key") == first


def test_evaluation_page_shows_per_class_accuracy_confusion_and_examples(served, ui):
    _load(ui, served.url + "/eval/fashion_mnist")
    assert ui.page.locator("#per-class tr").count() == 1 + 10
    assert _images(ui, "#confusion") == 1
    assert _images(ui, ".card img") > 0  # the most confused test images
    ui.page.screenshot(path=str(SCREENSHOTS / "evaluation.png"), full_page=True)
