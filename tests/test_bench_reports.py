"""The report benchmark runs (every page answers 200 on both fleets, as `make bench` needs)
and prints a figure and a ratio per page; --servers spreads both fleets over the same
servers."""

from __future__ import annotations

import re

import pytest

from lm_billing_plugin.testing import bench_reports


@pytest.mark.parametrize("servers", [None, 3])
def test_bench_reports_prints_every_page_with_a_ratio(
        capsys: pytest.CaptureFixture[str], servers: int | None) -> None:
    args = ["--rounds", "1", "30", "90"] + (["--servers", str(servers)] if servers else [])
    assert bench_reports.main(args) == 0
    out = capsys.readouterr().out
    assert "built 90 lists" in out
    for label, _url in bench_reports.PAGES:
        assert len(re.findall(rf"^{re.escape(label)}\s+[\d.]+\s+[\d.]+\s+[\d.]+x$", out,
                              re.M)) == 2, label  # median and minimum tables
