"""The documentation pages that are generated from the code, not typed by hand: every gin binding a user may set
(with its default, what it does and what the shipped configs bind it to), every command's options, and every
route of the service from the OpenAPI document it publishes.

``mkdocs build`` runs this file (the ``gen-files`` plugin) and adds the pages to the site; nothing is written to
``docs/``. ``tests/test_docs.py`` imports the same functions, so a binding a config uses but the reference lacks
fails a test as well as the build.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tailor" / "configs"
if str(REPO) not in sys.path:  # the checkout's tailor, whether or not it is installed
    sys.path.insert(0, str(REPO))

#: where each generated page lands in the site
HOME_PAGE = "index.md"
CONFIGURATION_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"
SERVICE_PAGE = "reference/service.md"
OPENAPI_FILE = "reference/openapi.json"

#: a binding line of a .gin file: ``[scope/]Name.param = value`` (the value may run over several lines)
BINDING = re.compile(r"^(?:(?P<scope>[\w.]+)/)?(?P<name>[A-Za-z_][\w.]*)\.(?P<param>\w+)\s*=\s*(?P<value>.+)$")


# --- configuration --------------------------------------------------------------------------------------------
def config_bindings() -> dict[str, dict[str, str]]:
    """``{"Name.param": {"transfer.gin": "value", ...}}``: every binding the shipped configs make (a scoped one,
    ``evaluate/FashionDataset.csv_file``, under its full text)."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(CONFIGS.glob("*.gin")):
        for line in path.read_text().splitlines():
            match = BINDING.match(line.split("  #")[0].strip())
            if match is None or line.startswith(("#", "include", "import")):
                continue
            scope = f"{match['scope']}/" if match["scope"] else ""
            key = f"{scope}{match['name']}.{match['param']}"
            found.setdefault(key, {})[path.name] = match["value"].strip()
    return found


def configurables() -> list[SimpleNamespace]:
    """Every name tailor registers with gin (its short name, the function or class, its parameters and
    defaults), sorted by name; the library names the configs use (``torch.optim.AdamW``) follow."""
    import gin

    import tailor.configurables  # noqa: F401  (registers every name)

    used = {key.split("/")[-1].rsplit(".", 1)[0] for key in config_bindings()}
    out = []
    for selector, entry in gin.config._REGISTRY.items():  # gin offers no public listing
        module = entry.module or ""
        ours = module.startswith("tailor") or not module.startswith(("gin", "torch"))
        short = entry.name if module.startswith("tailor") else f"{module}.{entry.name}"
        if not ours and short not in used and selector not in used:
            continue
        target = entry.wrapped
        if inspect.isclass(target) and target.__module__ == "tailor.run_inputs":
            target = target.__bases__[0]  # a class bound at the edge: document the class it binds
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        passed_in = set(entry.denylist or ())  # what the caller passes (the runtime), never a binding
        params = [p for p in signature.parameters.values()
                  if p.name not in ("self", "args", "kwargs") and p.name not in passed_in
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        out.append(SimpleNamespace(name=short, selector=selector, target=target, params=params, ours=ours))
    return sorted(out, key=lambda c: (not c.ours, c.name.lower()))


def _setting_docs() -> dict[str, str]:
    """What each binding does, from the Python API's settings dataclasses (one sentence each)."""
    from tailor.api.settings import RecipeSettings

    docs: dict[str, str] = {}

    def walk(cls: type) -> Iterator[type]:
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    for cls in walk(RecipeSettings):
        for f in fields(cls):
            if f.metadata.get("gin"):
                docs.setdefault(f.metadata["gin"], f.metadata["doc"])
    return docs


def _first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _param_doc(obj: Any, param: str) -> str:
    """The sentence of ``obj``'s docstring that introduces ``param`` (```param```: …), if there is one."""
    doc = " ".join((inspect.getdoc(obj) or "").split())
    names = rf"``\w+``(?:\s*(?:,|and|or|/)\s*``\w+``)*"
    for match in re.finditer(rf"({names})\s*(?::|—|\()\s*(.+?\.)(?:\s|$)", doc):
        if f"``{param}``" in match.group(1):
            return match.group(2)
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(param: inspect.Parameter) -> str:
    if param.default is inspect.Parameter.empty:
        return "required"
    return f"`{param.default!r}`"


def configuration_reference() -> str:
    """The configuration page: one section per configurable, one row per parameter."""
    bound = config_bindings()
    setting_docs = _setting_docs()
    lines = [
        "# Configuration reference",
        "",
        "Every name a gin file or a `-p` binding may set, generated from the code at build time. A row's default is",
        "the code's; the *configs* column shows what each shipped config file (`configs/*.gin`) binds it to.",
        "`tailor run -c configs/transfer.gin -p \"Name.parameter=value\"` overrides one; a scoped binding",
        "(`evaluate/FashionDataset.csv_file`) applies inside that scope only. In Python, `tailor.fit` takes the",
        "recipe's settings by name (`tailor.TransferSettings.describe()` lists them with the bindings they set).",
        "",
    ]
    for conf in configurables():
        lines += [f"## `{conf.name}`", ""]
        summary = _first_paragraph(conf.target)
        origin = f"`{conf.target.__module__}.{conf.target.__qualname__}`"
        lines += [f"{_cell(summary)}" if summary else "", "", f"Defined in {origin}.", ""]
        if not conf.params:
            continue
        lines += ["| parameter | default | what it does | configs |", "|---|---|---|---|"]
        for param in conf.params:
            key = f"{conf.name}.{param.name}"
            doc = setting_docs.get(key) or _param_doc(conf.target, param.name)
            plain = [f"{file}: `{value}`" for file, value in bound.get(key, {}).items()]
            scoped = [f"{name.split('/')[0]}/ in {file}: `{value}`" for name, files in bound.items()
                      if "/" in name and name.split("/")[-1] == key for file, value in files.items()]
            shown = "<br>".join(_cell(c) for c in plain + scoped)
            lines.append(f"| `{param.name}` | {_cell(_default(param))} | {_cell(doc)} | {shown} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# --- the command ----------------------------------------------------------------------------------------------
def cli_reference() -> str:
    """The command page: ``tailor --help`` and each sub-command's help, as the command prints them."""
    from tailor.cli import build_parser

    parser = build_parser()
    lines = ["# Command reference", "", "Generated from the `tailor` command's own parser; `tailor COMMAND --help`",
             "prints the same.", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subcommands(parser).items():
        lines += [f"## `tailor {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        for action, nested in _subcommands(sub).items():  # tailor index add / remove / info
            lines += [f"### `tailor {name} {action}`", "", "```text", nested.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    return dict(found[0].choices) if found else {}


# --- the service ----------------------------------------------------------------------------------------------
def openapi_document() -> dict:
    """The OpenAPI document ``tailor serve`` publishes at ``/openapi.json`` (the routes are the same for every
    run; this builds the app over a run that serves nothing, without starting it)."""
    from tailor.serve.app import create_app

    # the routes and their schemas do not depend on the model: a run with no model to serve builds them
    return create_app(SimpleNamespace(name="RUN", predictor=None, search=None)).openapi()


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    return schema.get("type", "object")


def service_reference(document: dict | None = None) -> str:
    """The service page: each route's parameters, request body and every answer it declares."""
    document = document or openapi_document()
    components = document.get("components", {}).get("schemas", {})
    lines = ["# Service reference (HTTP API)", "",
             "Generated from the OpenAPI document `tailor serve` publishes at `/openapi.json`",
             f"([download it]({Path(OPENAPI_FILE).name})); a running server also shows it at `/docs`. Every error is",
             "JSON, `{\"error\": \"…\"}`.", ""]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", "", op.get("summary", ""), ""]
            if op.get("description"):
                lines += [" ".join(op["description"].split()), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | schema | description |", "|---|---|---|---|---|"]
                for p in params:
                    schema = p.get("schema", {})
                    limits = ", ".join(f"{k} {schema[k]}" for k in ("minimum", "maximum", "maxLength") if k in schema)
                    kind = schema.get("type", "") + (f" ({limits})" if limits else "")
                    lines.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                                 f"{_cell(kind)} | {_cell(p.get('description', '') or schema.get('description', ''))} |")
                lines.append("")
            body = op.get("requestBody")
            if body:
                for media, content in body.get("content", {}).items():
                    schema = content.get("schema", {})
                    schema = components.get(schema.get("$ref", "").rsplit("/", 1)[-1], schema)
                    required = set(schema.get("required", []))
                    lines += [f"Request body (`{media}`{', required' if body.get('required') else ''}):", "",
                              "| field | required | schema | description |", "|---|---|---|---|"]
                    for name, prop in schema.get("properties", {}).items():
                        lines.append(f"| `{name}` | {'yes' if name in required else 'no'} | "
                                     f"{_cell(_schema_name(prop))} | {_cell(prop.get('description', ''))} |")
                    lines.append("")
            lines += ["| status | meaning | body |", "|---|---|---|"]
            for status, answer in op.get("responses", {}).items():
                media = ", ".join(f"`{m}`" + (f" ({_schema_name(c['schema'])})" if c.get("schema") else "")
                                  for m, c in answer.get("content", {}).items())
                lines.append(f"| {status} | {_cell(answer.get('description', ''))} | {_cell(media)} |")
            lines.append("")
    return "\n".join(lines)


# --- the home page ---------------------------------------------------------------------------------------------
def home_page(readme: str | None = None) -> str:
    """The site's home page: the README, its links made relative to the site (``docs/x.md`` → ``x.md``); a link
    to a file outside ``docs/`` (the example notebook) becomes its path in code, since the site does not hold it."""
    text = (REPO / "README.md").read_text() if readme is None else readme
    text = re.sub(r'src="docs/', 'src="', text)

    def relink(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if target.startswith(("http://", "https://", "#")):
            return match.group(0)
        if target.startswith("docs/") and target != "docs/":
            return f"]({target[len('docs/'):]})".join([f"[{label}", ""])
        return f"{label} (`{target}` in the repository)" if not label.startswith("!") else match.group(0)

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)]+)\)", relink,
                  re.sub(r"!\[([^\]]*)\]\(docs/", r"![\1](", text))


def write_pages() -> None:
    """Add the generated pages to the site being built (run by mkdocs' gen-files plugin)."""
    import mkdocs_gen_files

    document = openapi_document()
    pages = {HOME_PAGE: home_page(), CONFIGURATION_PAGE: configuration_reference(), CLI_PAGE: cli_reference(),
             SERVICE_PAGE: service_reference(document), OPENAPI_FILE: json.dumps(document, indent=2)}
    for page, text in pages.items():
        with mkdocs_gen_files.open(page, "w") as out:
            out.write(text)


if __name__ in ("__main__", "<run_path>"):
    write_pages()
