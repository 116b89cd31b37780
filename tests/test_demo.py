"""`ra3 demo` (for now a verifier self-check): HumanEval's canonical solutions all pass through the CLI."""

from __future__ import annotations

import json

from ra3.cli import main


def test_demo_checks_the_verifier(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path), "--workers", "2"]) == 0
    results = [json.loads(line) for line in (tmp_path / "humaneval_canonical_results.jsonl").read_text().splitlines()]
    assert len(results) == 164 and all(r["passed"] for r in results)
    assert "not built yet" in capsys.readouterr().out
