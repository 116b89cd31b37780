"""The demonstration record: the one data format mid-training reads (NTP, the E-step, the EM loop).

One JSON object per line (or one row of an `hf:NAME[:SPLIT]` dataset) with
- `prompt`: what the model conditions on (a task statement and signature: HumanEval style);
- `completion`: the expert code the model learns, whole lines each ending in "\\n";
- optionally `task_id` (default: the record's index) and `plan` (the true plan of a synthetic-world task:
  [{start, idiom, detail, params}], for the E-step's boundary metrics).
Writers: `ra3 world` (`world.build.demo_record`), `ra3 corpus`, and the E-step, whose bootstrapped traces
(`layout.annotations_file`) are demonstrations with rationale lines in the completion.
"""

from __future__ import annotations

from pathlib import Path

from ra3.files import DataError, read_records

FIELDS = ("prompt", "completion")


def read_demonstrations(source: str | Path, max_demos: int = 0, also: tuple[str, ...] = ()) -> list[dict]:
    """The records of a JSONL file or `hf:` dataset, each with `prompt`, `completion` and the fields in
    `also`; the first `max_demos` of them (0: all). Errors name the file, the line and the field."""
    records = read_records(source, required=FIELDS + also)
    if not records:
        raise DataError(f"{source}: no demonstrations")
    return records[:max_demos] if max_demos else records
