"""README.md and RESULTS.md stay true to the code: their commands parse, their pictures exist."""

import re
import subprocess
import sys

import pytest
from conftest import PROJECT_DIR

README, RESULTS = PROJECT_DIR / "README.md", PROJECT_DIR / "RESULTS.md"
SETUP = "pip install -r requirements.txt && python ddpm.py --dataset dino"
TESTS = "pip install -r requirements.txt pytest hypothesis && python -m pytest"


def commands(text: str) -> list[str]:
    """Each `python X.py ...` command of a page's indented code, its continued lines joined."""
    code = "\n".join(line[4:] for line in text.splitlines() if line.startswith("    "))
    code = code.replace("\\\n", " ")
    return re.findall(r"python (\w+\.py[^\n;&]*)", code)


def test_the_readme_is_a_page_a_newcomer_finishes():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert f"    {SETUP}\n" in text and f"    {TESTS}\n" in text
    assert (PROJECT_DIR / ".ci" / "run").read_text().count("python -m pytest") == 1


@pytest.mark.parametrize("page", [README, RESULTS], ids=lambda page: page.name)
def test_every_picture_a_page_shows_is_in_static(page):
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())
    assert pictures
    for picture in pictures:
        assert (PROJECT_DIR / picture).is_file(), picture


def test_every_option_a_command_uses_is_one_its_script_has():
    helps = {}

    def options_of(script: str) -> str:  # ablate.py passes the options it lacks to ddpm.py
        if script not in helps:
            helps[script] = subprocess.run(
                [sys.executable, str(PROJECT_DIR / script), "-h"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        return helps[script] + (options_of("ddpm.py") if script == "ablate.py" else "")

    scripts = set()
    for page in (README, RESULTS):
        for command in commands(page.read_text()):
            script, *words = command.split()
            scripts.add(script)
            for option in (word for word in words if word.startswith("--")):
                assert re.search(rf"{option}\b", options_of(script)), f"{page.name}: {command}"
    assert {"ddpm.py", "figures.py", "likelihood.py", "evaluate.py", "ablate.py"} <= scripts
