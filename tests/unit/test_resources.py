from __future__ import annotations

import threading
import time

import pytest

from plugins.base import PluginError, StepContext
from plugins.resources import Listener, RunResources


class Closing:
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def close(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise OSError("broken pipe")


def test_resources_are_closed_newest_first_even_when_one_fails():
    log: list[str] = []
    resources = RunResources()
    resources.add("a", Closing(log, "a"))
    resources.add("b", Closing(log, "b", fail=True))
    resources.add("c", Closing(log, "c"))

    errors = resources.close_all()

    assert log == ["c", "b", "a"]
    assert errors == ["closing b: OSError: broken pipe"]
    assert resources.close_all() == []


def test_a_resource_name_is_used_once_and_a_missing_one_names_the_open_ones():
    log: list[str] = []
    resources = RunResources()
    resources.add("ws1", Closing(log, "ws1"))
    with pytest.raises(PluginError, match="already open"):
        resources.add("ws1", Closing(log, "second"))
    assert log == ["second"]  # the refused one is closed, not leaked
    with pytest.raises(PluginError, match=r"no resource named 'ws2' is open \(open: ws1\)"):
        resources.get("ws2", Closing)
    with pytest.raises(PluginError, match="is not a Listener"):
        resources.get("ws1", Listener)


def test_messages_delivered_before_the_wait_are_kept_and_handed_out_once():
    listener = Listener()
    for number in range(3):
        listener.deliver({"data": {"n": number, "kind": "odd" if number % 2 else "even"}})
    context = StepContext(run_id=1, step_name="await", timeout=1)

    even = listener.wait(count=2, match={"$.kind": "even"}, context=context)
    odd = listener.wait(count=1, match={}, context=context)

    assert [message["data"]["n"] for message in even] == [0, 2]
    assert [message["data"]["n"] for message in odd] == [1]


def test_a_wait_ends_at_the_deadline_saying_how_many_matched():
    listener = Listener()
    listener.deliver({"data": {"n": 1}})
    context = StepContext(run_id=1, step_name="await", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(PluginError, match=r"1 of 2 matching messages arrived in time") as caught:
        listener.wait(count=2, match={}, context=context)
    assert caught.value.retryable
    assert time.monotonic() - started < 1.5


def test_a_wait_returns_as_soon_as_a_message_arrives_and_stops_when_told():
    listener = Listener()
    context = StepContext(run_id=1, step_name="await", timeout=10)
    threading.Timer(0.05, listener.deliver, args=[{"data": {"ok": True}}]).start()
    assert listener.wait(count=1, match={"$.ok": True}, context=context)[0]["data"] == {"ok": True}

    stopped = StepContext(run_id=1, step_name="await", timeout=10)
    threading.Timer(0.05, stopped.stop.set).start()
    started = time.monotonic()
    with pytest.raises(PluginError):
        listener.wait(count=1, match={}, context=stopped)
    assert time.monotonic() - started < 2


def test_a_full_listener_counts_what_it_could_not_keep():
    listener = Listener(max_messages=2)
    for number in range(5):
        listener.deliver({"data": number})
    assert listener.dropped == 3
