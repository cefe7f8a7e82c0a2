"""Build hooks of the documentation site (``mkdocs.yml``: ``hooks``).

The docstrings are written for Sphinx-style reading (``:class:`Model```, ``:func:`~tailor.fit```); the API pages
show those roles as plain code, the name alone (:func:`on_page_content`).

Material's offline plugin lets the search run from ``file://`` with a small shim it loads from unpkg.com; the
site must not reach the network, so the shim is vendored (``docs/assets/vendor/``, MIT, iframe-worker 1.0.4)
and each page points at that copy instead.
"""

from __future__ import annotations

import posixpath
import re

SHIM_URL = "https://unpkg.com/iframe-worker/shim"
#: a Sphinx role around a code span, as Markdown renders ``:class:`~tailor.api.model.Model` ``
ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)([^<]+)</code>")
SHIM_FILE = "assets/vendor/iframe-worker-shim.js"


def on_post_page(output: str, page, config) -> str:
    """Point the page at the vendored shim, relative to the page's own address."""
    if SHIM_URL not in output:
        return output
    here = posixpath.dirname(page.file.dest_uri)
    return output.replace(SHIM_URL, posixpath.relpath(SHIM_FILE, here or "."))


def on_page_content(html: str, page, config, files) -> str:
    """``:meth:`~tailor.api.model.Model.save``` reads as ``Model.save`` (``~``: the last part only, as Sphinx)."""
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_post_template(output: str, template_name: str, config) -> str:
    """The same for pages made from templates alone (``404.html``, at the site's root)."""
    return output.replace(SHIM_URL, SHIM_FILE)
