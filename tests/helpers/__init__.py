"""Shared test helpers (imported as ``helpers.<module>``; ``tests/`` is on ``sys.path`` through ``tests/conftest.py``).

- ``bad_inputs``: tiny synthetic volumes, a tiny bundle, broken-file makers and CLI capture for the bad-input tests;
- ``bundles``: the bundle list, smoke-size overrides and a ``python -m monai.bundle run`` helper;
- ``benchmarks``: loading a ``benchmarks/<name>.py`` script as a module;
- ``commands``: argv builders for ``medseg infer`` / ``evaluate`` / ``benchmark``;
- ``data``: small synthetic datasets in each supported layout;
- ``infer``: inference fixtures;
- ``swin3d`` / ``unetrpp``: reference implementations and small networks for the network tests.
"""
