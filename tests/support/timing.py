"""One time unit for every test, scaled by SWITCHBOARD_TEST_TIME_SCALE (default 1).

A loaded 2-core CI machine can set the scale above 1 to stretch every bound at once.
"""

import os
import time

SCALE = float(os.environ.get("SWITCHBOARD_TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    """``seconds`` stretched by the time scale."""
    return seconds * SCALE


def wait_until(predicate, timeout: float, interval: float = 0.02, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` (scaled).

    For conditions that have no event to wait on (an external process's state).
    """
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f}s waiting for {message}")
        time.sleep(interval)
