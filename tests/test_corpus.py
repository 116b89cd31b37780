"""`ra3 corpus`: demonstrations from real .py files and MBPP, with every filter, duplicate and contamination
counted (real files and the packaged benchmark data; no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ra3.benchmarks import MBPP_SPLITS, load_humaneval, mbpp_prompt
from ra3.benchmarks.problem import data_file
from ra3.config import ConfigError, parse_config, save_config
from ra3.corpus import BENCHMARKS, BenchmarkIndex, CorpusConfig, run
from ra3.files import read_jsonl

TQ = '"""'
MOD_A = f'''{TQ}Module docstring.{TQ}
import functools


def total(xs):
    {TQ}Sum of the items of xs.{TQ}
    # start from zero
    out = 0
    for x in xs:
        out += x
    return out


def helper(x):
    return x + 1


@functools.lru_cache(maxsize=None)
def squares(n):
    {TQ}The squares below n.{TQ}
    result = []
    for i in range(n):
        result.append(i * i)
    return result


def stub(x):
    {TQ}Not written yet.{TQ}
    raise NotImplementedError("later")


def short(x):
    {TQ}Too short.{TQ}
    return x


def outer(xs):
    {TQ}Has a nested function.{TQ}
    def inner(x):
        return x * 2
    ys = [inner(x) for x in xs]
    return ys


class Stack:
    {TQ}A stack.{TQ}

    def __init__(self):
        self.items = []

    def push(self, item):
        {TQ}Put item on top.{TQ}
        if item is None:
            raise ValueError("no None")
        self.items.append(item)
        return len(self.items)

    def weird(self):
        {TQ}Holds a string whose lines start at column 0.{TQ}
        text = {TQ}
left
{TQ}
        return text.strip()


def shares():
    {TQ}Doc.{TQ}; x = 1
    y = x + 1
    z = y + 1
    return z


def probe(xs):
    {TQ}Has a comment that reads like the E-step's rationale probe (the expert's own comment: kept).{TQ}
    # x is the running maximum
    x = xs[0]
    for v in xs:
        x = max(x, v)
    return x


def wide(xs):
    {TQ}Has a very long line.{TQ}
    a = 1
    b = 2
    return [xs, "{"a" * 200}"]


def greek(x):
    {TQ}Ωμέγα αλφα βήτα γάμμα δέλτα.{TQ}
    a = x
    b = a
    return b


def control(x):
    {TQ}Holds a vertical tab in a string.{TQ}
    a = "x\x0by"
    b = a + x
    return b


def long_one(x):
    {TQ}Eleven lines.{TQ}
''' + "".join(f"    x = x + {i}\n" for i in range(10)) + "    return x\n"

MOD_B = f'''def total(xs):
    {TQ}Sum of the items of xs.{TQ}
    # start from zero
    out = 0
    for x in xs:
        out += x
    return out


def total_again(xs):
    {TQ}Add up xs (another docstring, the same body).{TQ}
    # start from zero
    out = 0
    for x in xs:
        out += x
    return out
'''


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A source tree with one function per filter, duplicates, broken files and a copied HumanEval task."""
    root = tmp_path_factory.mktemp("src") / "tree"
    (root / "tests").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "mod_a.py").write_text(MOD_A, encoding="utf-8")
    (root / "mod_b.py").write_text(MOD_B)
    (root / "broken.py").write_text("def f(:\n    return 1\n")
    (root / "bad_bytes.py").write_bytes(b"x = '\xff\xfe'\n")
    (root / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\ndef hello(name):\n    \"\"\"Say hello, caf\xe9 style."
                                    b"\"\"\"\n    greeting = 'hi'\n    text = greeting + ' ' + name\n    return text\n")
    he0 = load_humaneval()[0]
    (root / "contaminated.py").write_text(he0.prompt + he0.metadata["canonical_solution"])
    for skipped in ("tests/test_skip.py", ".hidden/h.py"):
        (root / skipped).write_text(MOD_B.replace("total", "other"))
    return root


def _cfg(out: Path, **kw) -> CorpusConfig:
    return CorpusConfig(out_dir=out, **{"mbpp": False, "max_body_lines": 10, **kw})


def test_tree_counts_and_records(tree, tmp_path):
    out = run(_cfg(tmp_path / "c", sources=[str(tree)]))
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["counts"]["tree"] == {
        "files_seen": 6, "files_parsed": 4, "files_failed_parse": 1, "files_failed_decode": 1,
        "functions_seen": 20, "nested": 1, "extracted": 9, "no_docstring": 2, "trivial_body": 1, "too_short": 1,
        "too_long": 1, "unindentable": 1, "docstring_shares_line": 1, "long_line": 1,
        "non_ascii": 1, "control_chars": 1}
    assert summary["candidates"] == 9 and summary["duplicates"] == {"exact": 1, "body": 1}
    contamination = summary["contamination"]
    assert contamination["dropped"] == 1
    assert contamination["by_benchmark"] == {"humaneval": 1, "humaneval_plus": 1}
    assert contamination["dropped_list"][0]["task_id"] == "tree/contaminated.py:has_close_elements"
    demos = read_jsonl(out / "demos.jsonl")
    assert [d["task_id"] for d in demos] == ["tree/latin.py:hello", "tree/mod_a.py:total", "tree/mod_a.py:squares",
                                             "tree/mod_a.py:outer", "tree/mod_a.py:Stack.push", "tree/mod_a.py:probe"]
    by_id = {d["task_id"]: d for d in demos}
    push = by_id["tree/mod_a.py:Stack.push"]
    assert push["prompt"] == f'def push(self, item):\n    {TQ}Put item on top.{TQ}\n'
    assert push["completion"].startswith('    if item is None:\n        raise ValueError("no None")\n')
    assert by_id["tree/mod_a.py:total"]["completion"].startswith("    # start from zero\n    out = 0\n")
    assert by_id["tree/mod_a.py:squares"]["prompt"].startswith("@functools.lru_cache(maxsize=None)\ndef squares(n):")
    assert "café" in by_id["tree/latin.py:hello"]["prompt"]
    assert summary["size"] == {"demos": 6, "completion_lines": sum(d["completion"].count("\n") for d in demos),
                               "completion_chars": sum(len(d["completion"]) for d in demos),
                               "prompt_chars": sum(len(d["prompt"]) for d in demos), "per_source": {"tree": 6}}
    for d in demos:
        assert d["source"] == "tree" and d["completion"].endswith("\n") and d["prompt"].endswith("\n")
        compile(d["prompt"] + d["completion"], d["task_id"], "exec")
    assert set(summary["provenance"]["data_sha256"]) == {"demos", *BENCHMARKS}


def test_rerun_keeps_a_finished_corpus_and_rebuilds_a_changed_one(tree, tmp_path):
    cfg = _cfg(tmp_path / "c", sources=[str(tree)])
    demos = run(cfg) / "demos.jsonl"
    stamp, text = demos.stat().st_mtime_ns, demos.read_text()
    run(cfg)
    assert demos.stat().st_mtime_ns == stamp
    demos.write_text("")
    run(cfg)
    assert demos.read_text() == text


def test_max_demos_is_a_seeded_sample_in_corpus_order(tree, tmp_path):
    full = [d["task_id"] for d in read_jsonl(run(_cfg(tmp_path / "all", sources=[str(tree)])) / "demos.jsonl")]
    picks = [[d["task_id"] for d in read_jsonl(run(_cfg(tmp_path / f"s{k}", sources=[str(tree)], max_demos=3,
                                                        seed=7)) / "demos.jsonl")] for k in range(2)]
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert picks[0] == [t for t in full if t in picks[0]]
    assert json.loads((tmp_path / "s0" / "corpus.json").read_text())["max_demos_dropped"] == len(full) - 3


def test_stdlib_package_round_trips_through_the_demo_loaders(tmp_path):
    from datasets import Dataset

    from ra3.demonstrations import FIELDS, read_demonstrations
    from ra3.estep import load_demos

    path = run(_cfg(tmp_path / "json", sources=["json"], max_body_lines=40)) / "demos.jsonl"
    records = read_jsonl(path)
    assert records and all(r["task_id"].startswith("json/") for r in records)
    assert "json/decoder.py:JSONDecoder.decode" in {r["task_id"] for r in records}
    demos = load_demos(path)
    for record, demo in zip(records, demos, strict=True):
        assert demo.task_id == record["task_id"] and demo.prompt == record["prompt"]
        assert "".join(demo.lines) == record["completion"] and all(line.endswith("\n") for line in demo.lines)
    dataset = Dataset.from_dict({f: [r[f] for r in read_demonstrations(path)] for f in FIELDS})  # as ntp.run does
    assert dataset["prompt"] == [r["prompt"] for r in records]
    assert dataset["completion"] == [r["completion"] for r in records]


@pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")  # MBPP's own regex strings
def test_mbpp_source_never_holds_an_evaluation_task(tmp_path):
    out = run(CorpusConfig(out_dir=tmp_path / "m", sources=[], mbpp=True))
    held = {int(r["task_id"].split("/")[1]) for r in read_jsonl(data_file("mbpp_plus"))}
    held |= {r["task_id"] for r in json.loads(data_file("mbpp_sanitized").read_text())}
    allowed = [(lo, hi) for split, (lo, hi) in MBPP_SPLITS.items() if split != "test"]
    mbpp = {r["task_id"]: r for r in read_jsonl(data_file("mbpp"))}
    demos = read_jsonl(out / "demos.jsonl")
    assert len(demos) > 200
    for d in demos:
        task = int(d["task_id"].split("/")[1])
        assert task not in held and any(lo <= task <= hi for lo, hi in allowed)
        assert d["prompt"] == mbpp_prompt(mbpp[task]["text"], mbpp[task]["test_list"][0])
        assert d["completion"].endswith("\n") and "\r" not in d["completion"]
    counts = json.loads((out / "corpus.json").read_text())["counts"]["mbpp"]
    lo, hi = MBPP_SPLITS["test"]
    assert counts["records"] == 974 and counts["test_split"] == hi - lo + 1
    assert counts["in_evaluation_set"] == len({t for t in held if not lo <= t <= hi})


def test_index_flags_a_copied_solution_and_not_unrelated_code():
    index = BenchmarkIndex(list(BENCHMARKS), 10)
    he0 = load_humaneval()[0]
    overlaps = index.overlaps(he0.metadata["canonical_solution"])
    assert overlaps[index.items.index(("humaneval", "HumanEval/0:solution"))] == 1.0
    assert max(index.overlaps(MOD_B).values(), default=0.0) < 0.5


def test_missing_sources_are_one_line_config_errors(tmp_path):
    for spec in (str(tmp_path / "nowhere"), "no_such_package_xyz", "nowhere.py"):
        with pytest.raises(ConfigError, match="is not 'stdlib', an existing directory, or an installed package") as err:
            run(_cfg(tmp_path / "c", sources=[spec]))
        assert "\n" not in str(err.value) and f"'{spec}'" in str(err.value)
    assert not (tmp_path / "c" / "corpus.json").exists()


def test_config_round_trip_and_rejections(tmp_path):
    cfg = parse_config(CorpusConfig, ["--sources", "stdlib,json", "--ngram", "13", "--contamination-threshold", "0.3",
                                      "--out-dir", str(tmp_path / "o"), "--mbpp", "false"])
    assert cfg.sources == ["stdlib", "json"] and cfg.ngram == 13 and cfg.contamination_threshold == 0.3
    assert parse_config(CorpusConfig, ["--config", str(save_config(cfg, tmp_path / "c.yaml"))]) == cfg
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"ngrams": 10}))
    with pytest.raises(ConfigError, match="unknown key 'ngrams' \\(did you mean 'ngram'\\?\\)"):
        parse_config(CorpusConfig, ["--config", str(tmp_path / "bad.yaml")])
    with pytest.raises(ConfigError, match="did you mean 'max_demos'"):
        parse_config(CorpusConfig, ["--max-demoz", "3"])
    with pytest.raises(ConfigError, match="max_body_lines"):
        parse_config(CorpusConfig, ["--min-body-lines", "5", "--max-body-lines", "4"])
    with pytest.raises(ConfigError, match="contamination_threshold"):
        parse_config(CorpusConfig, ["--contamination-threshold", "1.0"])
    with pytest.raises(ConfigError, match="nothing to build"):
        CorpusConfig(sources=[], mbpp=False)
