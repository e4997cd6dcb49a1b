"""The serving event loop: uvloop when installed (auto) or asked for, asyncio when asked."""

from __future__ import annotations

import asyncio

import pytest

from service.runtime.event_loop import loop_factory, run
from service.settings import Settings


def test_asyncio_when_asked() -> None:
    assert loop_factory(Settings(event_loop="asyncio")) is None


def test_uvloop_when_installed_and_auto() -> None:
    uvloop = pytest.importorskip("uvloop")  # an optional dependency (the speed extra)
    assert loop_factory(Settings(event_loop="auto")) is uvloop.new_event_loop


def test_run_drives_a_coroutine_on_the_chosen_loop() -> None:
    async def loop_name() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(Settings(event_loop="asyncio"), loop_name()).startswith("asyncio")
