"""The commands a README shows, read from its ```bash blocks, so that tests run them as written
(a test that types its own copy of a command would not notice the README changing)."""

import re
import shlex
from pathlib import Path


def documented_commands(readme: Path, program: str) -> list[list[str]]:
    """Every command of ``readme``'s ```bash blocks that starts with ``program`` (e.g.
    ``python recipes/mini_corpus/generate.py``), continuation lines joined and trailing
    comments dropped, split into words as the shell would. Raises ``AssertionError`` when
    there is none, naming the README."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and " ".join(words).startswith(program):
                commands.append(words)
    assert commands, f"{readme}: no `{program}` command in a ```bash block"
    return commands
