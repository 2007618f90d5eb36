"""Benchmarks of the engine: throughput per phase (``throughput.py``) and accuracy on Fashion-MNIST IDN
(``fmnist_idn.py``). Both are scripts (``python benchmarks/<name>.py --help``) with a ``--quick`` mode that
``tests/test_benchmarks.py`` runs; results go under ``benchmarks/results/``."""
