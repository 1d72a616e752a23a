"""The API's nesting check on raw request bytes (before any JSON parser recurses)."""

from __future__ import annotations

import pytest

from net_manager.api import json_depth


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),  # brackets inside strings do not count
        (b'{"a": "\\"[[[["}', 1),  # nor after an escaped quote
        (b'{"a": "\\\\", "b": [[]]}', 3),  # an escaped backslash ends before the quote
        (b"", 0),
        (b"[" * 10_000, 33),  # counting stops just past the limit
    ],
)
def test_json_depth(data, depth):
    assert json_depth(data, 32) == depth
