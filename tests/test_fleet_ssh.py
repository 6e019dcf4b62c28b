"""A team adds GPU hosts over SSH; jobs run there and no fault loses a point or runs twice."""

from __future__ import annotations

import os
import signal

from conftest import Fleet, SshFleet, builds_checkout_wheel

STEADY = """name: steady
constraints: {{hosts: [{host}]}}
command: [python, -c, "from mlfleet import track; import time\\nfor s in range(40):\\n    track.log({{'loss': 1.0 / (s + 1)}}, step=s); track.flush(); time.sleep(0.2)\\nprint('finished on', __import__('socket').gethostname())"]
"""


def _points(fleet: Fleet, run_id: str) -> list[list]:
    return fleet.cli_json("db", "query", f"select step, count(*) from metrics where run_id = '{run_id}' "
                                         "group by step order by step")["rows"]


def _submit_steady(fleet: Fleet, host: str) -> str:
    return fleet.cli("submit", str(fleet.write_spec(f"steady-{host}", STEADY.format(host=host))), check=True).out.strip()


def test_two_hosts_come_up_with_live_telemetry_and_a_job_runs_remotely(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a", "--label", "region=eu-west")
    ssh_fleet.add("node-b", "--label", "region=us-east")
    a, b = ssh_fleet.wait_up("node-a"), ssh_fleet.wait_up("node-b")
    assert a["kind"] == "ssh" and a["labels"] == {"region": "eu-west"}
    assert a["telemetry"]["memory_total"] > 0 and b["telemetry"]["cpu_count"] >= 1
    assert a["info"]["state_dir"] == str(ssh_fleet.state_dir("node-a"))

    job_id = _submit_steady(fleet, "node-b")
    job = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["host"] == "node-b"
    assert _points(fleet, job["run_id"]) == [[step, 1] for step in range(40)]
    assert (ssh_fleet.state_dir("node-b") / "runs" / job["run_id"] / "metrics.jsonl").exists()
    assert "finished on" in fleet.cli("jobs", "logs", job_id).out
    actions = [e["action"] for e in fleet.cli_json("audit", "list")]
    assert actions.count("host.add") == 2 and actions.count("host.trust") == 2


def test_an_unknown_host_key_is_refused_with_its_fingerprint(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a", trust=False)
    check = fleet.cli("hosts", "check", "node-a")
    assert check.code == 5
    assert "presented a host key mlfleet does not know (SHA256:" in check.err
    assert "mlfleet hosts trust node-a" in check.err
    listed = fleet.wait_for(lambda: (h := ssh_fleet.host("node-a"))["state"] == "unreachable" and h,
                            what="the host to be refused")
    assert "SHA256:" in listed["message"]
    assert not ssh_fleet.state_dir("node-a").exists()  # nothing ran on a host we do not trust

    trusted = fleet.cli_json("hosts", "trust", "node-a", "--yes")
    assert trusted["recorded"] is True and trusted["fingerprint"].startswith("SHA256:")
    assert fleet.cli("hosts", "check", "node-a").code == 0


def test_a_changed_host_key_is_refused_until_trusted_again(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    old = fleet.cli_json("hosts", "trust", "node-a", "--yes")["fingerprint"]

    server = ssh_fleet.servers["node-a"]
    server.stop()
    server.new_host_key()
    server.start()
    check = fleet.cli("hosts", "check", "node-a")
    assert check.code == 5
    assert "has CHANGED" in check.err and old in check.err
    fleet.wait_for(lambda: "CHANGED" in ssh_fleet.host("node-a")["message"], what="the host to be refused")

    again = fleet.cli_json("hosts", "trust", "node-a", "--yes")
    assert again["replaced"] == [old] and again["fingerprint"] != old
    ssh_fleet.wait_up("node-a")


def _steady_job_midway(ssh_fleet: SshFleet) -> tuple[Fleet, str, dict]:
    """A job on node-a that has logged some of its 40 points: the moment to break something."""
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    job_id = _submit_steady(fleet, "node-a")
    job = fleet.wait_state(job_id, {"running"})
    fleet.wait_for(lambda: len(_points(fleet, job["run_id"])) >= 5, what="some points")
    return fleet, job_id, job


def _ran_once_with_every_point(fleet: Fleet, job_id: str, run_id: str) -> None:
    final = fleet.wait_state(job_id, {"succeeded", "failed"})  # the CLI starts a new controller if needed
    assert final["state"] == "succeeded" and len(final["runs"]) == 1
    assert _points(fleet, run_id) == [[step, 1] for step in range(40)]


def test_a_dropped_ssh_link_reconnects_without_double_dispatch_or_lost_points(ssh_fleet: SshFleet) -> None:
    fleet, job_id, job = _steady_job_midway(ssh_fleet)
    ssh_fleet.servers["node-a"].drop_connections()
    _ran_once_with_every_point(fleet, job_id, job["run_id"])
    assert len(list((ssh_fleet.state_dir("node-a") / "runs").iterdir())) == 1  # launched once


def test_sigkill_of_a_remote_agent_mid_job_loses_nothing(ssh_fleet: SshFleet) -> None:
    fleet, job_id, job = _steady_job_midway(ssh_fleet)
    agent = ssh_fleet.agent_pid("node-a")
    os.kill(agent, signal.SIGKILL)
    _ran_once_with_every_point(fleet, job_id, job["run_id"])
    assert ssh_fleet.agent_pid("node-a") not in (None, agent)  # the controller started a new one over SSH


def test_sigkill_of_the_controller_mid_remote_job_reconciles(ssh_fleet: SshFleet) -> None:
    fleet, job_id, job = _steady_job_midway(ssh_fleet)
    os.kill(fleet.controller_pid, signal.SIGKILL)
    _ran_once_with_every_point(fleet, job_id, job["run_id"])


def test_hosts_import_from_ssh_config_and_remove(fleet: Fleet) -> None:
    from sshd import keygen

    key = keygen(fleet.root / "id_gpu")  # an import refuses a host whose key file does not exist
    config = fleet.root / "ssh_config"
    config.write_text("Host *\n  User deploy\n\nHost gpu-a gpu-b\n  HostName 127.0.0.1\n  Port 2299\n"
                      f"  IdentityFile {key}\n\nHost bastion-*\n  ProxyJump none\n")
    imported = fleet.cli_json("hosts", "import-ssh-config", "--file", str(config))
    assert imported["added"] == ["gpu-a", "gpu-b"]
    listed = {h["name"]: h for h in fleet.cli_json("hosts", "list")}
    assert listed["gpu-a"]["address"] == "127.0.0.1:2299" and listed["gpu-a"]["kind"] == "ssh"
    text = fleet.home.hosts_file.read_text()
    assert "user: deploy" in text and "id_gpu" in text

    again = fleet.cli_json("hosts", "import-ssh-config", "--file", str(config))
    assert again == {"added": [], "skipped": ["gpu-a", "gpu-b"], "refused": {}, "jump_hosts": {}, "warnings": []}
    fleet.home.hosts_file.write_text("# keep this comment\n" + fleet.home.hosts_file.read_text())
    assert fleet.cli("hosts", "remove", "gpu-a").code == 0
    assert "# keep this comment" in fleet.home.hosts_file.read_text()
    assert [h["name"] for h in fleet.cli_json("hosts", "list")] == ["local", "gpu-b"]


def test_a_broken_hosts_file_is_one_sentence_with_its_line(fleet: Fleet) -> None:
    fleet.home.hosts_file.write_text("hosts:\n  - name: a\n    address: 10.0.0.1\n    prot: 22\n")
    result = fleet.cli("hosts", "list")
    assert result.code == 2
    assert result.err.strip() == f"mlfleet: {fleet.home.hosts_file}:4: hosts[0].prot: unknown field; did you mean 'port'?"



def test_the_workdir_is_shipped_once_per_content_and_respects_gitignore(ssh_fleet: SshFleet) -> None:
    import subprocess

    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    assert fleet.cli("hosts", "check", "node-a").code == 0  # a probe must not disturb the link's own connection
    project = fleet.root / "project"
    (project / "data").mkdir(parents=True)
    (project / "helper.py").write_text("GREETING = 'shipped code says hi'\n")
    (project / "train.py").write_text("import os, helper\nprint(helper.GREETING)\n"
                                      "print('data present:', os.path.exists('data/big.bin'))\nprint('cwd', os.getcwd())\n")
    (project / "data" / "big.bin").write_bytes(b"\0" * 1024)
    (project / ".gitignore").write_text("data/\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    spec = project / "job.yaml"
    spec.write_text("name: shipped\ncommand: [python, train.py]\nconstraints: {hosts: [node-a]}\n")

    first = fleet.cli_json("submit", str(spec))
    second = fleet.cli_json("submit", str(spec))
    assert first["code_hash"] == second["code_hash"] and len(first["code_hash"]) == 64
    for job_id in (first["job_id"], second["job_id"]):
        assert fleet.wait_state(job_id, {"succeeded", "failed"})["state"] == "succeeded"
    out = fleet.cli("jobs", "logs", first["job_id"]).out
    assert "shipped code says hi" in out and "data present: False" in out
    run_id = fleet.job(first["job_id"])["run_id"]
    assert f"cwd {ssh_fleet.state_dir('node-a') / 'runs' / run_id / 'work'}" in out  # a copy of its own
    snapshots = [p.name for p in (ssh_fleet.state_dir("node-a") / "code").iterdir() if not p.name.startswith(".")]
    assert sorted(snapshots) == [first["code_hash"], f"{first['code_hash']}.tar.gz"]  # the tree and its archive
    run = fleet.cli_json("runs", "show", fleet.job(first["job_id"])["run_id"])
    assert run["code_hash"] == first["code_hash"]
    shipped = (fleet.home.log_dir / "controller.log").read_text().count(f"shipped snapshot {first['code_hash'][:12]}")
    assert shipped == 1


@builds_checkout_wheel
def test_bootstrap_installs_the_agent_on_a_host_with_only_python(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    server = ssh_fleet.servers["node-a"]
    # As on a fresh node: 'mlfleet' is not installed there, so the host cannot come up.
    fleet.cli("hosts", "add", "node-a", "--address", "127.0.0.1", "--port", str(server.port), "--user", server.user,
              "--identity", str(ssh_fleet.user_key), "--state-dir", str(ssh_fleet.state_dir("node-a")), check=True)
    fleet.cli("hosts", "trust", "node-a", "--yes", check=True)
    down = fleet.wait_for(lambda: "hosts bootstrap node-a" in (h := ssh_fleet.host("node-a"))["message"] and h,
                          what="the host to say mlfleet is missing")
    assert down["state"] == "unreachable"

    prefix = fleet.root / "node-a-home" / ".mlfleet"
    answer = fleet.cli_json("hosts", "bootstrap", "node-a", "--prefix", str(prefix), "--python", "/usr/bin/python3",
                            timeout=900)
    assert answer["agent_command"] == f"{prefix}/venv/bin/mlfleet" and answer["version"].startswith("mlfleet ")
    assert f"agent_command: {prefix}/venv/bin/mlfleet" in fleet.home.hosts_file.read_text()
    up = ssh_fleet.wait_up("node-a", timeout=60)
    assert up["agent_version"] == answer["version"].split()[-1]
    spec = fleet.write_spec("hello", "name: hello\ncommand: [python, -c, \"import sys; print(sys.prefix)\"]\n"
                                     "constraints: {hosts: [node-a]}\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0
    assert str(prefix / "venv") in fleet.cli("jobs", "logs", done.json()["job_id"]).out


def test_install_service_writes_a_user_unit_that_spares_running_jobs(fleet: Fleet) -> None:
    env_home = fleet.root / "xdg"
    fleet.env["XDG_CONFIG_HOME"] = str(env_home)
    result = fleet.cli_json("agent", "install-service", "--state-dir", str(fleet.root / "agent"), "--name", "gpu-a")
    unit = env_home / "systemd" / "user" / "mlfleet-agent.service"
    assert result["unit"] == str(unit)
    text = unit.read_text()
    assert "KillMode=process" in text and "Restart=on-failure" in text
    assert f"--state-dir {fleet.root / 'agent'}" in text and "--name gpu-a" in text


def test_a_host_with_simulated_gpus_says_so_and_shows_them_live(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    gpus = fleet.root / "gpus-b.yaml"
    gpus.write_text("gpus:\n  - name: NVIDIA H100 80GB HBM3\n    count: 2\n    memory_total: 80GiB\n")
    ssh_fleet.add("node-b", "--simulate-gpus", str(gpus))
    host = fleet.wait_for(lambda: len(((h := ssh_fleet.host("node-b"))["telemetry"] or {}).get("gpus", [])) == 2 and h,
                          what="two simulated GPUs")
    assert host["simulated"] is True and host["telemetry"]["gpu_message"].startswith("simulated GPUs")
    assert "(simulated)" in fleet.cli("hosts", "list").out

    gpus.write_text("gpus:\n  - name: NVIDIA H100 80GB HBM3\n    memory_total: 80GiB\n    utilization: 91\n"
                    "    processes: [{pid: 4121, used_memory: 20GiB, name: jupyter}]\n")
    changed = fleet.wait_for(lambda: len((g := ssh_fleet.host("node-b")["telemetry"]["gpus"])) == 1 and g,
                             what="the GPUs to change live")
    assert changed[0]["utilization"] == 91 and changed[0]["processes"][0]["pid"] == 4121
    assert changed[0]["memory_used"] == 20 * 1024**3


def test_a_host_lost_for_long_has_its_job_retried_elsewhere_and_the_stray_stopped_on_return(
        ssh_fleet: SshFleet) -> None:
    import json

    fleet = ssh_fleet.fleet
    fleet.home.config_file.write_text("scheduler: {lost_after: 3s}\n")
    ssh_fleet.add("node-a", "--label", "pool=train")
    ssh_fleet.add("node-b", "--label", "pool=train")
    ssh_fleet.wait_up("node-a")
    ssh_fleet.wait_up("node-b")
    spec = fleet.write_spec("long", "name: long\nretries: 1\nconstraints: {labels: {pool: train}}\n"
                                    "command: \"case $MLFLEET_RUN_ID in *-1) sleep 120;; *) sleep 1;; esac\"\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    first = fleet.wait_state(job_id, {"running"})
    lost_host = first["host"]
    other = "node-b" if lost_host == "node-a" else "node-a"

    ssh_fleet.servers[lost_host].stop()  # a partition: the node and its run go on, unseen
    done = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded" and done["host"] == other
    assert [r["state"] for r in done["runs"]] == ["failed", "succeeded"]
    assert "was lost" in next(e["reason"] for e in done["events"] if e["state"] == "pending" and e["run_id"])

    ssh_fleet.servers[lost_host].start()
    exit_file = ssh_fleet.state_dir(lost_host) / "runs" / first["run_id"] / "exit.json"
    stopped = fleet.wait_for(lambda: exit_file.exists() and json.loads(exit_file.read_text()), timeout=60,
                             what="the stray run to be stopped")
    assert stopped["reason"] == "cancelled"
    assert any(e["action"] == "run.stop-stray" for e in fleet.cli_json("audit", "list"))
