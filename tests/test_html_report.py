"""report.html: report.md rendered with its figures inlined, and nothing outside the folder reachable."""

from __future__ import annotations

import base64

import pytest

from offline_eval.html_report import render_html, write_html

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def test_tables_and_inlined_figures(tmp_path):
    (tmp_path / "fig.png").write_bytes(PNG)
    (tmp_path / "report.md").write_text("# Run <1>\n\n| system | ndcg@10 |\n|---|---|\n| engine | 0.1 |\n\n"
                                        "![a figure](fig.png)\n", encoding="utf-8")
    page = write_html(tmp_path).read_text(encoding="utf-8")
    assert "<table>" in page and "<td>engine</td>" in page
    assert "<title>Run &lt;1&gt;</title>" in page
    assert 'src="data:image/png;base64,' + base64.b64encode(PNG).decode() + '"' in page
    assert "fig.png" not in page.split("<body>")[1].replace('alt="a figure"', "")  # no link to the file
    assert "http" not in page and "<script" not in page


@pytest.mark.parametrize("src", ["../x.png", "/etc/x.png", "https://example.com/x.png", "missing.png", "r.md"])
def test_images_outside_the_folder_are_refused(tmp_path, src):
    (tmp_path / "r.md").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="image"):
        render_html(f"![x]({src})", tmp_path)


def test_no_report_md(tmp_path):
    with pytest.raises(ValueError, match="report.md"):
        write_html(tmp_path)
