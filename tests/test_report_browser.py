"""report.html in a real browser: Debian's headless Chromium opens an evaluation report folder's page from
disk (file://, network blocked) and every figure loads and is drawn.

Two checks on a report written by ``run_evaluation`` on the tiny synthetic world (CI, funnel, metric@k and
reliability figures): (a) ``--dump-dom`` of a copy of the page with a small injected script: every ``<img>`` is
complete with ``naturalWidth > 0``, the page fetched no resource, and the script reports where each figure
was laid out; (b) a ``--screenshot`` of the page at the same width: inside each figure's box the pixels are
mostly not white and many are coloured (matplotlib's tab10 lines and bars). A control page whose images are
broken must fail both checks, so the test can fail.

CI installs Chromium (``.ci/run``); the test is skipped only when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
WIDTH = 1200
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--force-device-scale-factor=1", "--host-resolver-rules=MAP * ~NOTFOUND"]  # no network at all

# Runs at the load event (all images settled): writes what it saw into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (im) {
    var r = im.getBoundingClientRect();
    return {complete: im.complete, naturalWidth: im.naturalWidth, data: im.src.indexOf("data:") === 0,
            left: r.left + window.scrollX, top: r.top + window.scrollY, width: r.width, height: r.height};
  });
  var res = performance.getEntriesByType("resource").map(function (e) { return e.name; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = "PROBE" + JSON.stringify({imgs: imgs, resources: res,
                                              height: document.documentElement.scrollHeight}) + "EBORP";
  document.body.appendChild(out);
});
</script>"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                "(apt-get install chromium; .ci/run installs it)")


def chromium(tmp: Path, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium once on ``url`` with a fresh profile under ``tmp``."""
    profile = tmp / f"profile{len(list(tmp.glob('profile*')))}"
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def probe(page: Path, tmp: Path, height: int = 2000) -> dict:
    """Open a copy of ``page`` with :data:`PROBE` injected; what the probe saw at the load event."""
    html = page.read_text(encoding="utf-8")
    probed = tmp / f"probed-{page.name}"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    out = chromium(tmp, probed.as_uri(), "--dump-dom", f"--window-size={WIDTH},{height}").stdout
    m = re.search(r'<pre id="probe">PROBE(.*?)EBORP</pre>', out, re.S)
    assert m, f"the probe script did not run: {out[-500:]}"
    return json.loads(html_lib.unescape(m.group(1)))


def screenshot(page: Path, tmp: Path, height: int) -> np.ndarray:
    """(H, W, 3) floats in [0, 1]: the page rendered at WIDTH x ``height``."""
    import matplotlib.image as mpimg

    png = tmp / f"shot-{page.stem}.png"
    chromium(tmp, page.as_uri(), f"--screenshot={png}", f"--window-size={WIDTH},{height}")
    return np.asarray(mpimg.imread(png))[..., :3]


def drawn(region: np.ndarray) -> dict:
    """How much of ``region`` (h, w, 3) is drawn: share of non-white pixels, count of coloured pixels
    (channel spread > 0.25, so not grey text or axes) and how many of 12 hue bins they fill (>= 20 px each)."""
    if region.size == 0:
        return {"ink": 0.0, "coloured": 0, "hues": 0}
    px = region.reshape(-1, 3).astype(np.float64)
    ink = float(np.mean(px.min(axis=1) < 0.9))
    spread = px.max(axis=1) - px.min(axis=1)
    col = px[spread > 0.25]
    if len(col) == 0:
        return {"ink": ink, "coloured": 0, "hues": 0}
    import matplotlib.colors as mcolors

    hue = mcolors.rgb_to_hsv(np.clip(col, 0, 1))[:, 0]
    counts = np.bincount(np.minimum((hue * 12).astype(int), 11), minlength=12)
    return {"ink": ink, "coloured": int(len(col)), "hues": int((counts >= 20).sum())}


def figures_rendered(shot: np.ndarray, imgs: list[dict]) -> list[str]:
    """Problems with the figures in the screenshot (empty when every figure box is drawn, with coloured
    marks, and the figures together use at least 3 hues)."""
    problems, regions = [], []
    if float(np.mean(shot.min(axis=2) < 0.9)) < 0.01:
        problems.append("the screenshot is blank")
    for i, im in enumerate(imgs):
        if im["width"] < 200 or im["height"] < 150:
            problems.append(f"figure {i}: laid out as {im['width']:.0f}x{im['height']:.0f} px")
            continue
        top, left = int(im["top"]) + 2, int(im["left"]) + 2
        region = shot[top: int(im["top"] + im["height"]) - 2, left: int(im["left"] + im["width"]) - 2]
        d = drawn(region)
        if d["ink"] < 0.03 or d["coloured"] < 300:
            problems.append(f"figure {i}: not drawn ({d})")
        regions.append(region.reshape(-1, 3))
    if regions and not problems and drawn(np.concatenate(regions))["hues"] < 3:
        problems.append("the figures are not multi-coloured")
    return problems


def images_loaded(seen: dict) -> list[str]:
    problems = [f"figure {i}: not loaded ({im})" for i, im in enumerate(seen["imgs"])
                if not (im["complete"] and im["naturalWidth"] > 0 and im["data"])]
    return problems + [f"fetched {r}" for r in seen["resources"]]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """An evaluation report folder of the tiny synthetic world: a staged system (funnel), two baselines,
    the oracle, calibration numbers and reliability bins."""
    synthetic = pytest.importorskip("recsys.data.synthetic")
    from test_report import GAINS, Staged

    from offline_eval.calibration import expected_calibration_error
    from offline_eval.evaluator import run_evaluation
    from recsys.config import Config, EvalConfig

    root = tmp_path_factory.mktemp("browser")
    ds = synthetic.synthesize("tiny", 0, root / "data")
    cfg = Config(eval=EvalConfig(gains=GAINS, bootstrap_samples=100))
    rng = np.random.default_rng(0)
    p = rng.random(2000) * 0.6
    ece, bins = expected_calibration_error((rng.random(2000) < p).astype(float), p)
    run_evaluation(ds, cfg, root / "report", systems={"staged": Staged(len(ds.items))},
                   baselines=["random", "popularity"], extra={"calibration": {"click": {"ece": ece}}},
                   reliability={"staged/click": bins})
    return root / "report"


def test_report_html_renders_every_figure_in_chromium(report, tmp_path):
    page = report / "report.html"
    html = page.read_text(encoding="utf-8")
    n_figures = len(re.findall(r"!\[[^\]]*\]\([^)]+\.png\)", (report / "report.md").read_text()))
    assert n_figures == 4  # ci, metric@k, funnel, reliability
    assert "<script" not in html and "http://" not in html and "https://" not in html

    seen = probe(page, tmp_path)
    assert len(seen["imgs"]) == n_figures
    assert images_loaded(seen) == []
    shot = screenshot(page, tmp_path, seen["height"])
    assert shot.shape[1] == WIDTH and shot.shape[0] >= seen["height"] - 1
    assert figures_rendered(shot, seen["imgs"]) == []

    # the control: the same page with broken images fails both checks
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,AAAA"', html),
                      encoding="utf-8")
    seen_b = probe(broken, tmp_path)
    assert len(images_loaded(seen_b)) == n_figures
    shot_b = screenshot(broken, tmp_path, seen["height"])
    # lay the broken page's figures where the good page had them: still nothing drawn there
    assert len(figures_rendered(shot_b, seen["imgs"])) == n_figures
    assert len(figures_rendered(shot_b, seen_b["imgs"])) == n_figures
