"""Fixtures of the op tests (helpers live in op_testing.py)."""

from op_testing import backend, dtype  # noqa: F401  (fixtures)
