"""Run ``unittest`` discovery and write per-test outcomes as JSON.

    python unittest_json_runner.py --json OUT.json [--per-test-timeout S] [discover args...]

e.g. ``... --json r.json discover tests`` (the arguments after the options are
those of ``python -m unittest``'s discover: start dir, pattern, top dir).
Prints the usual unittest text output; exits 0 when all passed.  Each test
gets a wall-clock limit (SIGALRM in the main thread): a test that exceeds it
is reported as an error and the run goes on.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import unittest


class PerTestTimeout(Exception):
    pass


class JsonResult(unittest.TextTestResult):
    per_test_timeout = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[dict] = []
        self._t0 = 0.0

    def _record(self, test, outcome, detail=""):
        self.records.append(
            {
                "id": test.id(),
                "outcome": outcome,
                "time": round(time.monotonic() - self._t0, 3) if self._t0 else 0.0,
                "detail": detail[-4000:],
            }
        )

    def startTest(self, test):
        self._t0 = time.monotonic()
        if self.per_test_timeout:
            signal.setitimer(signal.ITIMER_REAL, self.per_test_timeout)
        super().startTest(test)

    def stopTest(self, test):
        if self.per_test_timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass/tearDownModule failures arrive as _ErrorHolder "tests".
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "passed", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", "unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "failed" if issubclass(err[0], test.failureException) else "error"
            self._record(subtest, outcome, self._exc_info_to_string(err, test))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--per-test-timeout", type=float, default=0.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)

    def on_alarm(signum, frame):
        raise PerTestTimeout(f"test exceeded {args.per_test_timeout}s")

    if args.per_test_timeout:
        signal.signal(signal.SIGALRM, on_alarm)
    JsonResult.per_test_timeout = args.per_test_timeout

    rest = args.rest or ["discover"]
    if rest[0] != "discover":
        ap.error("only 'discover' is supported")
    start, pattern, top = (rest[1:] + [".", "test*.py", None][len(rest) - 1:])[:3]
    suite = unittest.defaultTestLoader.discover(start, pattern=pattern, top_level_dir=top)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2 if args.verbose else 1,
                                     resultclass=JsonResult)
    t0 = time.monotonic()
    result = runner.run(suite)
    # Import errors during discovery run as failing _FailedTest cases: already recorded.
    with open(args.json, "w") as fh:
        json.dump(
            {
                "tests_run": result.testsRun,
                "duration": round(time.monotonic() - t0, 3),
                "records": result.records,
            },
            fh,
            indent=1,
        )
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
