"""RPCs that stay open for a long time while mostly idle (change feeds).

Per-call admission control (a cap on RPCs executing at once) must not count these: a
thousand idle watchers would otherwise hold every slot. Runtime layers that limit or
time calls look their method up here.
"""

from __future__ import annotations

from taskmanager.v1 import task_service_pb2

_TASK_SERVICE = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name

# Fully qualified methods ("/package.Service/Method"), as handler layers see them.
LONG_LIVED_METHODS = frozenset({f"/{_TASK_SERVICE}/WatchTasks"})
