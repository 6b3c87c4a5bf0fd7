"""Architecture boundaries the brief sets: analysis never reads the simulator; pages hold no SQL."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_analysis_never_imports_the_simulator() -> None:
    files = sorted((ROOT / "analysis").glob("*.py"))
    assert files
    for f in files:
        bad = {m for m in _imports(f) if m.startswith("collector.simulator")}
        assert not bad, f"{f.name} imports {bad}: analysis must learn the economics from recorded data"


def test_dashboard_pages_hold_no_sql() -> None:
    pages = sorted((ROOT / "dashboards" / "views").glob("*.py"))
    assert pages
    for f in pages:
        text = f.read_text()
        assert "duckdb" not in _imports(f), f"{f.name} talks to DuckDB itself"
        assert "SELECT " not in text.upper().replace("SELECTBOX", ""), f"{f.name} holds SQL"
