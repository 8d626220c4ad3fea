"""Every command README.md shows works exactly as written from a fresh clone: each `python -m core ...`
and `python bench/*.py` command answers --help, `core` imports from any folder (pip install -e .), and
the two commands at the top are `make run` and `make test`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands(prefix: str) -> list[str]:
    """Commands starting with `prefix` in README's code blocks and inline code, without arguments after flags."""
    found = set()
    for m in re.finditer(re.escape(prefix) + r"[^`\n|#]*", README):
        found.add(m.group(0).strip())
    return sorted(found)


def core_command_heads() -> list[tuple[str, ...]]:
    """(command[, subcommand]) pairs named in README, e.g. ("zoo", "build"), ("eval",)."""
    heads = set()
    for cmd in readme_commands("python -m core "):
        words = cmd.split()[3:]
        if not words or words[0].startswith("-"):
            continue
        head = [words[0]]
        if len(words) > 1 and not words[1].startswith("-") and words[1] not in ("|", "..."):
            head.append(words[1])
        heads.add(tuple(head))
    return sorted(heads)


def test_readme_starts_with_the_two_commands():
    top = README[: README.index("\n## ")] if "\n## " in README else README
    assert "make run" in top and "make test" in top


def test_readme_names_core_commands():
    assert len(core_command_heads()) >= 5


# One child process runs every --help (importing torch once): `python -m core X --help` from a folder outside the
# clone, `python bench/Y.py --help` from the clone, exactly as a user types them, each judged by its exit status.
_HELP_RUNNER = r"""
import contextlib, io, json, os, runpy, sys
from core.__main__ import main
results = {}
for item in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            if item[0] == "core":
                os.chdir(item[1])
                code = main(item[2:] + ["--help"])
            else:
                os.chdir(item[1])
                sys.argv = [item[2], "--help"]
                runpy.run_path(item[2], run_name="__main__")
                code = 0
        except SystemExit as e:
            code = e.code or 0
        except BaseException as e:
            code = repr(e)
    results[" ".join(item[2:])] = [code, "usage" in out.getvalue().lower()]
print(json.dumps(results))
"""


def bench_scripts() -> list[str]:
    return sorted({m.group(1) for m in re.finditer(r"python (bench/\w+\.py)", README)})


def test_readme_names_benchmarks():
    assert bench_scripts()


def test_every_readme_command_answers_help(tmp_path):
    from core.cli import COMMANDS

    heads = core_command_heads()
    missing = [h[0] for h in heads if h[0] not in COMMANDS]
    assert not missing, f"README names `python -m core {missing}`, which do not exist"
    absent = [s for s in bench_scripts() if not (ROOT / s).is_file()]
    assert not absent, f"README names {absent}, which do not exist"
    items = [["core", str(tmp_path), *h] for h in heads] + [["bench", str(ROOT), s] for s in bench_scripts()]
    out = subprocess.run(
        [sys.executable, "-c", _HELP_RUNNER, json.dumps(items)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {}
    for name, (code, usage) in results.items():
        words = name.split()
        if code != 0 and len(words) == 2 and not words[0].startswith("bench/"):
            # `zoo build | info` alternatives: a subcommand README shows only as an alternative word
            code, usage = results.get(words[0], [0, True]) if words[0] in results else (code, usage)
        if code != 0 or not usage:
            bad[name] = code
    assert not bad, f"commands in README that do not answer --help: {bad}"


def test_core_imports_from_a_folder_outside_the_repository(tmp_path):
    """A notebook outside the clone: `import core` works (make installs the project with pip install -e .)."""
    code = "import core, pathlib; print(pathlib.Path(core.__file__).resolve().parent); print(callable(core.merge))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "True"


def test_the_readme_spec_and_model_set_examples_parse(tmp_path):
    """The JSON examples README shows are valid: the spec for eval/merge and the model-set layout."""
    from core.spec import MergeSpec, RunConfig

    blocks = re.findall(r"```json\n(.*?)```", README, re.S)
    specs = [json.loads(b) for b in blocks if '"merge"' in b]
    assert specs, "README shows no spec JSON for python -m core merge/eval"
    for d in specs:
        cfg = RunConfig.from_dict(d)
        assert isinstance(cfg.merge, MergeSpec)
    sets = [json.loads(b) for b in blocks if '"finetuned"' in b and '"tasks"' in b]
    assert sets and all({"base", "finetuned", "tasks"} <= set(d) for d in sets)
