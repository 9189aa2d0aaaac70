"""The metadata nesting limit: counted without recursion, equal to the recursive definition."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import ValidationFailed
from domain.limits import METADATA_DEPTH_MAX, _depth, check_metadata

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40,
)


def recursive_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((recursive_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((recursive_depth(v) for v in value), default=0)
    return 0


@given(json_values)
def test_depth_matches_the_recursive_definition(value: Any) -> None:
    assert _depth(value) == recursive_depth(value) or (
        recursive_depth(value) > METADATA_DEPTH_MAX and _depth(value) > METADATA_DEPTH_MAX
    )


def test_hostile_depth_is_refused_without_recursion() -> None:
    deep: Any = {}
    for _ in range(100_000):  # far past Python's recursion limit
        deep = {"a": [deep]}
    with pytest.raises(ValidationFailed):
        check_metadata(deep)
