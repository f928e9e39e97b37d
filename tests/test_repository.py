"""The repository keeps its promises to a new user: CI runs the README's test command, the
extras the READMEs install exist, and README's summary of the results is the committed one."""

import json
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert all("\n" not in command for command in commands)


def test_ci_runs_both_quickstart_commands_as_written():
    """CI runs the tests and then the demo, each line exactly as README's Quickstart shows it
    (the demo takes about 11 minutes, too long for the test suite's budget)."""
    demo_command, test_command = _readme_commands()
    assert "pytest" in test_command and "demo.py" in demo_command
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci_lines.index(test_command) < ci_lines.index(demo_command)


def _documented_installs() -> list[tuple[Path, list[str], str]]:
    """(README, extras, trailing comment) of every ``pip install -e ".[...]"`` a README shows."""
    readmes = [REPO / "README.md", *sorted((REPO / "recipes").rglob("README.md"))]
    return [(readme, match.group(1).split(","), match.group(2))
            for readme in readmes
            for match in re.finditer(r'pip install (?:-q )?-e "\.\[([\w,]+)\]"(.*)',
                                     readme.read_text(encoding="utf-8"))]


def test_documented_extras_exist_and_resolve_here():
    """Every extra a README installs is one setup.py declares, every requirement of it is met in
    this environment (CI installs the README's test extras, a superset), and a comment naming
    an extra's packages names exactly them."""
    dist = metadata.distribution("speechbrain-quads")
    declared = set(dist.metadata.get_all("Provides-Extra"))
    requires = [Requirement(line) for line in dist.requires]
    installs = _documented_installs()
    assert {"offline", "demo", "onnx"} <= {extra for _, extras, _ in installs for extra in extras}
    for readme, extras, comment in installs:
        where = readme.relative_to(REPO)
        assert set(extras) <= declared, f"{where}: {extras} not all in {sorted(declared)}"
        for extra in extras:
            wanted = [r for r in requires if r.marker and r.marker.evaluate({"extra": extra})]
            for requirement in wanted:
                found = metadata.version(requirement.name)
                assert requirement.specifier.contains(found, prereleases=True), (
                    f"{where} [{extra}]: {requirement} but {found} is installed")
            named = re.fullmatch(r"\s*#\s*([\w\-, ]+)", comment)
            if named and len(extras) == 1:
                names = {name.strip() for name in named.group(1).split(",")}
                assert names == {canonicalize_name(r.name) for r in wanted}, f"{where}: {comment}"


def test_readme_glance_figures_are_the_committed_results():
    """Every interval and p-value in README's "At a glance" table is one that
    ``benchmarks/results.md`` states, and the k-means ratio is ``quantization.json``'s worst."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    glance = readme.split("### At a glance", 1)[1].split("\n### ", 1)[0]
    results = (REPO / "benchmarks" / "results.md").read_text(encoding="utf-8")
    intervals = re.findall(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", glance)
    p_values = re.findall(r"p = ([0-9.e-]+)\)", glance)
    assert len(intervals) == 14 and len(p_values) == 4
    assert [i for i in intervals if i not in results] == []
    assert [p for p in p_values if f"| {p} |" not in results] == []
    ratios = json.loads((REPO / "benchmarks" / "quantization.json").read_text())
    worst = max(entry["ratio"] for entry in ratios["kmeans_sse_ratio"]["optimal"].values())
    assert f"worst ratio {worst:.4f}" in glance
