"""TEST-ONLY ADAPTER: why each upstream test has the outcome it has here (read by run.py).

A failure that raised the shim's ``UpstreamInternal`` is classified from its message alone; every
other outcome that is not a pass needs an entry in REASONS (fnmatch patterns on the test id).
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Tuple

CATEGORIES = ["pass", "internal", "difference", "pending AutoLoader", "bug", "skip", "unclassified", "regression"]

# pattern on "file.py::test" -> (status, reason); first match wins.
REASONS: Dict[str, Tuple[str, str]] = {
}


def classify(row: dict) -> Tuple[str, str]:
    outcome, message, test = row["outcome"], row["message"], row["test"]
    for pattern, (status, reason) in REASONS.items():
        if fnmatch.fnmatchcase(test, pattern):
            if outcome == "passed" and status != "pass":
                return "regression" if False else "unclassified", f"passes now; was {status}: {reason}"
            if outcome != "passed" and status == "pass":
                return "regression", f"{outcome}: {message}"
            return status, reason
    if outcome == "passed":
        return "pass", ""
    if outcome == "skipped":
        return "skip", message
    marker = "upstream internal: "
    if marker in message:
        return "internal", message[message.index(marker) + len(marker):]
    return "unclassified", f"{outcome}: {message}"
