"""The project's modules import each other without a cycle, and ddpm.py stays a tutorial."""

import ast

from conftest import PROJECT_DIR

MODULES = {path.stem: path for path in PROJECT_DIR.glob("*.py")}


def imports_of(path) -> set[str]:
    """The project modules a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names & MODULES.keys()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A list of modules that import each other in a circle, or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            if cycle := visit(imported):
                return cycle
        path.pop()
        done.add(module)
        return None

    return next(filter(None, map(visit, sorted(graph))), None)


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_one_that_imports_it_back():
    graph = {name: imports_of(path) for name, path in MODULES.items()}
    assert graph["ddpm"] and graph["likelihood"]  # the parser sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_ddpm_py_is_at_most_1000_lines_with_the_loop_under_its_banner():
    # 750 for DDPM, flow matching and EDM; 100 more for reflow (Liu et al. 2023) and the
    # normalised blocks and directional embedding of the MLP; 115 for consistency models (the
    # teacher's own chains, distilled, and the search of the levels to sample on); 20 for
    # the frames on a second thread; 15 for EDM's stable target (Xu et al. 2023); 1 for a Ctrl-C
    # that comes after training: the run is scored and saved first
    lines = (PROJECT_DIR / "ddpm.py").read_text().splitlines()
    assert len(lines) <= 1000
    banner = next(
        i for i, line in enumerate(lines) if line.startswith("# ---") and "Training loop" in line
    )
    loop = next(i for i, line in enumerate(lines) if line.lstrip().startswith("for batch in"))
    assert 0 < loop - banner <= 40
