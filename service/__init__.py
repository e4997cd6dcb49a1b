"""TaskService: a grpc.aio task-tracking service over SQLModel."""
