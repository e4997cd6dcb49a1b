"""Which asyncio event loop serves: uvloop where installed (faster I/O), else asyncio's."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from service.settings import Settings

Result = TypeVar("Result")
log = logging.getLogger(__name__)


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when chosen or (auto) installed; None means asyncio's default."""
    wanted = settings.event_loop
    if wanted == "asyncio" or (wanted == "auto" and importlib.util.find_spec("uvloop") is None):
        return None
    import uvloop  # an optional dependency: `pip install taskservice[speed]`

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(settings: Settings, main: Coroutine[Any, Any, Result]) -> Result:
    """Run `main` to completion on the configured event loop."""
    factory = loop_factory(settings)
    log.debug("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
