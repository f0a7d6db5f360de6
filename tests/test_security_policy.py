"""SECURITY.md names, for each attack, the tests that try it: every test it
names exists (a renamed or deleted test would leave a defence unproven)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(test_[a-z0-9_]+\.py)(?:::(test_[A-Za-z0-9_]+))?")


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    found = REFERENCE.findall(text)
    assert len(found) >= 20  # the table is there and was read
    missing = []
    for module, test in found:
        path = ROOT / "tests" / module
        if not path.is_file():
            missing.append(module)
        elif test and not re.search(rf"^(async )?def {test}\(", path.read_text(), re.M):
            missing.append(f"{module}::{test}")
    assert missing == []
