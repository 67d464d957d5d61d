"""A report folder's ``report.html``: its ``report.md`` as one self-contained page people read in a browser.

Every report folder (``recsys evaluate`` and every ``recsys experiment``) holds ``report.md`` and PNG figures
beside it. :func:`write_html` renders the Markdown (Python-Markdown with the ``tables``, ``fenced_code`` and
``sane_lists`` extensions: a maintained CommonMark-like renderer beats a hand-written one for tables and
escaping) and **inlines every local image** as a ``data:image/png;base64`` URI, with a small inline stylesheet,
so the page opens from disk with no server and no network: no script, no external stylesheet, no font.

An image that is not a file inside the folder (an absolute path, ``..``, a URL) is refused: the page never
reaches outside its folder.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1b1f23; line-height: 1.45; }
h1, h2, h3 { border-bottom: 1px solid #e1e4e8; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
code, pre { background: #f6f8fa; font-size: 0.9em; } pre { padding: .6em; overflow-x: auto; }
"""

_IMG = re.compile(r'<img([^>]*?)src="([^"]+)"')
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _inline(folder: Path, src: str) -> str:
    """``src`` (a path relative to ``folder``) as a data URI; ValueError for anything outside the folder."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I) or src.startswith("/"):
        raise ValueError(f"{folder / 'report.md'}: image {src!r}: expected a file inside the report folder")
    root = folder.resolve()
    path = (folder / src).resolve()
    if root not in path.parents:
        raise ValueError(f"{folder / 'report.md'}: image {src!r}: expected a file inside the report folder")
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{folder / 'report.md'}: image {src!r}: expected one of {sorted(_MIME)}")
    if not path.is_file():
        raise ValueError(f"{folder / 'report.md'}: image {src!r}: no such file in the report folder")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(markdown_text: str, folder: str | Path, title: str | None = None) -> str:
    """The self-contained HTML page of ``markdown_text`` whose images are files in ``folder``.

    ``title``: the page title (default: the first ``# `` heading, else ``"report"``)."""
    import markdown

    folder = Path(folder)
    if title is None:
        m = re.search(r"^#\s+(.+)$", markdown_text, re.M)
        title = m.group(1).strip() if m else "report"
    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "sane_lists"],
                             output_format="html")
    body = _IMG.sub(lambda m: f'<img{m.group(1)}src="{_inline(folder, html.unescape(m.group(2)))}"', body)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_html(folder: str | Path, title: str | None = None) -> Path:
    """Render ``folder/report.md`` to ``folder/report.html`` (images inlined); returns the page's path.

    Call it inside the report's atomic output folder, after report.md and the figures are written."""
    folder = Path(folder)
    md = folder / "report.md"
    if not md.is_file():
        raise ValueError(f"{md}: no report.md to render")
    out = folder / REPORT_HTML
    out.write_text(render_html(md.read_text(encoding="utf-8"), folder, title), encoding="utf-8")
    logger.debug("wrote %s", out)
    return out


__all__ = ["render_html", "write_html", "REPORT_HTML"]
