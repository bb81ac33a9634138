"""The console in a real Chromium against a real ``serve``, with events published by the real
``trubrics`` Python SDK: sign-in, the live view, filters, the thread and user pages, and
that nothing from an event ever runs as HTML."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect
from trubrics import Trubrics

from support.browser import Watched, console_token, launched, signed_in, watched_page
from support.engines import EngineError, PostgresServer
from support.node import Node
from support.waiting import wait_until

APPEARS_WITHIN_MS = 2_000
XSS = '<img src=x onerror="window.__xss = 1">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched() as launched_browser:
        yield launched_browser


@pytest.fixture
def watch(browser: Browser) -> Iterator[Callable[[Node], Watched]]:
    """Sign in to a node's console; every page opened so must end clean (no error in the
    browser, no request to another origin)."""
    opened: list[Watched] = []

    def sign_in(node: Node) -> Watched:
        opened.append(signed_in(browser, node))
        return opened[-1]

    yield sign_in
    for watched in opened:
        watched.assert_clean()
        watched.page.context.close()


def sdk(node: Node) -> Trubrics:
    return Trubrics(api_key=node.key, host=node.url)


def test_sign_in_takes_the_token_out_of_the_address_bar(browser: Browser, node: Node) -> None:
    watched = watched_page(browser, node.url)
    page = watched.page
    page.goto(f"{node.url}/console?token={console_token(node)}")
    assert page.url == f"{node.url}/console"
    expect(page.locator("#state")).to_have_text("live")
    (cookie,) = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert "token" not in page.evaluate("document.cookie + location.href")
    watched.assert_clean()


def test_without_a_session_the_pages_show_the_sign_in_form_and_no_data(
    browser: Browser, node: Node
) -> None:
    watched = watched_page(browser, node.url)
    page = watched.page
    for path in ("/console", "/console/overview", "/console/threads/t?project=p"):
        page.goto(node.url + path)
        assert page.url == f"{node.url}/console"
        expect(page.locator("input[name=token]")).to_be_visible()
        assert page.locator("table, #rows, #conversation").count() == 0
    page.fill("input[name=token]", node.key)  # a project key is write-only: no console
    page.click("button[type=submit]")
    expect(page.locator("#message")).to_contain_text("not a valid console token")
    page.fill("input[name=token]", console_token(node))
    page.click("button[type=submit]")
    expect(page.locator("#state")).to_have_text("live")
    assert page.url == f"{node.url}/console"
    # 401s of the sign-in are answered as such: the browser says so in its console
    watched.errors = [e for e in watched.errors if "401" not in e]
    watched.assert_clean()


@pytest.mark.parametrize(
    "path",
    [
        "/console/api/live",
        "/console/api/overview",
        "/console/api/threads/t?project=test-project",
        "/console/api/users/u?project=test-project",
    ],
)
def test_without_a_session_no_data_nor_stream_is_served(node: Node, path: str) -> None:
    forged = {"cookie": "trubrics_console=forged"}
    for headers in ({}, forged):
        response = requests.get(node.url + path, headers=headers, timeout=10, stream=True)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"


def test_events_from_the_python_sdk_appear_within_2_s_without_a_reload(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    client = sdk(node)
    client.track(user_id="ada", event="Sign up", properties={"plan": "pro"})
    client.track_llm(
        user_id="ada", prompt="Hi?", generation="Hello!", assistant_id="gpt-4o", latency=0.5
    )
    client.close()  # returns once the node acknowledged both batches
    acknowledged = time.monotonic()
    rows = page.locator("#rows tr.event")
    expect(rows).to_have_count(3, timeout=APPEARS_WITHIN_MS)
    assert time.monotonic() - acknowledged < APPEARS_WITHIN_MS / 1000
    newest_first = [rows.nth(i).locator("td").nth(2).inner_text() for i in range(3)]
    assert newest_first == ["Generation", "Prompt", "Sign up"]
    first = rows.nth(2).locator("td")
    assert [first.nth(i).inner_text() for i in (1, 3, 5)] == ["test-project", "ada", "event"]
    assert page.url == f"{node.url}/console"  # no reload, no navigation


def test_a_refused_batch_appears_with_its_status_and_reason(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    assert node.post("/publish_events", [{"user_id": "u"}]).status_code == 422
    assert node.post("/publish_events", [], key="trb_not-a-key-of-this-node").status_code == 401
    refused = page.locator("#rows tr.refused")
    expect(refused).to_have_count(2, timeout=APPEARS_WITHIN_MS)
    expect(refused.nth(1)).to_contain_text("refused 422 invalid")
    expect(refused.nth(1)).to_contain_text("Field required")
    expect(refused.nth(0)).to_contain_text("refused 401 unauthorized")
    assert "trb_not-a-key" not in page.content()


def test_filters_by_project_event_user_and_thread_and_pause(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    page.fill("input[name=user]", "grace")
    page.fill("input[name=event]", "Clicked")
    page.fill("input[name=project]", "test-project")
    page.click("#filters button[type=submit]")
    expect(page.locator("#state")).to_have_text("live")
    page.click("#pause")
    client = sdk(node)
    for user, event in (("ada", "Clicked"), ("grace", "Viewed"), ("grace", "Clicked")):
        client.track(user_id=user, event=event, properties={"$thread_id": f"{user}-1"})
    client.close()
    rows = page.locator("#rows tr")
    expect(page.locator("#state")).to_have_text("paused: 1 new events waiting")
    assert rows.count() == 0
    page.click("#pause")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("grace")
    page.fill("input[name=user]", "")
    page.fill("input[name=event]", "")
    page.fill("input[name=thread]", "ada-1")
    page.click("#filters button[type=submit]")
    expect(page.locator("#state")).to_have_text("live")
    client = sdk(node)
    client.track(user_id="ada", event="Left", properties={"$thread_id": "ada-1"})
    client.track(user_id="ada", event="Elsewhere", properties={"$thread_id": "ada-2"})
    client.close()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Left")


def publish_thread(node: Node, thread: str) -> None:
    """Two turns and an event between them, in one thread; one event of another thread."""
    client = sdk(node)
    turns = (("What is 2+2?", "4.", "gpt-4o", 1.5, 10), ("And 3+3?", "6.", "claude", 0.25, 20))
    for n, (prompt, generation, model, latency, second) in enumerate(turns):
        client.track_llm(
            user_id="ada",
            prompt=prompt,
            generation=generation,
            assistant_id=model,
            latency=latency,
            thread_id=thread,
            timestamp=_at(second),
        )
        if n == 0:
            client.track(
                user_id="ada",
                event="Copied answer",
                properties={"$thread_id": thread},
                timestamp=_at(11),
            )
    client.track(user_id="ada", event="Other thread", properties={"$thread_id": "other"})
    client.close()


def _at(second: int) -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 12, 1, 12, 0, second, tzinfo=UTC)


def thread_texts(page: Page) -> list[str]:
    parts = page.locator("#conversation > *")
    expect(parts).not_to_have_count(0)
    return [" | ".join(parts.nth(i).inner_text().split("\n")) for i in range(parts.count())]


def test_the_thread_view_shows_the_conversation_in_order(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    publish_thread(node, "thread-42")
    page.goto(f"{node.url}/console/threads/thread-42?project={node.project}")
    texts = thread_texts(page)
    assert len(texts) == 3, texts
    first, between, second = texts
    assert "What is 2+2?" in first and "4." in first and "gpt-4o" in first and "1.5 s" in first
    assert first.index("What is 2+2?") < first.index("4.")
    assert "Copied answer" in between
    assert "And 3+3?" in second and "6." in second and "claude" in second and "0.25 s" in second
    expect(page.locator("#source")).to_contain_text("this node's store")
    expect(page.locator("#source")).to_contain_text("newest 2,000 batches")
    page.click("#conversation a:text('ada') >> nth=0")
    expect(page.locator("#title")).to_have_text("ada")
    timeline = page.locator("#rows tr")
    expect(timeline).to_have_count(6)  # newest first: the other thread's event on top
    expect(timeline.first).to_contain_text("Other thread")


def test_event_texts_are_never_run_as_html(watch: Callable[[Node], Watched], node: Node) -> None:
    page = watch(node).page
    client = sdk(node)
    client.track(user_id=XSS, event=XSS, properties={"$thread_id": XSS, "$text": XSS})
    client.close()
    rows = page.locator("#rows tr.event")
    expect(rows).to_have_count(1, timeout=APPEARS_WITHIN_MS)
    expect(rows.first.locator("td").nth(2)).to_have_text(XSS)
    rows.first.locator("td").nth(4).locator("a").click()  # the thread page of that id
    expect(page.locator("#title")).to_have_text(XSS)
    expect(page.locator("#conversation")).to_contain_text(XSS)
    page.locator("#conversation a").first.click()  # the user page
    expect(page.locator("#rows tr").first).to_contain_text(XSS)
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img").count() == 0


def test_the_overview_shows_the_chart_refusals_backlog_and_keys(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    client = sdk(node)
    client.track(user_id="ada", event="Sign up")
    client.close()
    assert node.post("/publish_events", [{"user_id": 1}]).status_code == 422
    page.click("#nav-overview")
    expect(page.locator("#legend")).to_contain_text("test-project · event")
    assert page.locator("#chart svg polyline").count() == 1
    expect(page.locator("#refusals")).to_contain_text("invalid")
    expect(page.locator("#forwarding")).to_contain_text("no engine configured")
    keys = page.locator("#keys tr")
    expect(keys).to_have_count(1)
    expect(keys.first).to_contain_text("test-project")
    expect(keys.first).to_contain_text("active")
    assert "-" not in keys.first.locator("td").nth(5).inner_text()[:1]  # last used: a time


def test_sign_out_needs_the_csrf_token_and_ends_the_session(
    watch: Callable[[Node], Watched], node: Node
) -> None:
    page = watch(node).page
    cookie = page.context.cookies()[0]["value"]
    jar = {"cookie": f"trubrics_console={cookie}", "origin": node.url}
    forged = requests.post(node.url + "/console/sign-out", headers=jar, timeout=10)
    assert forged.status_code == 403
    page.click("header button:text('Sign out')")
    expect(page.locator("input[name=token]")).to_be_visible()
    after = requests.get(node.url + "/console/api/overview", headers=jar, timeout=10)
    assert after.status_code == 401


def test_the_thread_page_reads_from_postgresql_when_the_node_forwards_there(
    browser: Browser, make_node: Any, postgres: PostgresServer
) -> None:
    node: Node = make_node(env={"TRUBRICS_FORWARD_TO": postgres.url})
    publish_thread(node, "thread-pg")
    count = "SELECT count(*) FROM events WHERE thread_id = 'thread-pg'"

    def forwarded() -> bool:
        try:
            return postgres.psql(count).strip() == "5"
        except EngineError:  # no events table yet: the forwarder creates it
            return False

    wait_until(forwarded, poll_s=0.2, what="the thread forwarded to PostgreSQL")
    watched = signed_in(browser, node)
    page = watched.page
    page.goto(f"{node.url}/console/threads/thread-pg?project={node.project}")
    assert len(thread_texts(page)) == 3
    expect(page.locator("#source")).to_contain_text("engine postgresql://")
    page.click("#nav-overview")
    expect(page.locator("#forwarding")).to_contain_text("postgresql://")
    watched.assert_clean()
