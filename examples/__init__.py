"""Example model and local AWS emulator set-up for `make run`, the tests and the benchmarks."""
