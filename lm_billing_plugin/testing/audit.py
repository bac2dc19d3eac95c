"""`make audit`: bandit over the package (medium and high findings fail) and pip-audit over the
installed dependencies, which says "not checked" — never "clean" — when its database is away.

``python -m lm_billing_plugin.testing.audit``. Exit 0 when bandit is clean and pip-audit found
no known vulnerability or could not check (said plainly); 1 on a finding; 2 when a tool is
missing (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "pip_audit_verdict"]

NOT_CHECKED = "pip-audit could not reach its database: not checked"
PACKAGE = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def pip_audit_verdict(returncode: int, stdout: str) -> tuple[int, str]:
    """(exit status, sentence) from pip-audit's JSON output. A run where every dependency was
    skipped (the service answered nothing) or that produced no JSON checked nothing."""
    try:
        report: Any = json.loads(stdout)
    except ValueError:
        return 0, NOT_CHECKED
    deps = report.get("dependencies", []) if isinstance(report, dict) else []
    checked = [d for d in deps if not d.get("skip_reason")]
    if not checked:
        return 0, f"{NOT_CHECKED} (all {len(deps)} dependencies were skipped)"
    found = [d for d in checked if d.get("vulns")]
    if found:
        lines = [f"{d['name']} {d['version']}: " + ", ".join(v["id"] for v in d["vulns"])
                 for d in found]
        return 1, "pip-audit found known vulnerabilities:\n  " + "\n  ".join(lines)
    skipped = len(deps) - len(checked)
    tail = f"; {skipped} could not be checked" if skipped else ""
    return (1 if returncode not in (0, 1) else 0,
            f"pip-audit: {len(checked)} dependencies checked, no known vulnerabilities{tail}")


def main() -> int:
    bandit, pip_audit = _tool("bandit"), _tool("pip-audit")
    if bandit is None or pip_audit is None:
        print("bandit and pip-audit are needed: pip install -e '.[dev]'")  # noqa: T201
        return 2
    status = subprocess.run(  # noqa: S603 - our own tools, fixed arguments
        [bandit, "-q", "-r", str(PACKAGE), "-ll"], check=False).returncode
    print("bandit: clean (no medium or high finding)" if status == 0  # noqa: T201
          else "bandit: findings above")
    result = subprocess.run(  # noqa: S603
        [pip_audit, "--skip-editable", "--progress-spinner", "off", "-f", "json"],
        capture_output=True, text=True, check=False, timeout=600)
    code, sentence = pip_audit_verdict(result.returncode, result.stdout)
    print(sentence)  # noqa: T201
    return 1 if status or code else 0


if __name__ == "__main__":
    sys.exit(main())
