"""A pytest plugin (-p tests.schema_capture) that writes every document parse_policy accepted to $VIFGATE_CAPTURE.

tests/test_configschema.py runs the config tests under it, then checks the JSON Schema accepts each one.
"""

from __future__ import annotations

import json
import os

from chalicelib import config

_CAPTURE = os.environ["VIFGATE_CAPTURE"]  # read now: the tests' fixtures clear VIFGATE_* variables
_original = config._validate
_seen: set[str] = set()


def _recording(document, source):
    policy = _original(document, source)
    try:
        text = json.dumps(document, sort_keys=True)
    except (TypeError, ValueError):  # YAML-only values (dates, sets): a JSON upload cannot hold them anyway
        return policy
    if text not in _seen:
        _seen.add(text)
        with open(_CAPTURE, "a", encoding="utf-8") as out:
            out.write(text + "\n")
    return policy


config._validate = _recording
