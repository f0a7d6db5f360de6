"""Every ```python block of the book (book/docs/*.md) and of README.md runs.

Each block runs on its own, in a fresh namespace, in a temporary working
directory, with top-level ``await`` allowed and fresh keys in the
``AXESS_*_KEYS`` variables (what ``Keyring.from_env()`` reads). A block
that defines an ASGI ``app`` is then started (its lifespan) and asked for
``/healthz`` and ``/`` when it has those routes.

Files a chapter's blocks read are written from the chapter's own blocks
of another language (:data:`DATA_FILES`): the policies and schema of the
Cedar chapter are the ones it shows.

A block that is deliberately a fragment is marked, visibly in the source,
by the line ``<!-- snippet: fragment -->`` right before it; it must still
compile. Complete blocks must not name anything they do not define or import
(ruff's F821 over every block).

The test example of the Testing chapter is also run the way the chapter
says: by ``python -m pytest`` in a fresh directory with the chapter's
``pyproject.toml``.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import httpx
import pytest
from backend_policy import MYSQL_DSN, POSTGRES_DSN
from starlette.applications import Starlette
from starlette.routing import Route

from axess import Key

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (*sorted((ROOT / "book" / "docs").glob("*.md")), ROOT / "README.md")
FRAGMENT_MARK = "<!-- snippet: fragment -->"
KEY_VARS = {
    "AXESS_SIGNING_KEYS": "s1",
    "AXESS_ENVELOPE_KEYS": "e1",
    "AXESS_FINGERPRINT_KEYS": "f1",
    "AXESS_CSRF_KEYS": "c1",
    "AXESS_DEVICE_KEYS": "d1",
}
#: What the book's snippets read from the environment besides the keys. No
#: snippet connects (no snippet ``app`` runs on a server store), so servers
#: need not be up: the SQL URLs are the test suite's (see README), Valkey's a
#: production-shaped one (axess refuses plaintext Valkey without a password).
SNIPPET_ENV = {
    "DATABASE_URL": POSTGRES_DSN,
    "MYSQL_URL": MYSQL_DSN,
    "AXESS_VALKEY_URL": "valkeys://:not-a-real-password@valkey.internal:6380/0",
    "AXESS_VALKEY_PASSWORD": "not-a-real-password",
}
#: chapter -> {file its snippets read: the fence language of the blocks it joins}
DATA_FILES = {
    "authz.md": {"policies/app.cedar": "cedar", "policies/app.cedarschema": "cedarschema"},
}


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    fragment: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_in(path: Path, language: str) -> list[Snippet]:
    """The fenced blocks of ``language`` in ``path``, in order."""
    found: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```" + language:
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = [line.strip() for line in lines[:start] if line.strip()]
        fragment = bool(before) and before[-1] == FRAGMENT_MARK
        code = "\n".join(lines[start + 1 : end]) + "\n"
        found.append(Snippet(path, start + 1, code, fragment))
        i = end + 1
    return found


SNIPPETS = [s for path in SOURCES for s in blocks_in(path, "python")]


def write_data_files(path: Path, into: Path) -> None:
    for name, language in DATA_FILES.get(path.name, {}).items():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(b.code for b in blocks_in(path, language)), encoding="utf-8")


def test_the_book_has_snippets_and_few_fragments() -> None:
    assert len(SNIPPETS) > 30
    fragments = [s.name for s in SNIPPETS if s.fragment]
    assert len(fragments) <= len(SNIPPETS) // 5, fragments


def compiled(snippet: Snippet) -> CodeType:
    code: CodeType = compile(
        snippet.code, snippet.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    return code


async def drive(app: Starlette) -> None:
    """Start ``app`` and ask for its health and home page (over https: cookies are Secure)."""
    paths = {route.path for route in app.routes if isinstance(route, Route)}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            if "/healthz" in paths:
                r = await c.get("/healthz")
                assert r.status_code == 200 and r.json()["status"] == "healthy", r.text
            if "/" in paths:
                r = await c.get("/")
                assert r.status_code == 200, r.text


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
async def test_snippet_runs(
    snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = compiled(snippet)
    if snippet.fragment:
        return
    monkeypatch.chdir(tmp_path)
    write_data_files(snippet.path, tmp_path)
    for var, kid in KEY_VARS.items():
        monkeypatch.setenv(var, Key.generate(kid).encode())
    for var, value in SNIPPET_ENV.items():
        monkeypatch.setenv(var, value)
    namespace: dict[str, object] = {"__name__": "__book__"}
    result = eval(code, namespace)  # the book's own code
    if inspect.isawaitable(result):
        await result
    app = namespace.get("app")
    if isinstance(app, Starlette):
        await drive(app)


def test_fragment_marks_sit_right_before_a_python_block() -> None:
    """A mark that no block follows is a typo that would silently run nothing."""
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(re.escape(FRAGMENT_MARK), text):
            after = text[match.end() :].lstrip()
            assert after.startswith("```python"), f"{path.name}: stray {FRAGMENT_MARK}"


def test_complete_snippets_use_no_undefined_name(tmp_path: Path) -> None:
    """Catches what running cannot: a name used only inside a function the
    block defines but never calls."""
    files = {}
    for number, snippet in enumerate(s for s in SNIPPETS if not s.fragment):
        path = tmp_path / f"snippet_{number}.py"
        path.write_text(snippet.code, encoding="utf-8")
        files[path.name] = snippet.name
    ruff = str(Path(sys.executable).with_name("ruff"))
    options = ["--isolated", "--no-cache", "--select", "F821", "--output-format", "json"]
    result = subprocess.run(
        [ruff, "check", *options, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        f"{files[Path(p['filename']).name]} line {p['location']['row']}: {p['message']}"
        for p in json.loads(result.stdout)
    ]
    assert problems == []


def test_the_testing_chapter_example_passes_under_pytest(tmp_path: Path) -> None:
    chapter = ROOT / "book" / "docs" / "testing.md"
    (test,) = blocks_in(chapter, "python")
    (config,) = blocks_in(chapter, "toml")
    (tmp_path / "test_app.py").write_text(test.code, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(config.code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
