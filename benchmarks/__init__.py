"""Performance benchmarks for finetune-strategies: ``python -m benchmarks.run --out results/``.

Not installed with the library and not part of the test suite (CI runs only ``--smoke``).
"""
