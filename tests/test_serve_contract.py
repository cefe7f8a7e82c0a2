"""The OpenAPI document `tailor serve` publishes is its contract: schemathesis fuzzes a live server on loopback
from that document alone, and every answer must be one the document declares (status, content type, body
schema, required headers). A 500, or a status a route answers without declaring it, fails the test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from test_serve_live import LiveServer, own_run  # noqa: F401 (own_run: a fixture)

INSTALL_HINT = "the contract test needs schemathesis 4: pip install -e '.[dev]' (or pip install 'schemathesis>=4')"

#: what every answer is checked for; 500 is never declared, so not_a_server_error and the status check both flag it
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
#: test cases per operation and phase: enough to reach each declared status but 503 (test_serve.py fills a queue
#: for that one) and every success, uploads of the fuzzer's own 1-px sample images included; few enough for ~10 s
MAX_EXAMPLES = 20
SEED = 20240601


def fuzz(server: LiveServer, workdir: Path, *options: str, checks: list[str] = CHECKS) -> subprocess.CompletedProcess:
    """``schemathesis run`` on ``server``'s /openapi.json: deterministic (a fixed seed, no example database
    carried between runs), offline (the server on loopback is all it talks to)."""
    if importlib.util.find_spec("schemathesis") is None:
        pytest.fail(INSTALL_HINT)
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis(prog_name='st')",
               "run", f"{server.url}/openapi.json", "--checks", ",".join(checks), "--max-examples", str(MAX_EXAMPLES),
               "--seed", str(SEED), "--generation-database", "none", "--phases", "examples,coverage,fuzzing,stateful",
               "--workers", "1", "--request-timeout", "60", "--no-color", *options]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)


def _passed(result: subprocess.CompletedProcess) -> bool:
    if result.returncode != 0:
        print(result.stdout[-20000:], result.stderr[-5000:], sep="\n")
    return result.returncode == 0


@pytest.mark.slow
def test_a_server_with_a_token_answers_only_what_its_document_declares(own_run, search_run, tmp_path):  # noqa: F811
    """A classifier with a catalog index and a token: every route, the write routes with the token (and,
    through ignored_auth, without it: a 401 each time)."""
    token = "contract-test-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    server = LiveServer(str(own_run), "--search", str(search_run), "--token-file", str(tmp_path / "token"),
                        log=tmp_path / "serve.log")
    try:
        result = fuzz(server, tmp_path, "--header", f"Authorization: Bearer {token}",
                      checks=[*CHECKS, "ignored_auth"])
    finally:
        assert server.stop()
    assert _passed(result), "schemathesis found answers the OpenAPI document does not declare (output above)"
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_a_server_without_a_token_on_loopback_answers_only_what_its_document_declares(search_run, tmp_path):
    """A metric-learning run alone, no token: look-alikes only (/predict and /enroll say 404), writes open on
    loopback, so its document declares no 401 and no 403 and the fuzzer must never meet one."""
    server = LiveServer(str(search_run), log=tmp_path / "serve.log")
    try:
        result = fuzz(server, tmp_path)
    finally:
        assert server.stop()
    assert _passed(result), "schemathesis found answers the OpenAPI document does not declare (output above)"
