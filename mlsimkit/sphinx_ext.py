"""A small Sphinx extension for the book (listed in ``_config.yml`` under ``sphinx.extra_extensions``).

Jupyter Book 1 registers sphinx-thebe's configuration script twice on every page, and the second
``const THEBE_JS_URL = ...`` is a JavaScript error in the reader's console on every page
(``benchmarks/check_book.py`` found it). The book uses no Thebe (nothing executes in the browser), so the
duplicate is dropped: each page keeps the first copy of every script.
"""

from __future__ import annotations


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        # the copies differ only in filename None vs '' (an inline script either way)
        key = (getattr(js, "filename", None) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept  # in place: later handlers (MathJax) add to this very list


def setup(app):
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
