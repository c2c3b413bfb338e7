"""Settings shared by every test directory (tests/, the plugins' tests, the doctests).

Hypothesis: one profile for the whole suite. No example has a deadline: the suite runs on busy
CI machines where a process can be descheduled for a few hundred milliseconds, and a deadline
turns that into a FlakyFailure of a correct test ("Unreliable test timings"). Slow code is caught
by the benchmarks, never by a test's clock. CI (`.ci/run` sets RECIS_HYPOTHESIS_PROFILE=ci) also
draws the same examples on every clean clone; local runs keep exploring new random examples.
"""
import os

from hypothesis import settings

settings.register_profile("recis", deadline=None, print_blob=True)
settings.register_profile("ci", parent=settings.get_profile("recis"), derandomize=True)
settings.load_profile(os.environ.get("RECIS_HYPOTHESIS_PROFILE") or "recis")
