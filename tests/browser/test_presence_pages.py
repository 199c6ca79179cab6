""" "Who is here" on the chat pages, in Chromium: two users see each other, and one who leaves goes.

Each chat page is watched by one user while the other uses the next page in the list, so every
page is both the one showing the list and the one whose user comes and goes. The server is
this module's own, with a short presence TTL, SSE heartbeat and long-poll hold, so that a
page that closes (and stops polling, or leaves a stream for the heartbeat to find) is gone
within seconds.
"""

from __future__ import annotations

import pytest

from tests.browser.helpers import CHAT_PAGES, ms, wait_chat_ready, whoami
from tests.support.servers import Gunicorn

pytestmark = pytest.mark.browser

TTL = 2
ENV = {"SWITCHBOARD_PRESENCE_TTL": str(TTL), "SWITCHBOARD_SSE_HEARTBEAT": "1", "SWITCHBOARD_LONGPOLL_TIMEOUT": "3"}
# How long a closed page may still be listed: a long poll's hold, the TTL after it and the
# writer's quarter-TTL tick, with room to spare.
GONE_WITHIN = 3 + 1.25 * TTL + 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("presence-pages"), env=ENV) as running:
        yield running


def present(page) -> list[str]:
    """The names in the page's "who is here" list (its "(you)" mark left out)."""
    return page.eval_on_selector_all(
        "[data-presence-list] li:not(.problem)", "items => items.map(li => li.firstChild.textContent)"
    )


def wait_present(page, names: set[str], timeout: float = 15) -> None:
    page.wait_for_function(
        """(names) => {
            const shown = [...document.querySelectorAll('[data-presence-list] li:not(.problem)')]
                .map(li => li.firstChild.textContent);
            return shown.length === names.length && names.every(name => shown.includes(name));
        }""",
        arg=sorted(names),
        timeout=ms(timeout),
    )


@pytest.mark.parametrize("slug", CHAT_PAGES)
def test_two_users_see_each_other_and_one_leaving_disappears(slug, server, new_user, console_errors):
    other = CHAT_PAGES[(CHAT_PAGES.index(slug) + 1) % len(CHAT_PAGES)]
    alice, bob = new_user().new_page(), new_user().new_page()
    alice.goto(f"{server.url}/{slug}")
    wait_chat_ready(alice)
    bob.goto(f"{server.url}/{other}")
    wait_chat_ready(bob)
    names = {whoami(alice), whoami(bob)}
    assert len(names) == 2

    for page in (alice, bob):
        wait_present(page, names)
        mine = page.locator("[data-presence-list] li.mine")
        assert mine.count() == 1 and mine.first.evaluate("li => li.firstChild.textContent") == whoami(page)
        count = page.locator("[data-presence-count]").inner_text()
        assert count == "(2)", count
    assert alice.locator("li.message").count() == 0, "presence events are not chat messages"

    leaving = whoami(bob)
    bob.close()
    wait_present(alice, names - {leaving}, timeout=GONE_WITHIN)
    assert present(alice) == [whoami(alice)]
