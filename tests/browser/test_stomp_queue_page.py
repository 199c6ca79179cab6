"""The work queue panels in Chromium, against the real server: the STOMP page's two consumers
(two stompjs sessions on /queue/jobs, client-individual, prefetch 1) and the compare page's
two /ws consumers.

Each job sent goes to exactly one consumer, the counters add up to what the lists show, a
NACKed job and a job held by a consumer that disconnects come back to the other consumer
marked redelivered with a higher delivery count, and both panels are all Korean in Korean.
Jobs are told apart by the page's batch (data-batch), so a job some other page left in the
shared queue cannot be mistaken for this test's.
"""

from __future__ import annotations

import pytest

from tests.browser.helpers import ms
from tests.browser.test_auth_demo import AUTH_ENV, REFUSALS_IN_CONSOLE, open_index, sign_in
from tests.browser.test_i18n import assert_no_english
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.browser

JOBS = "[data-consumer] li.job"


def open_stomp(page, base_url: str) -> None:
    page.goto(f"{base_url}/stomp")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-consumer]')].every(c => c.dataset.state === 'ready')",
        timeout=ms(15),
    )


def batch_of(page) -> str:
    """The batch of the jobs this page sent (its first job item's)."""
    return page.locator(JOBS).first.get_attribute("data-batch")


def send_jobs(page, n: int) -> None:
    page.fill("#queue-jobs", str(n))
    page.click("[data-queue-send]")
    page.wait_for_selector("[data-queue-status][data-kind=ok]", timeout=ms(10))


def jobs(page, batch: str) -> list[dict]:
    """This page's jobs of one batch, each with the consumer that got it and its attributes."""
    return page.evaluate(
        """(batch) => [...document.querySelectorAll('[data-consumer] li.job')]
            .filter(li => li.dataset.batch === batch)
            .map(li => ({consumer: li.closest('[data-consumer]').dataset.consumer, job: li.dataset.job,
                         state: li.dataset.state, redelivered: li.dataset.redelivered,
                         count: Number(li.dataset.deliveryCount), text: li.innerText}))""",
        batch,
    )


def wait_jobs(page, predicate: str, timeout: float = 10) -> None:
    """Wait until `predicate` (JS, over the list `jobs` of every job item) holds."""
    page.wait_for_function(
        f"""() => {{
            const jobs = [...document.querySelectorAll('[data-consumer] li.job')].map(li => ({{
                consumer: li.closest('[data-consumer]').dataset.consumer, job: li.dataset.job,
                state: li.dataset.state, redelivered: li.dataset.redelivered === 'true',
                count: Number(li.dataset.deliveryCount)}}));
            return {predicate};
        }}""",
        timeout=ms(timeout),
    )


def counter(page, consumer: str, key: str) -> int:
    return int(page.locator(f'[data-consumer="{consumer}"] [data-counter="{key}"]').inner_text())


def assert_counters_match_lists(page) -> None:
    for consumer in ("1", "2"):
        items = page.locator(f'[data-consumer="{consumer}"] li.job')
        assert counter(page, consumer, "received") == items.count(), consumer
        acked = page.locator(f'[data-consumer="{consumer}"] li.job[data-state="acked"]').count()
        assert counter(page, consumer, "acked") == acked, consumer
        redelivered = page.locator(f'[data-consumer="{consumer}"] li.job[data-redelivered="true"]').count()
        assert counter(page, consumer, "redelivered") == redelivered, consumer


def test_each_job_goes_to_one_consumer_and_a_nack_comes_back_redelivered(
    new_user, live_server, console_errors, screenshot
):
    page = new_user().new_page()
    open_stomp(page, live_server.url)

    # Auto-ack: six jobs, each to exactly one consumer, shared between the two (prefetch 1).
    page.check("[data-auto-ack]")
    send_jobs(page, 6)
    wait_jobs(page, "jobs.filter(j => j.state === 'acked').length >= 6")
    batch = batch_of(page)
    mine = jobs(page, batch)
    assert sorted(j["job"] for j in mine) == sorted(f"{batch}:{n}" for n in range(1, 7)), mine
    assert all(j["state"] == "acked" and j["count"] == 1 and j["redelivered"] == "false" for j in mine), mine
    by_consumer = {c: sum(j["consumer"] == c for j in mine) for c in ("1", "2")}
    assert by_consumer["1"] >= 1 and by_consumer["2"] >= 1, f"round robin over both consumers: {by_consumer}"
    assert by_consumer["1"] + by_consumer["2"] == 6
    assert_counters_match_lists(page)

    # By hand: one job, NACKed by the consumer that got it, comes back to the other one.
    page.uncheck("[data-auto-ack]")
    send_jobs(page, 1)
    held = page.locator(f'li.job[data-job="{batch}:7"]')
    held.wait_for(timeout=ms(10))
    first = held.evaluate("li => li.closest('[data-consumer]').dataset.consumer")
    other = "2" if first == "1" else "1"
    assert held.get_attribute("data-state") == "held" and held.get_attribute("data-delivery-count") == "1"
    held.locator("[data-action=nack]").click()
    back = page.locator(f'[data-consumer="{other}"] li.job[data-job="{batch}:7"]')
    back.wait_for(timeout=ms(10))
    assert back.get_attribute("data-redelivered") == "true"
    assert back.get_attribute("data-delivery-count") == "2"
    assert "redelivered:true" in back.inner_text() and "delivery-count:2" in back.inner_text()
    assert (
        page.locator(f'[data-consumer="{first}"] li.job[data-job="{batch}:7"]').get_attribute("data-state") == "nacked"
    )
    back.locator("[data-action=ack]").click()
    page.wait_for_selector(
        f'[data-consumer="{other}"] li.job[data-job="{batch}:7"][data-state="acked"]', timeout=ms(10)
    )
    screenshot(page, "stomp-queue-nack")

    # A consumer that disconnects while it holds a job: the job goes to the other one.
    send_jobs(page, 1)
    held = page.locator(f'li.job[data-job="{batch}:8"]')
    held.wait_for(timeout=ms(10))
    holder = held.evaluate("li => li.closest('[data-consumer]').dataset.consumer")
    other = "2" if holder == "1" else "1"
    page.click(f'[data-consumer="{holder}"] [data-consumer-toggle]')
    page.wait_for_selector(f'[data-consumer="{holder}"][data-state="off"]', timeout=ms(10))
    assert (
        page.locator(f'[data-consumer="{holder}"] li.job[data-job="{batch}:8"]').get_attribute("data-state")
        == "given-back"
    )
    back = page.locator(f'[data-consumer="{other}"] li.job[data-job="{batch}:8"]')
    back.wait_for(timeout=ms(10))
    assert back.get_attribute("data-redelivered") == "true" and back.get_attribute("data-delivery-count") == "2"
    back.locator("[data-action=ack]").click()
    page.click(f'[data-consumer="{holder}"] [data-consumer-toggle]')
    page.wait_for_selector(f'[data-consumer="{holder}"][data-state="ready"]', timeout=ms(15))

    # Every job of the batch was acknowledged exactly once; the counters say what the lists say.
    mine = jobs(page, batch)
    acked = sorted(j["job"] for j in mine if j["state"] == "acked")
    assert acked == sorted(f"{batch}:{n}" for n in range(1, 9)), mine
    assert_counters_match_lists(page)


def test_the_compare_page_shares_a_work_queue_between_two_consumers(new_user, live_server, console_errors):
    page = new_user().new_page()
    page.goto(f"{live_server.url}/compare")
    page.wait_for_selector("body[data-ready=true]", timeout=ms(15))
    page.fill("#queue-jobs", "10")
    page.click("[data-queue-send]")
    page.wait_for_selector("[data-queue-status][data-kind=ok]", timeout=ms(15))
    page.wait_for_function(
        """() => {
            const stat = (key) => Number(document.querySelector(`[data-queue-stat="${key}"]`).textContent);
            return stat('sent') === 10 && stat('1') + stat('2') === 10;
        }""",
        timeout=ms(10),
    )
    taken = [int(page.locator(f'[data-queue-stat="{n}"]').inner_text()) for n in ("1", "2")]
    assert all(n >= 1 for n in taken), f"both consumers took a share: {taken}"
    # The topic panes are untouched: the meter still counts only their two WebSockets.
    assert page.locator('.connections [data-conn="ws"]').inner_text() == "2"


def test_the_work_queue_panels_in_korean(new_user, live_server, console_errors):
    page = new_user(locale="ko-KR").new_page()
    open_stomp(page, live_server.url)
    send_jobs(page, 2)
    page.locator("li.job[data-state=held]").first.wait_for(timeout=ms(10))
    page.locator("li.job[data-state=held] [data-action=nack]").first.click()
    page.locator("li.job[data-redelivered=true]").first.wait_for(timeout=ms(10))
    assert_no_english(page, "/stomp with queue jobs held, refused and redelivered")
    page.check("[data-auto-ack]")  # settles every job held, so nothing is left in the queue
    page.wait_for_function("() => !document.querySelector('li.job[data-state=held]')", timeout=ms(10))

    page.goto(f"{live_server.url}/compare")
    page.wait_for_selector("body[data-ready=true]", timeout=ms(15))
    page.fill("#queue-jobs", "3")
    page.click("[data-queue-send]")
    page.wait_for_selector("[data-queue-status][data-kind=ok]", timeout=ms(15))
    assert_no_english(page, "/compare after sending jobs to the queue")


def test_with_access_control_anonymous_is_told_to_sign_in_and_alice_shares_the_queue(
    tmp_path, new_user, console_errors
):
    """As `make run-auth`: an anonymous visitor's consumers are refused (401, sign in) and do
    not retry; alice's demo token may consume and send on both demo queues."""
    console_errors.allow(*REFUSALS_IN_CONSOLE)
    with Gunicorn(tmp_path, env=AUTH_ENV) as server:
        context = new_user()
        page = context.new_page()
        page.goto(f"{server.url}/stomp")
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-consumer]')].every(c => c.dataset.state === 'refused')",
            timeout=ms(15),
        )
        for consumer in ("1", "2"):
            shown = page.locator(f'[data-consumer="{consumer}"] [data-consumer-status]').inner_text()
            assert "Refused with 401 (sign in)" in shown and "/queue/jobs" in shown, shown

        sign_in(open_index(context, server), "alice")
        open_stomp(page, server.url)
        page.check("[data-auto-ack]")
        send_jobs(page, 4)
        wait_jobs(page, "jobs.filter(j => j.state === 'acked').length >= 4")
        assert sorted(j["job"] for j in jobs(page, batch_of(page))) == sorted(
            f"{batch_of(page)}:{n}" for n in range(1, 5)
        )

        page.goto(f"{server.url}/compare")
        page.wait_for_selector("body[data-ready=true]", timeout=ms(15))
        page.fill("#queue-jobs", "4")
        page.click("[data-queue-send]")
        page.wait_for_selector("[data-queue-status][data-kind=ok]", timeout=ms(15))
        page.wait_for_function(
            """() => ['1', '2'].reduce((sum, n) =>
                sum + Number(document.querySelector(`[data-queue-stat="${n}"]`).textContent), 0) === 4""",
            timeout=ms(10),
        )
