"""Tools outside the runtime: benchmarks, the open-loop load generator, the bank test with faults
(`keel chaos`) and the process helpers the end-to-end tests share.

Installed with the optional extra `pip install -e .[tools]`, which brings their own dependencies.
They compose the runtime as a user would (keel.bootstrap, `keel serve` subprocesses); the runtime
(domain, application, infrastructure, api, fraud, keel) must never import this package — its
commands reach `keel` through the `keel.commands` entry points (keel_tools/commands.py).
"""
