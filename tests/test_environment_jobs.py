"""A user declares a job's environment and it runs on the local host in it, built once and reused.

Real parts: the controller resolves with uv from a folder of tiny wheels
(environments.no_index: nothing reaches an index), ships them into the
local agent's wheelhouse, and the agent builds the environment with uv.
"""

from __future__ import annotations

import json

from conftest import Fleet
from envwheels import make_wheel


def offline_wheels(fleet: Fleet) -> None:
    folder = fleet.files / "wheels"
    folder.mkdir(exist_ok=True)
    make_wheel(folder, "tinypkg", "1.0", {"tinypkg/__init__.py": "from tinydep import X\nVALUE = 41 + X\n"},
               requires=["tinydep>=1"])
    make_wheel(folder, "tinydep", "2.0", {"tinydep/__init__.py": "X = 1\n"})
    make_wheel(folder, "tinypkg", "0.9", {"tinypkg/__init__.py": "VALUE = 9\n"})
    (fleet.root / "config.yaml").write_text(f"environments:\n  no_index: true\n  find_links: [{folder}]\n")


SPEC = """name: {name}
command: [python, -c, "import sys, tinypkg; print('value', tinypkg.VALUE, sys.prefix)"]
environment:
  requirements: [tinypkg]
  setup: ["sleep 2"]
"""


def test_a_job_runs_in_its_environment_and_the_next_one_reuses_it(fleet: Fleet) -> None:
    offline_wheels(fleet)
    first = fleet.cli("submit", str(fleet.write_spec("first", SPEC.format(name="first"))), "--json", check=True).json()
    # The setup command makes the build take a moment: the job is seen preparing, with its elapsed time.
    fleet.wait_state(first["job_id"], {"preparing"}, timeout=60)
    shown = fleet.cli("jobs", "show", first["job_id"], check=True).out
    assert "state: preparing  (preparing its environment on local)  for " in shown
    listed = fleet.cli_json("jobs", "list")
    assert listed[0]["state"] == "preparing" and listed[0]["preparing_since"]
    # Its run has an id and may not be on the node yet: its logs are the build's so far, never "unknown run".
    early = fleet.cli("jobs", "logs", first["job_id"])
    assert early.code == 0, early.err
    assert all(line.startswith("[mlfleet env]") for line in early.out.splitlines()), early.out
    done = fleet.wait_state(first["job_id"], {"succeeded", "failed"}, timeout=120)
    logs = fleet.cli("jobs", "logs", first["job_id"]).out
    assert done["state"] == "succeeded", logs
    assert "value 42" in logs and "/envs/" in logs and "[mlfleet env]" in logs
    assert [e["state"] for e in done["events"]][:4] == ["pending", "dispatched", "preparing", "running"]

    second = fleet.cli("submit", str(fleet.write_spec("second", SPEC.format(name="second"))), "--wait", "--json")
    assert second.code == 0, second.out + second.err
    again = fleet.cli("jobs", "logs", second.json()["job_id"]).out
    assert "value 42" in again and "reusing it" in again

    runs = fleet.cli_json("db", "query", "select run_id, env_hash from runs order by created_at")["rows"]
    assert len(runs) == 2 and runs[0][1] == runs[1][1] and len(runs[0][1]) == 64
    envs = [p.name for p in (fleet.home.local_agent_dir / "envs").iterdir() if not p.name.startswith(".")]
    assert envs == [runs[0][1]]  # one build for both
    packages = fleet.cli_json("db", "query",
                              f"select name, version from run_packages where run_id = '{runs[0][0]}' order by name")
    assert packages["rows"] == [["tinydep", "2.0"], ["tinypkg", "1.0"]]

    # An older tinypkg: runs compare names the packages that differ, --where filters on them.
    old = fleet.write_spec("old", SPEC.format(name="old").replace("[tinypkg]", "['tinypkg==0.9']")
                           .replace('  setup: ["sleep 2"]\n', ""))
    third = fleet.cli("submit", str(old), "--wait", "--json")
    assert third.code == 0, third.out + third.err
    run_ids = [runs[0][0], third.json()["run_id"]]
    compared = fleet.cli_json("runs", "compare", *run_ids)["packages"]
    assert compared["differ"] == {"tinydep": {run_ids[0]: "2.0", run_ids[1]: None},
                                  "tinypkg": {run_ids[0]: "1.0", run_ids[1]: "0.9"}}
    assert compared["env_hash"][run_ids[0]] != compared["env_hash"][run_ids[1]]
    shown = fleet.cli("runs", "compare", *run_ids, check=True).out
    assert "PACKAGE" in shown and "0.9" in shown
    old_ones = fleet.cli_json("runs", "list", "--where", "env.tinypkg = '0.9'")
    assert [r["run_id"] for r in old_ones] == [run_ids[1]]
    with_dep = fleet.cli_json("runs", "list", "--where", "env.TinyDep is not null")
    assert {r["run_id"] for r in with_dep} == {runs[0][0], runs[1][0]}


def test_a_misspelt_requirement_fails_the_job_with_one_sentence(fleet: Fleet) -> None:
    offline_wheels(fleet)
    spec = fleet.write_spec("typo", "name: typo\ncommand: [python, -c, pass]\nenvironment:\n"
                            "  requirements: [tinypkgg]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 1, done.out + done.err
    reason = done.json()["reason"]
    assert reason.startswith("failed to start: Because tinypkgg was not found in the provided package locations")
    assert "\n" not in reason and "Traceback" not in json.dumps(done.json())


def test_a_python_the_host_lacks_fails_naming_what_it_has(fleet: Fleet) -> None:
    offline_wheels(fleet)
    spec = fleet.write_spec("py", "name: py\ncommand: [python, -c, pass]\nenvironment:\n  python: '3.99'\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 1
    assert done.json()["reason"].startswith("failed to start: local has no Python 3.99 (it has ")
