"""pytest hooks: a reference-parity test may not skip (tests/conftest.py imports them).

Parity tests (`@pytest.mark.parity`) read the reference's outputs shipped in tests/fixtures,
so they run on every clone; a skip means a fixture or dependency is missing, and it is
reported as a failure (so `.ci/run` fails). Optional extra cases from the full sets in
../shared (`@pytest.mark.full_fixtures`) may skip where those are absent.
"""

import pytest

PARITY = "parity"
FULL_FIXTURES = "full_fixtures"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", f"{PARITY}: compares with the reference's outputs; must not skip")
  config.addinivalue_line(
      "markers", f"{FULL_FIXTURES}: optional extra cases from ../shared/fixtures (may skip)")


def _reason(report) -> str:
  if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
    return str(report.longrepr[2]).removeprefix("Skipped: ")
  return str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  """Turns the skip of a parity test (not an optional full-set case) into a failure."""
  del call
  report = yield
  if (report.skipped and not hasattr(report, "wasxfail")
      and item.get_closest_marker(PARITY) is not None
      and item.get_closest_marker(FULL_FIXTURES) is None):
    report.outcome = "failed"
    report.longrepr = (f"Parity test skipped ({_reason(report)}); parity tests read "
                       "tests/fixtures and must run on every clone.")
  return report
