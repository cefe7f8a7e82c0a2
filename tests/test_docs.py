"""The documentation's generated pages say what the code does: every binding the shipped configs use is in the
configuration reference, every route and status of the service in its reference, every command in the command
reference; and the home page made from the README keeps its links working on the site. (``make test`` then
builds the whole site in strict mode, which fails on a broken link, picture or reference.)"""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("gen_pages", REPO / "docs" / "scripts" / "gen_pages.py")
gen_pages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_pages)


@pytest.fixture(scope="module")
def configuration() -> str:
    return gen_pages.configuration_reference()


def _sections(page: str) -> dict[str, str]:
    """``{heading name: its text}`` of a generated page's ``## `name` `` sections."""
    parts = re.split(r"^## `([^`]+)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_binding_of_the_shipped_configs_is_in_the_configuration_reference(configuration):
    bindings = gen_pages.config_bindings()
    assert len(bindings) > 50  # the parser found the configs' bindings at all
    sections = _sections(configuration)
    missing = []
    for binding, files in bindings.items():
        name, param = binding.split("/")[-1].rsplit(".", 1)
        rows = [row for row in sections.get(name, "").splitlines() if row.startswith(f"| `{param}` |")]
        if not rows or not all(f"{file}: `{value}`"[:40] in rows[0] for file, value in files.items()):
            missing.append(binding)
    assert not missing, f"bindings the configs use but the reference lacks or misstates: {missing}"


def test_the_configuration_reference_gives_defaults_and_meanings(configuration):
    transfer = _sections(configuration)["transfer"]
    assert "| `probe_power` | `1.0` | class balance of the probe's loss" in transfer
    assert "| `calibrate_few_shot` | `True` |" in transfer and "transfer.gin: `True`" in transfer
    dataset = _sections(configuration)["FashionDataset"]
    assert "evaluate/ in transfer.gin: `'experiments/splits/test.csv'`" in dataset  # a scoped binding


def test_every_route_and_declared_status_is_in_the_service_reference():
    document = gen_pages.openapi_document()
    page = gen_pages.service_reference(document)
    sections = _sections(page)
    assert len(document["paths"]) >= 8
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            section = sections.get(f"{method.upper()} {path}")
            assert section is not None, f"{method.upper()} {path} is not in the service reference"
            for status in operation["responses"]:
                assert re.search(rf"^\| {status} \|", section, flags=re.M), f"{method} {path}: {status} missing"


def test_every_command_is_in_the_command_reference():
    from tailor.cli import build_parser

    page = gen_pages.cli_reference()
    commands = re.findall(r"^## `tailor (\w+)`$", page, flags=re.M)
    parser_commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert commands == list(parser_commands)
    assert "--train DIR|CSV" in _sections(page)["tailor run"]
    assert re.findall(r"^### `tailor index (\w+)`$", page, flags=re.M) == ["add", "remove", "info", "convert", "push"]


def test_the_home_page_is_the_readme_with_links_that_work_on_the_site():
    readme = "[guide](docs/guides/transfer.md#rare-categories) ![page](docs/images/x.png) " \
             '<img src="docs/images/y.png"> [notebook](examples/tour.ipynb) [site](https://example.org/a)'
    home = gen_pages.home_page(readme)
    assert "[guide](guides/transfer.md#rare-categories)" in home
    assert "![page](images/x.png)" in home and '<img src="images/y.png">' in home
    assert "notebook (`examples/tour.ipynb` in the repository)" in home  # not a page of the site
    assert "[site](https://example.org/a)" in home
    real = gen_pages.home_page()
    assert "](docs/" not in real and 'src="docs/' not in real


@pytest.mark.slow
def test_the_site_builds_strictly_and_loads_nothing_from_the_network(tmp_path):
    """What ``make docs`` runs, into a scratch folder: strict (a broken link, picture or API reference fails the
    build) and offline (no page pulls a script, style or font from another host)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 18 and (site / "reference" / "configuration.html").is_file()
    remote = re.compile(r"""<(?:script|link|img)[^>]+(?:src|href)=["']https?://""")
    loaders = {p.relative_to(site).as_posix() for p in pages if remote.search(p.read_text())}
    assert not loaders, f"pages that load from the network: {sorted(loaders)}"
    assert (site / "assets" / "vendor" / "iframe-worker-shim.js").is_file()
