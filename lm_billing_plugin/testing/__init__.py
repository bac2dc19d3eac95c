"""Test and demo infrastructure: the hosting-server simulator and the benchmark.
Never imported by the plugin at run time."""
