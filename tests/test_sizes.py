"""Small units in the runtime (worker/, dev tools aside): a module of at most 400 lines, a class of 150, a
function of 50. Anything over would be listed in OVER with its size, and could only shrink (a ratchet: issue
29 emptied it)."""

import ast

from conftest import ROOT

LIMITS = {"module": 400, "class": 150, "function": 50}
# "kind path[:name]" -> its size, for a unit allowed over its limit for now: none since issue 29 (a unit that
# grows past a limit is split where a second role hides, not listed here).
OVER: dict[str, int] = {}


def sizes() -> dict[str, int]:
    """Every runtime unit over its limit, by "kind path[:name]"."""
    over = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        if "devtools" in path.parts:
            continue
        name, source = path.relative_to(ROOT).as_posix(), path.read_text()
        units = {f"module {name}": len(source.splitlines())}
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                units[f"{kind} {name}:{node.name}"] = node.end_lineno - node.lineno + 1
        over |= {unit: size for unit, size in units.items() if size > LIMITS[unit.split()[0]]}
    return over


def test_no_runtime_unit_grows_past_its_limit_and_the_list_of_those_over_only_shrinks():
    now = sizes()
    new = {unit: size for unit, size in now.items() if unit not in OVER}
    assert not new, f"over the limit {LIMITS}: split them (a second role hides there) {new}"
    grown = {unit: (OVER[unit], size) for unit, size in now.items() if size > OVER[unit]}
    assert not grown, f"grew past their listed size (listed, now): {grown}"
    fits = sorted(set(OVER) - set(now))
    assert not fits, f"within the limit now: take them off OVER {fits}"
