"""The engine and the applets import no I/O: no sockets, PC/SC, TPM or processes.

Adapters (vpcd socket loop, PC/SC, TPM, CLI, test support) import the engine,
never the other way round; this test reads the import statements of every
engine and applet module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the vsc package that are adapters; everything else is engine.
ADAPTERS = {
    "emulator",
    "inproc",
    "testing",
    "demo",
    "fuzz",
    "lifecycle",
    "cli",
    "cliutil",
    "pcsc",
    "share",
    "tpm",
    "store",
}

FORBIDDEN = {
    "socket",
    "socketserver",
    "selectors",
    "ssl",
    "asyncio",
    "subprocess",
    "multiprocessing",
    "smartcard",  # pyscard
    "tpm2_pytss",
    "yubikit",
    "ykman",
}


def engine_modules() -> list[Path]:
    vsc = [
        p
        for p in (ROOT / "vsc").rglob("*.py")
        if p.relative_to(ROOT / "vsc").parts[0].removesuffix(".py") not in ADAPTERS
    ]
    return sorted(vsc + list((ROOT / "applets").rglob("*.py")))


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.update(f".{node.module or alias.name}" for alias in node.names)
    return names


def test_engine_modules_found() -> None:
    names = {p.name for p in engine_modules()}
    assert {"card.py", "apdu.py", "tlv.py", "echo.py"} <= names


@pytest.mark.parametrize("path", engine_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_no_io(path: Path) -> None:
    for name in imported_modules(path):
        top = name.lstrip(".").split(".")[0]
        assert top not in FORBIDDEN, f"{path.name} imports {name}"
        if name.startswith("vsc.") or name.startswith("."):
            assert top not in ADAPTERS, f"{path.name} imports the adapter {name}"


def all_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, also under ``if TYPE_CHECKING:``, as absolute names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module or ""
            if node.level:
                module = f"{base}.{module}".rstrip(".")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_cli_plumbing_is_a_leaf() -> None:
    """The top-level command imports the features' CLIs; they never import it back."""
    assert not {n for n in all_imports(ROOT / "vsc" / "cliutil.py") if n.startswith("vsc")}
    for path in sorted((ROOT / "vsc").rglob("*.py")):
        if path == ROOT / "vsc" / "cli.py":
            continue
        imported = all_imports(path)
        assert "vsc.cli" not in imported, f"{path.relative_to(ROOT)} imports vsc.cli"
        assert not {n for n in imported if n.startswith("vsc.cli.")}, path
