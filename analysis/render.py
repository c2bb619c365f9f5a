"""Render a report's blocks as Markdown (figures linked) and as self-contained HTML (PNGs embedded).

Blocks: ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", header, rows)
      | ("fig", title, png, svg, caption), with paths relative to the report.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _md_table(header: list, rows: list[list]) -> str:
    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join(line(r) for r in [header, ["---"] * len(header), *rows])


_MARKDOWN = {
    "h": lambda level, text: "#" * level + " " + text,
    "p": lambda text: text,
    "ul": lambda items: "\n".join(f"- {item}" for item in items),
    "table": _md_table,
    "fig": lambda title, png, svg, caption: f"#### {title}\n\n![{title}]({png})\n\n{caption} ([SVG]({svg}))",
}


def render_markdown(blocks: list[tuple], out_dir: Path) -> str:
    """Markdown with figures linked relative to the report (PNG shown, SVG linked)."""
    return "\n\n".join(_MARKDOWN[kind](*args) for kind, *args in blocks) + "\n"


def _html_table(header: list, rows: list[list]) -> str:
    def line(cells: list, tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    return "<table>" + line(header, "th") + "".join(line(r, "td") for r in rows) + "</table>"


def _html_figure(out_dir: Path, title: str, png: str, svg: str, caption: str) -> str:
    data = base64.b64encode((out_dir / png).read_bytes()).decode()  # embedded: the HTML is self-contained
    return (f"<figure><h4>{html.escape(title)}</h4><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)} "
            f"(<a href='{html.escape(svg)}'>SVG</a>)</figcaption></figure>")


_CSS = ("body{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:left}img{max-width:100%;width:36em}figcaption{font-size:.9em;color:#333}")


def render_html(blocks: list[tuple], out_dir: Path) -> str:
    """Self-contained HTML: PNGs embedded as base64, SVGs linked."""
    renderers = {
        "h": lambda level, text: f"<h{level}>{html.escape(text)}</h{level}>",
        "p": lambda text: f"<p>{html.escape(text)}</p>",
        "ul": lambda items: "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>",
        "table": _html_table,
        "fig": lambda *args: _html_figure(out_dir, *args),
    }
    body = "\n".join(renderers[kind](*args) for kind, *args in blocks)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>grpo-lab report</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
