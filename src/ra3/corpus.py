"""Stage `ra3 corpus`: mid-training demonstrations {task_id, prompt, completion, source} from real Python.

Each function or method (outside any function) with a docstring is one record: prompt = decorators, `def` line(s)
and docstring; completion = the source lines after the docstring, comments kept; both dedented to column 0 (a
method becomes a standalone function keeping `self`). MBPP reference solutions (ids no evaluation set holds) are a
second source. Then line filters (`check`), deduplication and n-gram decontamination (`BenchmarkIndex`) against
HumanEval(+), MBPP test, sanitized MBPP and MBPP+. docs/corpus.md gives each rule and its sources."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import sys
import sysconfig
import time
import tokenize
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from ra3 import layout
from ra3.benchmarks.classic import load_humaneval, mbpp_evaluation_ids, mbpp_prompt
from ra3.benchmarks.problem import MBPP_SPLITS, data_file
from ra3.config import Config, ConfigError, config_to_dict, option
from ra3.files import DataError, atomic_write_text, file_sha256, iter_jsonl, provenance, write_jsonl

logger = logging.getLogger(__name__)

BENCHMARKS = ("humaneval", "humaneval_plus", "mbpp", "mbpp_sanitized", "mbpp_plus")
MAX_FILE_BYTES = 2 << 20  # larger .py files are generated tables, not expert code
_BAD_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")  # C0 but tab/newline, DEL, splitlines breaks
_WORDS = re.compile(r"\w+|[^\w\s]")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
Def = ast.FunctionDef | ast.AsyncFunctionDef
Source = tuple[str, Path, tuple[str, ...]]  # (label that prefixes task ids, root, .py files relative to root)


@dataclass
class CorpusConfig(Config):
    """Build mid-training demonstrations (docstring prompt -> function body) from Python sources and MBPP."""

    sources: list[str] = option(["stdlib"], "trees to mine: 'stdlib' (this interpreter's standard library), a "
                                "directory, or an installed package or module name")
    exclude_dirs: list[str] = option(["test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages",
                                      "dist-packages", "__pycache__"], "directory names never entered")
    mbpp: bool = option(True, "add MBPP reference solutions (prompt/validation/train ids no evaluation set holds)")
    out_dir: Path = option(Path("runs/corpus"), "output directory (demos.jsonl, corpus.json)")
    seed: int = option(0, "seed of the max_demos sample (nothing else is random)")
    min_body_lines: int = option(3, "fewest completion lines (blank and comment lines count)", at_least=1)
    max_body_lines: int = option(40, "most completion lines", at_least=1)
    max_prompt_lines: int = option(30, "most prompt lines (decorators, signature, docstring)", at_least=1)
    max_line_chars: int = option(160, "longest line in prompt or completion", at_least=1)
    max_non_ascii: float = option(0.05, "largest share of non-ASCII characters", at_least=0.0, at_most=1.0)
    max_demos: int = option(0, "at most this many demonstrations, a seeded sample in corpus order (0: all)", at_least=0)
    ngram: int = option(10, "decontamination n-gram length, in normalised tokens", at_least=1)
    contamination_threshold: float = option(0.5, "drop a candidate holding more than this share of the distinct "
                                            "n-grams of any one benchmark prompt, statement or solution",
                                            at_least=0.0, below=1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_body_lines < self.min_body_lines:
            raise ConfigError(f"max_body_lines ({self.max_body_lines}) < min_body_lines ({self.min_body_lines})")
        if not self.sources and not self.mbpp:
            raise ConfigError("sources is empty and mbpp is false: nothing to build a corpus from")


def _walk(root: Path, exclude: set[str]) -> tuple[str, ...]:
    """The .py files under `root`, relative and sorted, never entering an excluded or hidden directory."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in exclude and not d.startswith("."))
        found += [Path(folder, f).relative_to(root).as_posix() for f in files if f.endswith(".py")]
    return tuple(sorted(found))


def resolve_source(spec: str, exclude: set[str]) -> Source:
    """'stdlib', a directory, or an installed package/module name, as a Source (ConfigError if none)."""
    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return "stdlib", root, _walk(root, exclude)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve().name, path, _walk(path, exclude)
    try:
        found = None if os.sep in spec or "/" in spec or path.suffix == ".py" else find_spec(spec)
    except (ImportError, ValueError, TypeError):
        found = None
    if found is None:
        raise ConfigError(f"sources: '{spec}' is not 'stdlib', an existing directory, or an installed package")
    if found.submodule_search_locations:
        root = Path(next(iter(found.submodule_search_locations)))
        return spec, root, _walk(root, exclude)
    if not (found.origin or "").endswith(".py"):
        raise ConfigError(f"sources: module '{spec}' has no Python source ({found.origin})")
    return spec, Path(found.origin).parent, (Path(found.origin).name,)


def parse_python(path: Path) -> tuple[str, ast.Module] | str:
    """(text with "\\n" newlines, tree) of a file read in its PEP 263 encoding, or why it is skipped."""
    if path.stat().st_size > MAX_FILE_BYTES:
        return "files_too_large"
    raw = path.read_bytes()
    try:
        text = raw.decode(tokenize.detect_encoding(io.BytesIO(raw).readline)[0])
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return "files_failed_decode"
    text = text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n") + "\n"
    try:
        return text, ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "files_failed_parse"


def _defs(stmts: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, Def]]:
    """(qualified name, node) of the functions at module level or in class bodies (through if/try/with/loops)."""
    for s in stmts:
        if isinstance(s, _DEFS):
            yield prefix + s.name, s
        elif isinstance(s, ast.ClassDef):
            yield from _defs(s.body, f"{prefix}{s.name}.")
        else:
            inner = [c for f in ("body", "orelse", "finalbody") for c in getattr(s, f, [])]
            yield from _defs(inner + [c for h in getattr(s, "handlers", []) for c in h.body], prefix)


def _placeholder(s: ast.stmt) -> bool:
    """`pass`, `...`, a bare string, or `raise NotImplementedError[(...)]`."""
    if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
        return s.value.value is Ellipsis or isinstance(s.value.value, str)
    exc = getattr(s, "exc", None) if isinstance(s, ast.Raise) else None
    exc = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(s, ast.Pass) or (isinstance(exc, ast.Name) and exc.id == "NotImplementedError")


def _dedent(lines: list[str], indent: str) -> str | None:
    """`lines` joined without their leading `indent` (blank lines become "\\n"); None if a line lacks it."""
    if any(line.strip() and not line.startswith(indent) for line in lines):
        return None
    return "".join(line[len(indent):] if line.strip() else "\n" for line in lines)


def render(node: Def, lines: list[str]) -> tuple[str, str] | str:
    """(prompt, completion) of a function, or the name of the filter it fails."""
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            and doc.value.value.strip()):
        return "no_docstring"
    rest = node.body[1:]
    if rest and rest[0].lineno <= doc.end_lineno:
        return "docstring_shares_line"
    if all(map(_placeholder, rest)):
        return "trivial_body"
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    indent = lines[node.lineno - 1][:node.col_offset]
    prompt = _dedent(lines[start - 1:doc.end_lineno], indent)
    completion = _dedent(lines[doc.end_lineno:node.end_lineno], indent)
    return "unindentable" if prompt is None or completion is None else (prompt, completion)


def check(prompt: str, completion: str, cfg: CorpusConfig) -> str | None:
    """The first filter a (prompt, completion) pair fails (lines, line length, characters, parsing), or None."""
    body, text = completion.count("\n"), prompt + completion
    reason = ("too_short" if body < cfg.min_body_lines else "too_long" if body > cfg.max_body_lines
              else "prompt_too_long" if prompt.count("\n") > cfg.max_prompt_lines
              else "long_line" if max(map(len, text.split("\n"))) > cfg.max_line_chars
              else "non_ascii" if sum(not c.isascii() for c in text) > cfg.max_non_ascii * len(text)
              else "control_chars" if _BAD_CHARS.search(text) else None)
    if reason is None:
        try:
            ast.parse(text)
        except (SyntaxError, ValueError, RecursionError):
            reason = "unparsable"
    return reason


def extract_file(text: str, tree: ast.Module, file_id: str, cfg: CorpusConfig, counts: Counter) -> list[dict]:
    """The candidates of one parsed file; each function is counted as seen, then as extracted or under a filter."""
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    found = list(_defs(tree.body))
    seen = sum(isinstance(n, _DEFS) for n in ast.walk(tree))
    counts.update(functions_seen=seen, nested=seen - len(found))
    repeated = {name for name, n in Counter(name for name, _ in found).items() if n > 1}
    out = []
    for name, node in found:
        result = render(node, lines)
        reason = result if isinstance(result, str) else check(*result, cfg)
        counts[reason or "extracted"] += 1
        if reason is None:
            task_id = f"{file_id}:{name}" + (f"@{node.lineno}" if name in repeated else "")
            out.append(dict(task_id=task_id, prompt=result[0], completion=result[1], source=file_id.split("/")[0]))
    return out


def extract_source(source: Source, cfg: CorpusConfig) -> tuple[list[dict], Counter]:
    """The candidates of every .py file of a source, in file order, with its counts."""
    from tqdm import tqdm

    (label, root, files), counts, out = source, Counter(), []
    for rel in tqdm(files, desc=f"corpus {label}", unit="file", mininterval=2.0):
        counts["files_seen"] += 1
        parsed = parse_python(root / rel)
        counts[parsed if isinstance(parsed, str) else "files_parsed"] += 1
        if not isinstance(parsed, str):
            out += extract_file(*parsed, f"{label}/{rel}", cfg, counts)
    logger.info("%s: %d candidates; %s", label, len(out), dict(counts))
    return out, counts


def _mbpp_records(name: str) -> list[dict]:
    """Raw records of full MBPP (all ids) or sanitized MBPP, each with 'task_id', 'text', 'code', 'test_list'."""
    path = data_file(name)
    if name == "mbpp":
        return list(iter_jsonl(path, ("task_id", "text", "code", "test_list")))
    try:
        return [{**r, "text": r["prompt"], "code": r["code"], "test_list": r["test_list"]}
                for r in json.loads(path.read_text())]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not sanitized MBPP records (missing or bad field {e})") from None


def benchmark_items(name: str) -> list[tuple[str, str]]:
    """(item id, text) of a benchmark's prompts, statements (MBPP) and reference solutions."""
    if name == "humaneval":
        return [(f"{p.task_id}:{k}", text) for p in load_humaneval()
                for k, text in (("prompt", p.prompt), ("solution", p.metadata["canonical_solution"]))]
    if name in ("humaneval_plus", "mbpp_plus"):
        records = iter_jsonl(data_file(name), ("task_id", "prompt", "canonical_solution"))
        return [(f"{r['task_id']}:{k}", r[f]) for r in records
                for k, f in (("prompt", "prompt"), ("solution", "canonical_solution"))]
    lo, hi = MBPP_SPLITS["test"] if name == "mbpp" else (-math.inf, math.inf)
    return [(f"Mbpp/{r['task_id']}:{k}", text) for r in _mbpp_records(name) if lo <= r["task_id"] <= hi
            for k, text in (("prompt", mbpp_prompt(r["text"], r["test_list"][0])), ("statement", r["text"]),
                            ("solution", r["code"]))]


def mbpp_candidates(cfg: CorpusConfig, counts: Counter) -> list[dict]:
    """MBPP reference solutions of the prompt/validation/train ids, minus every id an evaluation set holds."""
    held = mbpp_evaluation_ids()
    ranges = [MBPP_SPLITS[s] for s in ("prompt", "validation", "train")]  # never "test" (11-510)
    out = []
    for r in _mbpp_records("mbpp"):
        counts["records"] += 1
        if not any(lo <= r["task_id"] <= hi for lo, hi in ranges):
            counts["test_split"] += 1
        elif r["task_id"] in held:
            counts["in_evaluation_set"] += 1
        else:
            code = "\n".join(line.rstrip() for line in r["code"].replace("\r\n", "\n").split("\n")).strip("\n") + "\n"
            prompt = mbpp_prompt(r["text"], r["test_list"][0])
            reason = check(prompt, code, cfg)
            counts[reason or "extracted"] += 1
            if reason is None:
                out.append(dict(task_id=f"mbpp/{r['task_id']}", prompt=prompt, completion=code, source="mbpp"))
    logger.info("mbpp: %d candidates; %s", len(out), dict(counts))
    return out


def _norm_hash(*texts: str) -> str:
    return hashlib.sha256("\x00".join(" ".join(t.split()) for t in texts).encode()).hexdigest()


def deduplicate(candidates: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """First occurrences only: of whitespace-normalised prompt+completion, then of the completion alone."""
    seen, kept, counts = set(), [], {"exact": 0, "body": 0}
    for c in candidates:
        pair, body = "pair:" + _norm_hash(c["prompt"], c["completion"]), "body:" + _norm_hash(c["completion"])
        if pair in seen or body in seen:
            counts["exact" if pair in seen else "body"] += 1
        else:
            seen |= {pair, body}
            kept.append(c)
    return kept, counts


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Distinct n-grams of the lowercased word runs and single punctuation marks of `text`."""
    tokens = _WORDS.findall(text.lower())
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class BenchmarkIndex:
    """The n-grams of every benchmark item (prompt, statement, solution), and the items each occurs in."""

    def __init__(self, benchmarks: list[str], n: int):
        self.n, self.items, self.sizes = n, [], []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.stats: dict[str, dict[str, int]] = {}
        for name in benchmarks:
            items = benchmark_items(name)
            for item_id, text in items:
                grams = ngrams(text, n)
                for g in grams:
                    self.index[g].append(len(self.items))
                self.items.append((name, item_id))
                self.sizes.append(len(grams))
            sizes = self.sizes[len(self.sizes) - len(items):]
            self.stats[name] = {"items": len(items), "items_shorter_than_n": sizes.count(0)}
        logger.info("decontamination index: %d items, %d distinct %d-grams", len(self.items), len(self.index), n)

    def overlaps(self, text: str) -> dict[int, float]:
        """{item: share of the item's distinct n-grams that occur in `text`} for every item sharing one."""
        hits = Counter(i for g in ngrams(text, self.n) for i in self.index.get(g, ()))
        return {i: k / self.sizes[i] for i, k in hits.items()}

    def decontaminate(self, candidates: list[dict], threshold: float) -> tuple[list[dict], dict]:
        """Candidates whose overlap with every item is at most `threshold`, and a report of the others."""
        kept, dropped, by_benchmark, histogram = [], [], Counter(), Counter()
        for c in candidates:
            overlaps = self.overlaps(c["prompt"] + c["completion"])
            top = max(overlaps.values(), default=0.0)
            histogram[f"<={math.ceil(top * 4) / 4}" if top else "0"] += 1
            over = {i: v for i, v in overlaps.items() if v > threshold}
            if not over:
                kept.append(c)
                continue
            by_benchmark.update({self.items[i][0] for i in over})
            i = max(over, key=lambda j: (over[j], -j))
            dropped.append({"task_id": c["task_id"], "benchmark": self.items[i][0], "item": self.items[i][1],
                            "overlap": round(over[i], 3)})
        return kept, {"dropped": len(dropped), "by_benchmark": dict(sorted(by_benchmark.items())),
                      "max_overlap_histogram": dict(sorted(histogram.items())), "dropped_list": dropped[:500]}


def _complete(out: Path, cfg: CorpusConfig) -> bool:
    """A corpus with this config was written here and demos.jsonl is unchanged since."""
    try:
        written = json.loads(layout.corpus_record(out).read_text())
        return (written["config"] == config_to_dict(cfg)
                and written["provenance"]["data_sha256"]["demos"] == file_sha256(layout.corpus_demos(out)))
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return False


def run(cfg: CorpusConfig) -> Path:
    """Build `<out_dir>/demos.jsonl`, then corpus.json (the mark of a finished run); returns out_dir."""
    out = Path(cfg.out_dir)
    if _complete(out, cfg):
        logger.info("%s already holds this corpus; keeping it", out)
        return out
    start = time.time()
    sources = [resolve_source(s, set(cfg.exclude_dirs)) for s in cfg.sources]
    labels = [s[0] for s in sources] + ["mbpp"] * cfg.mbpp
    if len(set(labels)) < len(labels):
        raise ConfigError(f"sources: two sources share the name of their task ids ({labels})")
    index = BenchmarkIndex(list(BENCHMARKS), cfg.ngram)
    candidates, counts = [], {}
    for source in sources:
        found, counts[source[0]] = extract_source(source, cfg)
        candidates += found
    if cfg.mbpp:
        candidates += mbpp_candidates(cfg, counts.setdefault("mbpp", Counter()))
    unique, duplicates = deduplicate(candidates)
    clean, contamination = index.decontaminate(unique, cfg.contamination_threshold)
    keep = random.Random(cfg.seed).sample(range(len(clean)), min(cfg.max_demos or len(clean), len(clean)))
    demos = [clean[i] for i in sorted(keep)]
    write_jsonl(layout.corpus_demos(out), demos)
    size = {"demos": len(demos), "completion_lines": sum(d["completion"].count("\n") for d in demos),
            "completion_chars": sum(len(d["completion"]) for d in demos), "prompt_chars": sum(len(d["prompt"])
            for d in demos), "per_source": dict(sorted(Counter(d["source"] for d in demos).items()))}
    summary = {"config": config_to_dict(cfg), "python": sys.version.split()[0],
               "sources": {label: str(root) for label, root, _ in sources},
               "counts": {k: dict(sorted(v.items())) for k, v in counts.items()}, "candidates": len(candidates),
               "duplicates": duplicates, "contamination": contamination, "benchmark_items": index.stats,
               "max_demos_dropped": len(clean) - len(demos), "size": size, "wall_s": round(time.time() - start, 2),
               "provenance": provenance(cfg.seed, demos=layout.corpus_demos(out),
                                        **{k: data_file(k) for k in BENCHMARKS})}
    atomic_write_text(layout.corpus_record(out), json.dumps(summary, indent=2) + "\n")
    logger.info("corpus: %d demonstrations (%d candidates, %d duplicates, %d contaminated) in %.1f s", len(demos),
                len(candidates), sum(duplicates.values()), contamination["dropped"], summary["wall_s"])
    return out
