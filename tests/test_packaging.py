"""Packaging and the API reference. The wheel that ``pip install .`` builds holds the whole package
and nothing else (no tests, no benchmarks), with its license, type marker and command; installed
away from the checkout it imports and runs. ``make docs`` builds every page strictly and offline,
and each public name of each area shows up on its page with its docstring."""

from __future__ import annotations

import configparser
import email.parser
import html
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

import encoderkit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "encoderkit"
AREAS = ["layers", "models", "training", "export", "views"]
PAGES = {
    "encoderkit": "encoderkit/index.html",
    **{f"encoderkit.{area}": f"encoderkit/{area}/index.html" for area in AREAS},
}
# A proxy nobody listens on: a build that reached for the network would fail, not fetch.
DEAD_PROXY = "http://127.0.0.1:9"
OFFLINE = {**os.environ, "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY, "no_proxy": ""}
OFFLINE |= {name.upper(): OFFLINE[name] for name in ("http_proxy", "https_proxy", "no_proxy")}


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env or OFFLINE, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stderr}"
    return done.stdout + done.stderr


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of what a source distribution holds, so that nothing else in
    the checkout (build/, egg-info, tests/) can leak in or paper over a gap."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        PACKAGE, source / "src" / "encoderkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    run(
        sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation",
        "--no-index", "--quiet", "-w", tmp / "dist", cwd=tmp,
    )  # fmt: skip
    (built,) = (tmp / "dist").glob("*.whl")
    return built


def test_wheel_holds_every_module_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    info = f"encoderkit-{encoderkit.__version__}.dist-info"
    in_tree = {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {name for name in names if not name.startswith(info)} == in_tree
    assert "encoderkit/py.typed" in in_tree  # users' type checkers read the hints (PEP 561)
    assert {name.split("/")[0] for name in names} == {"encoderkit", info}  # no tests, benchmarks


def test_wheel_metadata_names_the_license_and_the_command(wheel: Path) -> None:
    info = f"encoderkit-{encoderkit.__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        license_text = archive.read(f"{info}/licenses/LICENSE").decode()
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the encoderkit authors\n")
    assert (metadata["License-Expression"], metadata["License-File"]) == ("MIT", "LICENSE")
    assert metadata["Version"] == encoderkit.__version__
    assert dict(entry_points["console_scripts"]) == {"encoderkit": "encoderkit.cli:main"}


def test_installed_wheel_runs_away_from_the_checkout(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from encoderkit.cli import build_parser

    target = tmp_path / "site-packages"
    run(
        sys.executable, "-m", "pip", "install", wheel, "--no-deps", "--no-index", "--quiet",
        "--target", target, cwd=tmp_path,
    )  # fmt: skip
    # The installed copy comes before the editable checkout on sys.path (PYTHONPATH precedes .pth)
    env = {**OFFLINE, "PYTHONPATH": str(target), "COLUMNS": "100"}
    code = "import encoderkit; print(encoderkit.__file__)"
    where = run(sys.executable, "-c", code, cwd=tmp_path, env=env)
    assert Path(where.strip()) == target / "encoderkit" / "__init__.py"
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps the help to the terminal's width
    usage = run(target / "bin" / "encoderkit", "--help", cwd=tmp_path, env=env)
    assert usage == build_parser().format_help()
    assert usage.startswith("usage: encoderkit")


# --- the API reference --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make docs`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    run(sys.executable, "-m", "mkdocs", "build", "--strict", "-f", ROOT / "mkdocs.yml", "-d", out,
        cwd=ROOT)  # fmt: skip
    return out


def page_text(page: str) -> str:
    """What a reader sees on a page, with all white space removed (Markdown rewraps lines)."""
    return "".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


@pytest.mark.parametrize("module_name", PAGES)
def test_every_public_name_is_on_its_page_with_its_docstring(site: Path, module_name: str) -> None:
    markdown_docstring = load_script("griffe_rst").markdown_docstring
    page = (site / PAGES[module_name]).read_text()
    text = page_text(page)
    module = importlib.import_module(module_name)
    shown = 0
    for name in module.__all__:
        obj = getattr(module, name)
        # head_report is also its module's name, so its page shows it under the module's path
        anchors = {f'id="{module_name}.{name}"', f'id="{getattr(obj, "__module__", "")}.{name}"'}
        assert any(anchor in page for anchor in anchors), f"{module_name}.{name} not on its page"
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__doc__:
            first = markdown_docstring(inspect.cleandoc(obj.__doc__)).split("\n\n")[0]
            assert "".join(first.replace("`", "").split()) in text, f"{name}: {first!r}"
            shown += 1
    assert shown >= len(module.__all__) // 2  # most names are classes and functions


def test_top_level_page_shows_run_fit_and_their_members(site: Path) -> None:
    page = (site / PAGES["encoderkit"]).read_text()
    members = [f"Run.{name}" for name, _ in inspect.getmembers(encoderkit.Run) if name[0] != "_"]
    assert "Run.predict" in members
    for name in ["Run", "fit", "load_run", "EncoderConfig.bert_base", *members]:
        assert f'id="encoderkit.{name}"' in page, name


def test_training_page_shows_the_python_api_example(site: Path) -> None:
    from encoderkit.training import api

    page = (site / PAGES["encoderkit.training"]).read_text()
    doc = inspect.cleandoc(api.__doc__ or "")
    example = doc[doc.index(">>>") :].split("\n\n")[0]
    assert example.startswith(">>> run = encoderkit.fit(")
    blocks = re.findall(r'<code class="language-pycon">(.*?)</code>', page, flags=re.DOTALL)
    assert [html.unescape(block).strip() for block in blocks] == [example]
    assert 'href="../#encoderkit.fit"' in page  # an autoref to the top-level page


def test_pages_load_nothing_from_the_network(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert {path.relative_to(site).as_posix() for path in pages} >= {"index.html", *PAGES.values()}
    for path in pages:
        fetched = re.findall(
            r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"https?:", path.read_text()
        )
        assert fetched == [], path


def test_strict_build_fails_on_a_broken_reference(tmp_path: Path) -> None:
    """The same mkdocs.yml over a copy of the pages with one reference to a missing name."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    for name in ("src", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "docs" / "api", tmp_path / "docs" / "api")
    with (tmp_path / "docs" / "api" / "index.md").open("a") as index:
        index.write("\nSee [fit][encoderkit.no_such_name].\n")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=tmp_path, env=OFFLINE, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Could not find cross-reference target 'encoderkit.no_such_name'" in done.stderr


def test_rst_habits_become_markdown() -> None:
    markdown_docstring = load_script("griffe_rst").markdown_docstring
    assert markdown_docstring("See :class:`Encoder`, :func:`~encoderkit.fit` and ``x``.") == (
        "See `Encoder`, `fit` and ``x``."
    )
    doc = "Use it:\n\n    >>> run = fit()\n    >>> run.classes\n    ['neg', 'pos']\n\nThen more."
    assert markdown_docstring(doc) == (
        "Use it:\n\n    ```pycon\n    >>> run = fit()\n    >>> run.classes\n    ['neg', 'pos']\n"
        "    ```\n\nThen more."
    )
    assert markdown_docstring(">>> 1 + 1\n2") == "```pycon\n>>> 1 + 1\n2\n```"
