"""Per-job environments on the workstation: the spec block, env_hash, resolution with uv, the wheelhouse.

Resolution runs the real uv against a folder of tiny wheels made here, with
no index at all (environments.no_index): nothing reaches PyPI.
"""

from __future__ import annotations

import hashlib
import os
import stat
import re
import tarfile
from pathlib import Path

import pytest

from envwheels import make_wheel
from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.models import NodePython, PinnedWheel
from mlfleet.core.environments.identity import env_hash
from mlfleet.core.environments.prepare import choose_python, requirements_text
from mlfleet.core.environments.resolve import (IndexSettings, ResolutionError, ResolvedWheel, Resolver, Target,
                                               first_sentence, parse_pylock, uv_platform)
from mlfleet.core.environments.wheelhouse import WheelFetchError, Wheelhouse
from mlfleet.core.jobs.spec import load_job_spec

TARGET = Target(python_version="3.11.2", platform="x86_64-manylinux_2_36")


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "tinypkg", "1.0", {"tinypkg/__init__.py": "VALUE = 1\n"}, requires=["tinydep>=1"])
    make_wheel(folder, "tinypkg", "0.9", {"tinypkg/__init__.py": "VALUE = 0\n"})
    make_wheel(folder, "tinydep", "2.0", {"tinydep/__init__.py": "X = 2\n"})
    return folder


def resolver(tmp_path: Path, wheels: Path) -> Resolver:
    return Resolver(tmp_path / "resolutions", IndexSettings(no_index=True, find_links=(str(wheels),)),
                    tmp_path / "uv-cache")


# ------------------------------------------------------------------ the spec block

def spec_error(tmp_path: Path, body: str) -> str:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ncommand: [python, train.py]\n" + body)
    with pytest.raises(SpecError) as caught:
        load_job_spec(path)
    return str(caught.value)


def test_an_environment_block_is_read_as_written(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("tinypkg\n")
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ncommand: x\nenvironment:\n  python: 3.10\n  requirements: requirements.txt\n"
                    "  setup: [echo ready]\n")
    spec = load_job_spec(path)
    assert spec.environment is not None and spec.environment.python == "3.10"  # not YAML's 3.1
    assert spec.environment.requirements == "requirements.txt" and spec.builds_environment
    inherit = tmp_path / "inherit.yaml"
    inherit.write_text("name: j\ncommand: x\nenvironment: {inherit: true}\n")
    assert not load_job_spec(inherit).builds_environment


def test_a_spec_without_environment_keeps_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: j\ncommand: [python, train.py]\n")
    spec = load_job_spec(path)
    import msgspec
    from mlfleet.core.base.models import to_plain

    plain = to_plain(spec)
    del plain["environment"], plain["sweep"], plain["service"]  # what a spec looked like before these fields existed
    assert spec.content_hash() == hashlib.sha256(msgspec.json.encode(plain, order="sorted")).hexdigest()


def test_spec_mistakes_are_one_sentence_at_their_line(tmp_path: Path) -> None:
    both = spec_error(tmp_path, "environment:\n  requirements: [numpy]\n  project: .\n")
    assert "job.yaml:5: environment.project: cannot come with requirements" in both
    inherit = spec_error(tmp_path, "environment:\n  inherit: true\n  python: '3.11'\n")
    assert "job.yaml:4: environment.inherit: is true" in inherit and "python would have no effect" in inherit
    version = spec_error(tmp_path, "environment:\n  python: '2.7'\n")
    assert "job.yaml:4: environment.python: '2.7' is not a Python version" in version
    option = spec_error(tmp_path, "environment:\n  requirements: [numpy, --index-url=http://x]\n")
    assert "environment.requirements[1]" in option and "installer option" in option
    missing = spec_error(tmp_path, "environment:\n  requirements: reqs.txt\n")
    assert "job.yaml:4: environment.requirements: 'reqs.txt' is not a file in workdir" in missing
    outside = spec_error(tmp_path, "environment:\n  requirements: ../reqs.txt\n")
    assert "is not inside the workdir" in outside
    project = spec_error(tmp_path, "environment:\n  project: .\n")
    assert "has no pyproject.toml and no uv.lock" in project
    typo = spec_error(tmp_path, "environment:\n  requirments: [numpy]\n")
    assert "environment.requirments: unknown field; did you mean 'requirements'?" in typo


# ------------------------------------------------------------------ env_hash

def wheel(name: str, version: str, sha: str) -> PinnedWheel:
    return PinnedWheel(name=name, version=version, filename=f"{name}-{version}-py3-none-any.whl", sha256=sha, size=1)


def test_env_hash_is_stable_and_order_free() -> None:
    a, b = wheel("numpy", "2.4.6", "a" * 64), wheel("pandas", "3.1.1", "b" * 64)
    first = env_hash("3.11.2", "x86_64-manylinux_2_36", [a, b], ["echo hi"])
    assert first == env_hash("3.11.2", "x86_64-manylinux_2_36", [b, a], ["echo hi"])
    # Pinned: a change of this value makes every built environment on every node be built again
    # (bump identity.LAYOUT on purpose instead, and update this).
    assert first == "d4905feee5e7dca402e8bb8060012290bf4ab25bde9ac572b3b8430e3f664951"


def test_env_hash_changes_with_everything_that_changes_the_environment() -> None:
    a, b = wheel("numpy", "2.4.6", "a" * 64), wheel("pandas", "3.1.1", "b" * 64)
    base = env_hash("3.11.2", "x86_64-manylinux_2_36", [a, b], ["echo hi"])
    others = {
        env_hash("3.11.7", "x86_64-manylinux_2_36", [a, b], ["echo hi"]),  # interpreter
        env_hash("3.11.2", "x86_64-manylinux_2_28", [a, b], ["echo hi"]),  # platform
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a], ["echo hi"]),  # a package less
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a, wheel("pandas", "3.1.2", "b" * 64)], ["echo hi"]),
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a, wheel("pandas", "3.1.1", "c" * 64)], ["echo hi"]),
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a, b], []),  # setup
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a, b], ["echo hi", "echo again"]),
        env_hash("3.11.2", "x86_64-manylinux_2_36", [a, b], ["echo hi"], implementation="pypy"),
    }
    assert base not in others and len(others) == 8


# ------------------------------------------------------------------ resolution

def test_resolution_pins_every_wheel_with_its_hash_and_is_cached(tmp_path: Path, wheels: Path) -> None:
    r = resolver(tmp_path, wheels)
    found = r.resolve("tinypkg\n", TARGET)
    assert [(w.wheel.name, w.wheel.version) for w in found] == [("tinydep", "2.0"), ("tinypkg", "1.0")]
    for w in found:
        data = (wheels / w.wheel.filename).read_bytes()
        assert w.wheel.sha256 == hashlib.sha256(data).hexdigest() and w.wheel.size == len(data)
    cached = list((tmp_path / "resolutions").iterdir())
    assert len(cached) == 1 and stat.S_IMODE(cached[0].stat().st_mode) == 0o600
    hidden = wheels.rename(wheels.with_name("hidden"))  # uv, were it asked again, would find none of them
    try:
        assert r.resolve("tinypkg\n", TARGET) == found  # no uv this time: the cached resolution
        with pytest.raises(ResolutionError):  # what asking uv gives now (so the line above did not)
            r.resolve("tinydep\n", TARGET)
    finally:
        hidden.rename(wheels)
    assert [w.wheel.version for w in r.resolve("tinypkg==0.9\n", TARGET)] == ["0.9"]


def test_a_misspelt_or_impossible_requirement_is_one_sentence(tmp_path: Path, wheels: Path) -> None:
    r = resolver(tmp_path, wheels)
    with pytest.raises(ResolutionError) as misspelt:
        r.resolve("tinypkgg\n", TARGET)
    message = str(misspelt.value)
    assert message.startswith("Because tinypkgg was not found") and message.endswith("unsatisfiable.")
    assert "\n" not in message
    with pytest.raises(ResolutionError) as impossible:
        r.resolve("tinypkg==99\n", TARGET)
    assert "tinypkg==99" in str(impossible.value) and "\n" not in str(impossible.value)
    assert not list((tmp_path / "resolutions").glob("*.json"))  # failures are not cached


def test_first_sentence_prefers_the_cause() -> None:
    assert first_sentence("error: No solution found\n  cause: Because x was not found, no.\n  hint: y") == \
        "Because x was not found, no."
    assert first_sentence("error: The lockfile at `uv.lock` needs to be updated\n") == \
        "The lockfile at `uv.lock` needs to be updated"
    assert first_sentence("") == "uv failed without saying why"


def test_one_wheel_per_package_the_highest_manylinux_that_fits() -> None:
    text = """lock-version = "1.0"
[[packages]]
name = "UV_Thing"
version = "0.13.9"
wheels = [
  { url = "https://x/uv_thing-0.13.9-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl", size = 5, hashes = { sha256 = "AA" } },
  { url = "https://x/uv_thing-0.13.9-py3-none-manylinux_2_28_aarch64.whl", size = 6, hashes = { sha256 = "BB" } },
  { url = "https://x/uv_thing-0.13.9-py3-none-any.whl", size = 7, hashes = { sha256 = "CC" } },
]
"""
    [only] = parse_pylock(text, "aarch64-manylinux_2_36")
    assert only.wheel.name == "uv-thing" and only.wheel.sha256 == "bb" and only.wheel.size == 6
    assert only.wheel.filename == "uv_thing-0.13.9-py3-none-manylinux_2_28_aarch64.whl"


def test_the_platform_uv_knows() -> None:
    assert uv_platform("x86_64-manylinux_2_36") == "x86_64-manylinux_2_36"
    assert uv_platform("x86_64-manylinux_2_29") == "x86_64-manylinux_2_28"
    assert uv_platform("aarch64-manylinux_2_45") == "aarch64-manylinux_2_40"
    assert uv_platform("x86_64-manylinux_2_20") == "x86_64-manylinux_2_17"


def test_the_interpreter_chosen_and_the_sentence_when_none_fits() -> None:
    pythons = [NodePython(path="/usr/bin/python3", version="3.11.2"),
               NodePython(path="/opt/py/3.11.7/bin/python3", version="3.11.7"),
               NodePython(path="/opt/py/3.9.18/bin/python3", version="3.9.18")]
    assert choose_python(pythons, None, "gpu1").path == "/usr/bin/python3"
    assert choose_python(pythons, "3.11", "gpu1").version == "3.11.7"
    assert choose_python(pythons, "3.11.2", "gpu1").version == "3.11.2"
    assert choose_python(pythons, "3", "gpu1").version == "3.11.7"
    with pytest.raises(ResolutionError, match=r"^gpu1 has no Python 3.12 \(it has 3.9.18, 3.11.2, 3.11.7\)"):
        choose_python(pythons, "3.12", "gpu1")
    with pytest.raises(ResolutionError):
        choose_python(pythons, "3.1", "gpu1")  # a prefix is a whole component: 3.1 is not 3.11


def test_requirements_come_from_the_code_snapshot(tmp_path: Path) -> None:
    from mlfleet.core.base.models import Environment

    src = tmp_path / "src"
    src.mkdir()
    (src / "reqs.txt").write_text("tinypkg\n")
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "reqs.txt", arcname="reqs.txt")
    assert requirements_text(Environment(requirements="./reqs.txt"), archive) == ("tinypkg\n", None)
    assert requirements_text(Environment(requirements=["a", "b>=2"]), None) == ("a\nb>=2\n", None)
    with pytest.raises(ResolutionError, match="other.txt is not in the job's code snapshot"):
        requirements_text(Environment(requirements="other.txt"), archive)


# ------------------------------------------------------------------ the wheelhouse

def test_the_wheelhouse_fetches_each_wheel_once_checks_it_and_keeps_it_private(tmp_path: Path, wheels: Path) -> None:
    found = resolver(tmp_path, wheels).resolve("tinypkg\n", TARGET)
    house = Wheelhouse(tmp_path / "data" / "wheelhouse" / "sha256")
    paths = house.ensure(found)
    for w, path in zip(found, paths):
        assert path.name == w.wheel.sha256 and hashlib.sha256(path.read_bytes()).hexdigest() == w.wheel.sha256
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(house.root.stat().st_mode) == 0o700
    inode = paths[0].stat().st_ino
    (wheels / found[0].wheel.filename).unlink()  # a second ensure never goes back to the source
    assert house.ensure(found)[0].stat().st_ino == inode
    assert sorted(p.name for p in house.root.iterdir()) == sorted(w.wheel.sha256 for w in found)


def test_a_wheel_whose_bytes_differ_from_the_pin_is_refused(tmp_path: Path, wheels: Path) -> None:
    [tinydep] = [w for w in resolver(tmp_path, wheels).resolve("tinypkg\n", TARGET) if w.wheel.name == "tinydep"]
    (wheels / tinydep.wheel.filename).write_bytes(b"not the wheel")
    house = Wheelhouse(tmp_path / "house")
    with pytest.raises(WheelFetchError, match="is not the file the resolution pinned"):
        house.ensure_one(tinydep)
    assert not house.has(tinydep.wheel.sha256) and not [p for p in house.root.iterdir()]  # no partial left


def test_find_links_folders_are_used_before_the_url(tmp_path: Path, wheels: Path) -> None:
    [tinydep] = [w for w in resolver(tmp_path, wheels).resolve("tinypkg\n", TARGET) if w.wheel.name == "tinydep"]
    unreachable = ResolvedWheel(wheel=tinydep.wheel, url="https://127.0.0.1:9/tinydep-2.0-py3-none-any.whl")
    house = Wheelhouse(tmp_path / "house", find_links=[str(wheels)])
    assert house.ensure_one(unreachable).is_file()
    bare = Wheelhouse(tmp_path / "bare")
    with pytest.raises(WheelFetchError, match="fetching tinydep-2.0-py3-none-any.whl from 127.0.0.1:9 failed"):
        bare.ensure_one(unreachable)


def test_linking_into_the_local_agents_wheelhouse(tmp_path: Path, wheels: Path) -> None:
    found = resolver(tmp_path, wheels).resolve("tinypkg\n", TARGET)
    house = Wheelhouse(tmp_path / "house")
    house.ensure(found)
    node = tmp_path / "agent" / "wheelhouse"
    for w in found:
        placed = house.link_into(w.wheel, node)
        assert placed.read_bytes() == house.path(w.wheel.sha256).read_bytes()
        assert os.path.samestat(placed.stat(), house.path(w.wheel.sha256).stat())  # a hard link, no copy


# ------------------------------------------------------------------ the documented specs

def test_the_job_specs_in_docs_environments_md_validate(tmp_path: Path) -> None:
    """Every job spec shown in docs/environments.md loads as written, so the page cannot rot."""
    import re

    page = (Path(__file__).resolve().parent.parent / "docs" / "environments.md").read_text()
    blocks = [b for b in re.findall(r"^```yaml\n(.*?)^```", page, re.S | re.M) if re.search(r"^command:", b, re.M)]
    assert len(blocks) >= 2, "the page lost its job specs"
    for number, block in enumerate(blocks):
        path = tmp_path / f"doc{number}.yaml"
        path.write_text(block)
        spec = load_job_spec(path)
        assert spec.builds_environment and spec.environment is not None
    lightning = load_job_spec(tmp_path / f"doc{len(blocks) - 1}.yaml")
    assert lightning.environment is not None
    assert "torch==2.13.0+cpu" in lightning.environment.requirements and len(lightning.environment.setup) == 2


def test_a_requirements_file_includes_others_from_the_snapshot_and_nothing_else(tmp_path: Path) -> None:
    """``-r base.txt`` is read from the job's snapshot, beside the file; options that would steer uv are refused.

    Resolution runs in a scratch folder, so uv itself followed ``-r base.txt`` there ("failed to read
    from file /tmp/mlfleet-resolve-.../base.txt"), read ``-r /etc/hostname`` on the workstation and obeyed
    ``--index-url`` lines (found by the issue-15 attacker).
    """
    from mlfleet.core.base.models import Environment

    files = {"req.txt": "# training\n-r base.txt\ntinypkg>=0.9  # pinned below\n",
             "base.txt": "--requirement=sub/more.txt\nnumpy\n", "sub/more.txt": "-r ../shared.txt\n",
             "shared.txt": "pyyaml\n", "loop.txt": "-r loop.txt\n", "escape.txt": "-r ../../etc/hostname\n",
             "abs.txt": "-r /etc/hostname\n", "index.txt": "numpy\n--index-url http://127.0.0.1:9/simple\n",
             "editable.txt": "-e .\n", "missing.txt": "-r nowhere.txt\n"}
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            path = tmp_path / "src" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            tar.add(path, arcname=name)

    def text(name: str) -> str:
        return requirements_text(Environment(requirements=name), archive)[0]

    assert text("req.txt") == "pyyaml\nnumpy\ntinypkg>=0.9\n"
    for name, words in [("loop.txt", "loop.txt includes itself"),
                        ("escape.txt", "is outside the job's workdir"),
                        ("abs.txt", "is an absolute path"),
                        ("index.txt", "index.txt:2: the option --index-url is not taken"),
                        ("editable.txt", "editable.txt:1: the option -e is not taken"),
                        ("missing.txt", "nowhere.txt is not in the job's code snapshot")]:
        with pytest.raises(ResolutionError, match=re.escape(words)):
            text(name)
