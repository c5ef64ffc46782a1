"""The growth-curve benchmark runs end to end with tiny sizes (the real curves are printed by
`scripts/bench`; no timing is asserted here)."""

from __future__ import annotations

import pytest

from bench import scale


def test_scale_bench_prints_every_curve_with_tiny_sizes(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    scale.main(["--quick", "--curves", "relay,lists,fanout"])
    printed = capsys.readouterr().out
    for title in ("outbox relay", "ListExecutions, first page", "ListExecutions, a page",
                  "peak worker memory", "seconds until every output"):
        assert title in printed, printed
    rows = [line.split() for line in printed.splitlines() if line.strip().endswith("x")]
    assert len(rows) == 10 and all(float(row[1].replace(",", "")) >= 0 for row in rows), printed
