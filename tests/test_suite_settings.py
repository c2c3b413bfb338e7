"""Settings the whole suite runs under (they live in the root conftest.py, their one home)."""
import os

from hypothesis import settings


def test_hypothesis_profile_has_no_deadline_in_any_test_directory():
    # A deadline turns a process descheduled for a few hundred milliseconds on a busy machine into
    # a FlakyFailure of a correct test. Loading a profile is global, so a second place that loads
    # one (a helper module imported during collection) would bring it back for the whole session.
    expected = os.environ.get("RECIS_HYPOTHESIS_PROFILE") or "recis"
    assert settings.get_current_profile_name() == expected
    assert settings.default.deadline is None
    assert settings.default.derandomize == (expected == "ci")
