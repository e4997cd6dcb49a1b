"""SQL shared by the bench's hand-written queries, matching what the service selects."""

from __future__ import annotations

# Every column of a task the BASIC view needs, in this order.
TASK_COLUMNS = (
    "id, project_id, title, description, status, priority, tags, assignee_id, "
    "parent_task_id, create_time, update_time, version, delete_time"
)
# Lists and streams hide soft-deleted tasks unless asked (migration 0003).
LIVE = "delete_time IS NULL"
