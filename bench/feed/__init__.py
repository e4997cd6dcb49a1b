"""The change-feed bench: WatchTasks delivery latency, CPU per event, idle-watcher memory."""
