"""Look at the rendered book as a reader does: every page of ``_build/html`` opened in headless Chromium.

Not a test (CI needs no browser): a check to run after ``make book``. It opens each page from the file
system (``file://``, as a reader who opens the printed ``index.html`` does) with the network switched off,
waits for MathJax, and reports per page:

- console errors and page errors (JavaScript exceptions);
- broken internal links (a target file that does not exist, or an ``#anchor`` the target page lacks) and
  images that did not load;
- tables wider than the content column (inside a horizontally scrolling box or not: either way the reader
  does not see every column), tables cut to their first rows (``.head()``) or to their first and last rows;
- raw LaTeX left unrendered (``\\(``, ``\\[``, ``$$``, ``\\frac`` ... in the visible text, outside code);
- Python reprs shown where a table or sentence belongs: a dict or list literal, a pandas Series or
  DataFrame printed as text, ``<Figure ...>`` / ``<Axes ...>`` objects, in the notebooks' text outputs.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package
(``pip install playwright``; its own browsers are not downloaded, Debian's Chromium is used).

    .venv/bin/python benchmarks/check_book.py [_build/html] [--chromium /usr/bin/chromium] [--screenshots DIR]

Exit status 1 when any problem is found; the report lists each one with its page.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

LATEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(frac|bar|hat|sum|mathrm|text|begin|end|sigma|tau|theta|rho)\b")
REPR = [
    (re.compile(r"^\s*\{\s*['\"]"), "a Python dict printed as text"),
    (re.compile(r"^\s*\[\s*['\"(]"), "a Python list printed as text"),
    (re.compile(r"^\s*<(Figure|Axes|matplotlib|seaborn|mlsimkit)[^>]*>", re.M), "an object repr"),
    (re.compile(r"\b(Name: \w+, )?dtype: \w+\s*$", re.M), "a pandas Series printed as text"),
    (re.compile(r"\[\d+ rows x \d+ columns\]"), "a DataFrame printed as text"),
    (re.compile(r"^\s*[A-Z]\w*\((['\"]|\w+=)", re.M), "an object repr"),
    (re.compile(r"^\s*\(\d+, \d+\)\s*$"), "a tuple printed as text"),
]

# Run in the page: collects everything the report needs in one round trip.
PAGE_JS = r"""
() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const aw = article.getBoundingClientRect();
  const wide = [];
  for (const t of article.querySelectorAll('table')) {
    const r = t.getBoundingClientRect();
    if (r.width === 0) continue;
    // a table in a horizontally scrolling box (or itself one: display block, overflow auto) still hides its
    // right-hand columns from a reader
    const w = Math.max(r.width, t.scrollWidth);
    const box = t.closest('.cell_output') || article;  // notebook outputs are narrower than the article
    const cw = box.clientWidth;
    if (w > cw + 2) {
      const head = (t.querySelector('th') || t).innerText.slice(0, 40).replace(/\s+/g, ' ');
      wide.push(`table "${head}" is ${Math.round(w)} px wide, the column ${Math.round(cw)} px`);
    }
  }
  const heads = [];
  for (const cell of article.querySelectorAll('.cell')) {
    const src = (cell.querySelector('.cell_input pre') || {}).innerText || '';
    const out = cell.querySelector('.cell_output');
    if (!out) continue;
    const text = out.innerText;
    if (/\.head\(\d*\)\s*$/.test(src.trim())) heads.push(`the first rows of a table (${src.trim().split('\n').pop()})`);
    if (/\d+ rows × \d+ columns/.test(text)) heads.push(`a table cut to its first and last rows (${text.match(/\d+ rows × \d+ columns/)[0]})`);
  }
  const clone = article.cloneNode(true);
  for (const el of clone.querySelectorAll('pre, code, script, style, mjx-container, .MathJax, mjx-assistive-mml')) el.remove();
  const outputs = [...article.querySelectorAll('.cell_output pre, .output pre, .output_text pre')]
    .filter(p => !p.closest('.stderr') && !p.closest('.output.stderr'))
    .map(p => p.innerText);
  const images = [...document.images].filter(i => i.complete && i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(a => a.name));
  return {text: clone.innerText, outputs, images, links, ids, wide, heads, url: location.href,
          mathjax: !!(window.MathJax && window.MathJax.startup)};
}
"""


def check(html_dir: Path, chromium: str, screenshots: Path | None = None) -> list[tuple[str, str]]:
    from playwright.sync_api import sync_playwright

    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and p.name not in ("genindex.html", "search.html"))
    problems: list[tuple[str, str]] = []
    infos: dict[Path, dict] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
        for page_path in pages:
            rel = str(page_path.relative_to(html_dir))
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m, e=errors: e.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda exc, e=errors: e.append(f"page error: {exc}"))
            page.on("requestfailed", lambda r, e=errors: e.append(f"request failed: {r.url} ({r.failure})")
                    if r.url.startswith("file:") else None)
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_timeout(300)
            has_math = page.evaluate("() => !!document.querySelector('.math, span.math, div.math')")
            if has_math:
                try:
                    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=10000)
                    page.evaluate("() => MathJax.startup.promise")
                except Exception as exc:  # noqa: BLE001 - reported as a problem
                    errors.append(f"MathJax did not start: {exc}")
            info = page.evaluate(PAGE_JS)
            infos[page_path] = info
            if screenshots:
                screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshots / (rel.replace("/", "__") + ".png")), full_page=True)
            page.close()
            problems += [(rel, e) for e in errors]
            problems += [(rel, w) for w in info["wide"] + info["heads"]]
            problems += [(rel, f"image did not load: {src}") for src in info["images"]]
            for m in LATEX.finditer(info["text"]):
                ctx = info["text"][max(0, m.start() - 30): m.end() + 30].replace("\n", " ")
                problems.append((rel, f"raw LaTeX in the text: ...{ctx}..."))
            for out in info["outputs"]:
                for pattern, what in REPR:
                    if pattern.search(out):
                        problems.append((rel, f"{what}: {out.strip()[:80]!r}"))
                        break
        browser.close()
    for page_path, info in infos.items():
        rel = str(page_path.relative_to(html_dir))
        shown = Path(unquote(urlsplit(info["url"]).path))  # after a redirect (index.html), the page shown
        if shown != page_path:
            if not shown.is_file():
                problems.append((rel, f"redirects to a missing page: {info['url']}"))
            continue
        for href in info["links"]:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//") or href.startswith("mailto:"):
                continue
            target = (page_path.parent / unquote(parts.path)).resolve() if parts.path else page_path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append((rel, f"broken link: {href}"))
            elif parts.fragment and target.suffix == ".html":
                ids = infos.get(target, {}).get("ids")
                if ids is not None and unquote(parts.fragment) not in ids:
                    problems.append((rel, f"link to a missing anchor: {href}"))
    return problems, len(pages)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default="_build/html")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--screenshots", default=None, help="save a full-page PNG of every page here")
    args = ap.parse_args(argv)
    html = Path(args.html).resolve()
    if not (html / "index.html").is_file():
        print(f"check_book: '{html}' holds no index.html; build the book first (make book)", file=sys.stderr)
        return 2
    problems, n = check(html, args.chromium, Path(args.screenshots) if args.screenshots else None)
    for rel, what in problems:
        print(f"{rel}: {what}")
    print(f"check_book: {n} pages, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
