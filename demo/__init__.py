"""The demo web, the built-in benchmark sets and fixtures shared by tests and benchmarks."""
