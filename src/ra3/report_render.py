"""The report's two renderings of one list of blocks, so Markdown and HTML cannot disagree.

A block is a tuple: ("h1" | "h2", text), ("p", text), ("list", lines), ("table", head, rows),
("img", png path, caption) or ("code", source).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path


def to_markdown(blocks: list, root: Path) -> str:
    """Markdown; images as links relative to `root` (the report's directory)."""
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"{'#' * int(kind[1])} {rest[0]}\n")
        elif kind == "p":
            out.append(rest[0] + "\n")
        elif kind == "list":
            out.append("\n".join(f"- {line}" for line in rest[0]) + "\n")
        elif kind == "table":
            head, rows = rest
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                                 + ["| " + " | ".join(r) + " |" for r in rows]) + "\n")
        elif kind == "img":
            out.append(f"![{rest[1]}]({Path(rest[0]).relative_to(root)})\n")
        elif kind == "code":
            out.append(f"```python\n{rest[0].rstrip()}\n```\n")
    return "\n".join(out)


def to_html(blocks: list) -> str:
    """One self-contained HTML page (images inlined)."""
    esc, out = html.escape, []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{esc(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{esc(rest[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in rest[0]) + "</ul>")
        elif kind == "table":
            head, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode()
            out.append(f'<img alt="{esc(rest[1])}" src="data:image/png;base64,{data}">')
        elif kind == "code":
            out.append(f"<pre>{esc(rest[0])}</pre>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>{''.join(out)}</body></html>\n"
