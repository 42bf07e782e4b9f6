"""The web page end to end in real headless Chromium (Debian's ``chromium`` driven by Playwright)
against a live ``imgsearch serve`` subprocess and the 200 bundled samples indexed in a Milvus
Lite server, twice: with a query worker subprocess behind Redis, and embedded (no Redis: the
gateway answers through its in-process search service).

Expected results are computed in this process with :class:`query.search.SearchService`
over the same collection, never written down. Screenshots of every view go to
``$IMGSEARCH_E2E_ARTIFACTS`` (or a pytest temp dir); the directory is printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from query.search import SearchService
from tests.query.conftest import ROOT, settings_env
from tests.query.web_stack import ingest_job, running_worker
from tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
QUERY = "a photo of a sneaker"
WAIT_MS = 60_000


def chromium_path() -> str | None:
    for path in (os.environ.get("IMGSEARCH_CHROMIUM", ""), *CHROMIUM_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine (scripts/bootstrap.sh installs Debian's chromium with apt)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    where = os.environ.get("IMGSEARCH_E2E_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("web-e2e-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nweb e2e screenshots: {path}")
    return path


@contextlib.contextmanager
def serving(settings, log_path: Path):
    """A live ``imgsearch serve`` subprocess for ``settings``; yields its base URL once ready."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imgsearch", "serve"], cwd=ROOT, env=settings_env(settings),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    try:
        until = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < until, "gateway not ready:\n" + log_path.read_text()
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module", params=["queue", "embedded"])
def stack(request, served_samples, redis_server, tmp_path_factory):
    """``imgsearch serve`` on a free port, in front of a query worker through Redis ("queue")
    or answering in its own process with no Redis ("embedded"); yields (base URL, settings)."""
    logs = tmp_path_factory.mktemp(f"web-e2e-logs-{request.param}")
    if request.param == "embedded":
        settings = served_samples.with_overrides(query_timeout_ms=60_000, gateway_port=free_port())
        with serving(settings, logs / "serve.log") as base:
            yield base, settings
        return
    settings = served_samples.with_overrides(redis_url=redis_server.url, query_stream=f"e2e:{uuid.uuid4().hex[:8]}",
                                             query_timeout_ms=60_000, gateway_port=free_port())
    with running_worker(settings, logs), serving(settings, logs / "serve.log") as base:
        yield base, settings


@pytest.fixture(scope="module")
def service(stack):
    return SearchService(stack[1])


@pytest.fixture
def page(browser, stack):
    base, _settings = stack
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(WAIT_MS)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def first_hit_id(page) -> str:
    return page.get_attribute("#results li:first-child .hit", "data-id")


def wait_results_for(page, label_fragment: str) -> None:
    page.wait_for_function("f => !document.body.dataset.searching && "
                           "(document.querySelector('#query-info').textContent || '').includes(f)", arg=label_fragment)
    page.wait_for_selector("#results li .hit")


def wait_thumbnails(page) -> None:
    """Until every result's thumbnail has loaded (served by the gateway from the source)."""
    page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def test_text_search_then_more_like_this_by_click(page, service, artifacts):
    expected = service.search(text=QUERY, k=50)  # the same fused search the page asks for
    page.focus("body")
    page.keyboard.press("/")  # keyboard: "/" focuses the search box
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type(QUERY)
    page.keyboard.press("Enter")
    wait_results_for(page, QUERY)
    assert page.locator("#results > li").count() == len(expected)
    assert first_hit_id(page) == str(expected[0].id)
    assert float(page.inner_text("#results li:first-child .score")) == pytest.approx(expected[0].score, abs=2e-3)
    wait_thumbnails(page)
    page.screenshot(path=str(artifacts / "search.png"), full_page=True)

    like = service.search(like=expected[0].id, k=50)
    page.click("#results li:first-child .hit")
    wait_results_for(page, "images like")
    assert first_hit_id(page) == str(like[0].id)
    assert str(expected[0].id) not in [page.get_attribute(f"#results li:nth-child({i + 1}) .hit", "data-id")
                                       for i in range(5)]
    wait_thumbnails(page)
    page.screenshot(path=str(artifacts / "more-like-this.png"), full_page=True)


def test_upload_search(page, service, samples_dir, artifacts):
    query = sorted((samples_dir / "ankle-boot").glob("*.png"))[0]
    expected = service.search(image=query.read_bytes(), k=50)
    page.set_input_files("#upload", str(query))
    wait_results_for(page, query.name)
    assert first_hit_id(page) == str(expected[0].id)
    wait_thumbnails(page)
    page.screenshot(path=str(artifacts / "upload.png"), full_page=True)


def test_results_graph_renders_and_a_node_opens(page, service, artifacts):
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    wait_results_for(page, QUERY)
    page.click("#nav-graph")
    page.wait_for_selector("#graph-svg circle.node")
    assert page.locator("#graph-svg circle.node").count() == 50
    assert page.locator("#graph-svg line.edge").count() >= 50
    assert page.locator("#graph-legend span").count() >= 2
    top = str(service.search(text=QUERY, k=50)[0].id)
    node = page.locator(f"#graph-svg circle.node[data-id='{top}']")
    node.focus()
    page.keyboard.press("Enter")  # keyboard opens a node as well as a click does
    page.wait_for_selector("#detail:not([hidden])")
    assert top in page.inner_text("#detail-fields")
    page.screenshot(path=str(artifacts / "graph.png"), full_page=True)
    page.click("#detail-like")
    wait_results_for(page, "images like")
    assert first_hit_id(page) == str(service.search(like=int(top), k=50)[0].id)


def test_collection_map_renders_points_with_hover_previews(page, stack, artifacts):
    page.click("#nav-map")
    page.wait_for_selector("#map-svg circle.point")
    assert page.locator("#map-svg circle.point").count() == 200
    page.select_option("#colour-by", "folder")
    assert page.locator("#map-legend span").count() == 10  # the ten sample classes
    page.locator("#map-svg circle.point").last.hover()  # the last drawn is on top of any overlap
    page.wait_for_selector("#preview:not([hidden]) img")
    page.wait_for_function("() => document.querySelector('#preview img').naturalWidth > 0")
    page.screenshot(path=str(artifacts / "map.png"), full_page=True)


def test_job_view_shows_a_job_and_its_dead_letters(page, stack, artifacts):
    _base, settings = stack
    if settings.embedded:
        pytest.skip("Redis job records; the embedded server's own jobs: tests/imgsearch/test_serve_embedded.py")
    job_id = ingest_job(settings.redis_url, "s3://photos/2024/", listed=40, indexed=12,
                        failed_uris=["s3://photos/2024/broken.jpg", "s3://photos/2024/empty.jpg"])
    page.click("#nav-jobs")
    row = page.wait_for_selector(f"#jobs-table tr[data-job='{job_id}']")
    assert "running" in row.inner_text() and "14 / 40" in row.inner_text()
    row.query_selector("button").click()
    page.wait_for_selector("#dead-letters:not([hidden])")
    assert "s3://photos/2024/broken.jpg" in page.inner_text("#dead-letters")
    page.screenshot(path=str(artifacts / "jobs.png"), full_page=True)


def test_a_gateway_with_an_api_key_asks_for_it_once_and_then_works(browser, stack, service, tmp_path, artifacts):
    _base, settings = stack
    keyed = settings.with_overrides(gateway_api_key="page-key-123", gateway_port=free_port())
    with serving(keyed, tmp_path / "serve-keyed.log") as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(base + "/")
        page.wait_for_selector("#key-dialog[open]")  # the first /v1 call was refused with 401
        page.fill("#api-key", "page-key-123")
        page.press("#api-key", "Enter")
        page.wait_for_selector("#key-dialog", state="hidden")
        page.fill("#q", QUERY)
        page.press("#q", "Enter")
        wait_results_for(page, QUERY)
        assert first_hit_id(page) == str(service.search(text=QUERY, k=50)[0].id)
        wait_thumbnails(page)  # fetched with the key header, shown from blob: URLs
        assert page.get_attribute("#results li:first-child img", "src").startswith("blob:")
        page.screenshot(path=str(artifacts / "search-with-key.png"), full_page=False)
        context.close()


def test_filters_from_the_filter_editor_narrow_the_results(page, stack, samples_dir):
    prefix = (samples_dir / "bag").as_uri() + "/"
    page.click("#add-filter")
    page.select_option(".filter-row .f-field", "uri")
    page.select_option(".filter-row .f-op", "prefix")
    page.fill(".filter-row .f-value", prefix)
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    wait_results_for(page, QUERY)
    uris = page.eval_on_selector_all("#results .hit", "els => els.map(e => e.dataset.uri)")
    assert len(uris) == 20 and all(u.startswith(prefix) for u in uris)  # the 20 bags, though sneakers rank higher


def test_evidence_per_hit_is_rendered_when_a_worker_sends_it(page):
    """Fused multi-channel replies carry ``evidence: {channel: {rank, score, text?, kind?, coverage?}}`` per hit;
    the page's renderer is checked on that shape (the clip-only worker sends none yet)."""
    lines = page.evaluate("""() => [...renderEvidence({clip: {rank: 1, score: 0.5123},
                                                       bm25: {rank: 3, score: 7.25, text: "SUMMER SALE", kind: "ocr",
                                                              coverage: 0.5}})
                                     .querySelectorAll('li')].map(li => li.textContent)""")
    assert lines == ["clip · #1 · 0.512", "bm25 · #3 · 7.250 · 50% of the words — “SUMMER SALE” (ocr)"]
    assert page.evaluate("() => renderEvidence(undefined) === null && renderEvidence({}) === null")


def test_the_detail_panel_shows_what_the_index_holds_and_the_minimum_similarity_hides_hits(page, stack, artifacts):
    page.fill("#q", QUERY)
    page.press("#q", "Enter")
    wait_results_for(page, QUERY)
    shown = page.locator("#results > li").count()
    scores = page.eval_on_selector_all("#results .hit", "els => els.length")
    assert scores == shown
    page.fill("#min-score", "0.99")  # above every cosine of this model: nothing left
    page.wait_for_function("() => document.querySelectorAll('#results > li').length === 0")
    assert "below the minimum similarity hidden" in page.inner_text("#query-info")
    page.fill("#min-score", "")
    page.wait_for_function(f"() => document.querySelectorAll('#results > li').length === {shown}")

    top = first_hit_id(page)
    page.click("#results li:first-child .info")
    page.wait_for_selector(f"#detail[data-loaded='{top}']")
    assert "image/png" in page.inner_text("#detail-extra")
    assert page.locator("#detail .detail-tags li").count() >= 1  # CLIP tags of the caption stage
    assert page.locator("#detail .detail-near").count() == 1
    page.screenshot(path=str(artifacts / "detail.png"), full_page=False)


def test_upload_to_index_makes_the_image_searchable(page, stack, samples_dir, tmp_path):
    _base, settings = stack
    if not settings.embedded:
        pytest.skip("a distributed gateway stores uploads under IMGSEARCH_UPLOAD_URI (not set here)")
    picture = tmp_path / "new-boot.png"
    picture.write_bytes(sorted((samples_dir / "ankle-boot").glob("*.png"))[1].read_bytes())
    assert not page.is_hidden("#index-row")
    page.set_input_files("#index-upload", str(picture))
    page.wait_for_function("() => (document.querySelector('#index-info').textContent || '').includes('searchable now')")
    added = page.get_attribute("#index-info", "data-id")
    try:
        page.set_input_files("#upload", str(picture))
        wait_results_for(page, picture.name)
        ids = page.eval_on_selector_all("#results .hit", "els => els.slice(0, 3).map(e => e.dataset.id)")
        assert added in ids
    finally:  # the samples collection is shared with other modules: leave it as it was
        assert httpx.delete(f"{stack[0]}/v1/images/{added}", timeout=60).status_code == 200
