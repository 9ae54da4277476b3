"""Hypothesis profiles. Locally the property tests draw new examples on every run, to keep
finding cases; CI (``.ci/run`` sets ``HYPOTHESIS_PROFILE=ci``) draws the same examples on
every run, seeded per test, so that a clean clone's result does not depend on luck and can
be reproduced before it lands."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
