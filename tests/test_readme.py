"""The README, run: its Python example, its main job (``fastconv demo``, to
at least 97% test accuracy) and every command it shows on the demo's run,
each printing what the README's comment says it prints."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import fastconv

README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGE_PARENT = str(Path(fastconv.__file__).resolve().parents[1])


def readme_section(heading):
    text = README.read_text()
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def python_example():
    section = readme_section("A short example")
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def demo_commands():
    """The indented commands of the block after "After `fastconv demo`", each
    as (argv, the text its comment quotes, or None)."""
    section = readme_section("The command line")
    block = section.split("After `fastconv demo`", 1)[1].split("\n\n", 2)[1]
    commands = []
    for line in block.splitlines():
        command, _, comment = line.strip().partition("#")
        quoted = re.search(r'prints "([^"]+)"', comment)
        commands.append((shlex.split(command), quoted.group(1) if quoted else None))
    return commands


def user_environment(tmp_path):
    # The installed package, not the checkout's source folder; a private data cache.
    return dict(os.environ, PYTHONPATH=PACKAGE_PARENT, FASTCONV_DATA=str(tmp_path / "cache"))


def test_the_python_example_runs(tmp_path):
    done = subprocess.run([sys.executable, "-c", python_example()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=user_environment(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "799,078" in done.stdout and "kernels" in done.stdout


def test_the_readme_lists_the_demo_commands():
    commands = demo_commands()
    assert len(commands) >= 5
    assert all(argv[:1] == ["fastconv"] and "fastconv-demo" in argv for argv, _ in commands)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """`fastconv demo` as a user runs it, in a fresh folder: (folder, its output)."""
    where = tmp_path_factory.mktemp("user")
    done = subprocess.run([sys.executable, "-m", "fastconv.cli", "demo"], cwd=where, capture_output=True,
                          text=True, timeout=900, env=user_environment(where))
    assert done.returncode == 0, done.stderr
    return where, done.stdout


@pytest.mark.slow
def test_the_demo_reaches_97_percent(demo_folder):
    where, out = demo_folder
    report = json.loads((where / "fastconv-demo" / "eval.json").read_text())
    print(f"demo: test accuracy {report['accuracy']:.4f} on {report['images']} images")
    assert report["images"] == 2000 and report["accuracy"] >= 0.97
    assert out.strip().splitlines()[-1] == f"accuracy: {report['accuracy']:.4f}"
    assert (where / "fastconv-demo" / "report.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(demo_commands())),
                         ids=[" ".join(argv[1:3]) for argv, _ in demo_commands()])
def test_each_readme_command_does_what_it_says(demo_folder, index):
    where, _ = demo_folder
    argv, quoted = demo_commands()[index]
    done = subprocess.run([sys.executable, "-m", "fastconv.cli", *argv[1:]], cwd=where, capture_output=True,
                          text=True, timeout=900, env=user_environment(where))
    assert done.returncode == 0, done.stderr
    print(f"{' '.join(argv)}: {done.stdout.strip().splitlines()[-1]}")
    if quoted is not None:
        assert quoted in done.stdout, done.stdout
    if "--out" in argv:
        written = where / argv[argv.index("--out") + 1]
        assert written.is_file() and written.stat().st_size > 1000
