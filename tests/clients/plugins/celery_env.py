"""pytest plugin standing in for the repo-root conftest.py of celery's kombu and py-amqp.

Their sdists ship the tests but not the root conftest that defines the ``-E``
option and the ``env`` marker.  This re-creates both, the way upstream does:
a test marked ``@pytest.mark.env('NAME')`` runs only when ``-E NAME`` is given,
otherwise it is skipped.

It also adds ``--cap-reruns=N`` (default: env CAP_RERUNS, else unchanged):
the suites mark most tests ``@pytest.mark.flaky(reruns=5, reruns_delay=2)``
(pytest-rerunfailures), which against a broker that fails them costs 10+ s a
test.  With ``--cap-reruns=N`` every flaky marker is overridden to at most N
reruns with at most 1 s delay.  Load with ``-p celery_env``.
"""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("-E", action="append", metavar="NAME", help="only run tests matching the environment NAME.")
    parser.addoption(
        "--cap-reruns",
        type=int,
        default=int(os.environ["CAP_RERUNS"]) if os.environ.get("CAP_RERUNS") else None,
        help="override @pytest.mark.flaky reruns to at most N (and delay to at most 1 s)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "env(name): mark test to run only on named environment")


def pytest_collection_modifyitems(config, items):
    cap = config.getoption("--cap-reruns")
    if cap is None:
        return
    for item in items:
        mark = item.get_closest_marker("flaky")
        if mark is None:
            continue
        reruns = min(int(mark.kwargs.get("reruns", 1)), cap)
        delay = min(float(mark.kwargs.get("reruns_delay", 0)), 1.0)
        item.add_marker(pytest.mark.flaky(reruns=reruns, reruns_delay=delay), append=False)


def pytest_runtest_setup(item):
    envnames = [mark.args[0] for mark in item.iter_markers(name="env")]
    if envnames:
        chosen = item.config.getoption("-E") or []
        if not set(chosen) & set(envnames):
            pytest.skip(f"test requires env in {envnames!r}")
