"""TaskService benchmarks: a shared core, one package per benchmark (`python -m bench --help`)."""
