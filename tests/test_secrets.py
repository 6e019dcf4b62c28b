"""Secrets: a value set once reaches the job's environment and nothing else mlfleet writes or shows.

The story: a user sets a canary secret from stdin, submits a job that refers
to it (``env: {HF_TOKEN: {secret: hf}}``) and prints it every way a careless
job would (whole, in halves across flushes, twice on a line, on stderr).
The job proves it saw the right value by printing its sha256; then every
file under the installation, the local agent's state and the run folder,
and the output of every command that shows a job, its logs, its row or the
audit trail, hold the canary 0 times.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import secrets as pysecrets
import string
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings, strategies as st

from conftest import REPO, CliResult, Fleet
from mlfleet.agents.secretmask import Masker, mask_text

JOB = """\
import hashlib, os, sys, time
v = os.environ["HF_TOKEN"]
print("sha", hashlib.sha256(v.encode()).hexdigest())
print("head", v[:10])
print(v)
print(v, v)
sys.stderr.write("err " + v + "\\n")
sys.stdout.write("split " + v[:16]); sys.stdout.flush(); time.sleep(0.3)
sys.stdout.write(v[16:] + " end\\n"); sys.stdout.flush()
os.write(1, v.encode()[:7]); time.sleep(0.2); os.write(1, v.encode()[7:] + b" raw\\n")
print("done")
"""


def set_secret(fleet: Fleet, name: str, value: str, *extra: str) -> CliResult:
    """``mlfleet secrets set NAME`` with the value piped in, as a script would."""
    proc = subprocess.run([str(Path(sys.executable).with_name("mlfleet")), "secrets", "set", name, *extra],
                          input=value + "\n", env=fleet.env, capture_output=True, text=True, timeout=90, cwd=REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def occurrences(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` (binary, links not followed) that holds ``needle``."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_a_canary_secret_reaches_the_job_and_no_file_or_output(fleet: Fleet) -> None:
    canary = "".join(pysecrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    outputs: list[str] = []
    setting = set_secret(fleet, "hf", canary, "--json")
    assert setting.code == 0, setting.err
    assert setting.json() == {"name": "hf", "replaced": False, "set_by": setting.json()["set_by"]}
    assert fleet.home.secrets_file.stat().st_mode & 0o777 == 0o600
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "leak.py").write_text(JOB)
    spec = fleet.write_spec("leak", "name: leak\ncommand: [python, leak.py]\nenv:\n  HF_TOKEN: {secret: hf}\n"
                                    "  PLAIN: visible\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    outputs.append(done.out + done.err)
    assert done.code == 0, done.out + done.err
    job_id, run_id = done.json()["job_id"], done.json()["run_id"]

    stdout = fleet.cli("jobs", "logs", job_id)
    stderr = fleet.cli("jobs", "logs", job_id, "--stderr")
    outputs += [stdout.out + stdout.err, stderr.out + stderr.err]
    assert f"sha {hashlib.sha256(canary.encode()).hexdigest()}" in stdout.out  # the job saw the right value
    assert stdout.out.splitlines()[1:] == [f"head {canary[:10]}", "***", "*** ***", "split *** end", "*** raw", "done"]
    assert stderr.out == "err ***\n"

    shown = fleet.cli_json("jobs", "show", job_id)
    assert shown["spec"]["env"] == {"HF_TOKEN": {"secret": "hf"}, "PLAIN": "visible"}  # the reference, not the value
    listed = fleet.cli("secrets", "list", "--json")
    assert [s["name"] for s in listed.json()["secrets"]] == ["hf"]
    export = fleet.files / "runs.csv"
    audit_export = fleet.files / "audit.jsonl"
    for args in (("jobs", "show", job_id, "--json"), ("jobs", "list", "--json"), ("audit", "list", "--json"),
                 ("db", "query", "select * from jobs", "--json"), ("db", "query", "select * from runs", "--json"),
                 ("db", "query", "select * from audit", "--json"), ("runs", "show", run_id, "--json"),
                 ("runs", "export", "--output", str(export)), ("audit", "export", "--output", str(audit_export)),
                 ("secrets", "list"), ("secrets", "list", "--json"), ("jobs", "show", job_id), ("jobs", "list"),
                 ("runs", "show", run_id), ("runs", "list"), ("audit", "list")):
        result = fleet.cli(*args)
        assert result.code == 0, (args, result.err)
        outputs.append(result.out + result.err)
    outputs.append(listed.out)
    audit = fleet.cli_json("audit", "list")
    assert any(e["action"] == "secret.set" and e["target"] == "hf" for e in audit)

    assert all(canary not in text for text in outputs)
    assert occurrences(fleet.root, canary.encode()) == [str(fleet.home.secrets_file)]  # the store, and only it
    for root in (fleet.files, fleet.home.run_dir, fleet.home.local_agent_dir):  # outputs, sockets, the node
        assert occurrences(root, canary.encode()) == []
    run = fleet.home.local_agent_dir / "runs" / run_id
    journal = json.loads((run / "launch.json").read_text())  # the node's journal names the key, holds no value
    assert "HF_TOKEN" not in journal["env"] and journal["secret_env"] == {} and journal["secret_keys"] == ["HF_TOKEN"]
    assert journal["env"]["PLAIN"] == "visible"
    assert not (run / "secret_env.json").exists()

    removed = fleet.cli("secrets", "rm", "hf", "--json")
    assert removed.code == 0 and removed.json()["removed"] is True
    assert occurrences(fleet.root, canary.encode()) == []  # removed: nowhere at all now


def test_an_unknown_secret_at_submit_is_one_sentence_with_the_fix(fleet: Fleet) -> None:
    spec = fleet.write_spec("nosecret", "name: nosecret\ncommand: [true]\nenv:\n  HF_TOKEN: {secret: hf}\n")
    result = fleet.cli("submit", str(spec))
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "mlfleet: env.HF_TOKEN refers to secret 'hf', which is not set on this controller; "
        "set it with: mlfleet secrets set hf"]
    assert fleet.cli_json("jobs", "list") == []  # nothing was queued


def test_hostile_names_values_and_a_store_others_can_read_are_refused(fleet: Fleet) -> None:
    slash = set_secret(fleet, "a/b", "long enough value")
    assert slash.code == 2 and "secret name 'a/b' is not valid" in slash.err and "Traceback" not in slash.err
    short = set_secret(fleet, "tiny", "abc")
    assert short.code == 2 and "shorter than 4 characters" in short.err
    assert set_secret(fleet, "hf", "a good long value").code == 0
    os.chmod(fleet.home.secrets_file, 0o644)
    listed = fleet.cli("secrets", "list")
    assert listed.code == 2, listed.out + listed.err
    assert "has mode 0644, so others may have read it" in listed.err and "Traceback" not in listed.err
    spec = fleet.write_spec("s", "name: s\ncommand: [true]\nenv:\n  T: {secret: hf}\n")
    submitted = fleet.cli("submit", str(spec))
    assert submitted.code == 2 and "has mode 0644" in submitted.err
    os.chmod(fleet.home.secrets_file, 0o600)
    os.chown(fleet.home.secrets_file, 65534, 65534)  # someone else's file in our home: perhaps planted
    planted = fleet.cli("secrets", "list")
    assert planted.code == 2 and "is owned by uid 65534, not by you" in planted.err, planted.err
    os.chown(fleet.home.secrets_file, os.getuid(), os.getgid())
    assert fleet.cli_json("secrets", "list")["secrets"][0]["name"] == "hf"
    bad_ref = fleet.write_spec("b", "name: b\ncommand: [true]\nenv:\n  T: {secret: ../x}\n")
    refused = fleet.cli("submit", str(bad_ref))
    assert refused.code == 2 and "is not a secret name" in refused.err, refused.err
    missing = fleet.cli("secrets", "rm", "nope")
    assert missing.code != 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_masking_holds_for_any_chunking(data: st.DataObject) -> None:
    alphabet = "abAB*x\n"
    values = data.draw(st.lists(st.text(alphabet="abAB", min_size=4, max_size=12), min_size=1, max_size=3))
    parts = data.draw(st.lists(st.one_of(st.sampled_from(values), st.text(alphabet=alphabet, max_size=8)), max_size=12))
    stream = "".join(parts).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    masker = Masker(values)
    out = b""
    last = 0
    for cut in cuts + [len(stream)]:
        out += masker.feed(stream[last:cut])
        last = cut
    out += masker.flush()
    assert out == mask_text(stream.decode(), values).encode()  # the same, however the stream was cut
    for value in values:
        assert value.encode() not in out


def test_masking_holds_back_only_the_start_of_a_secret() -> None:
    masker = Masker(["hunter22"])
    assert masker.feed(b"progress 10%") == b"progress 10%"  # nothing held up that is no secret's start
    assert masker.feed(b" pw=hun") == b" pw="
    assert masker.feed(b"ter22!") == b"***!"
    assert masker.feed(b"hunter") == b"" and masker.flush() == b"hunter"


WAITER = """\
import os, time
v = os.environ["TOK"]
print("before", v, flush=True)
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.1)
print("after", v, flush=True)
"""


def test_an_agent_killed_while_a_job_with_a_secret_runs_needs_no_value_again(fleet: Fleet) -> None:
    canary = pysecrets.token_hex(16)
    assert set_secret(fleet, "tok", canary).code == 0
    go = fleet.files / "go"
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "waiter.py").write_text(WAITER)
    spec = fleet.write_spec("waiter", f"name: waiter\ncommand: [python, waiter.py]\n"
                                      f"env:\n  TOK: {{secret: tok}}\n  GO: '{go}'\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    fleet.wait_state(job_id, {"running"})
    fleet.wait_for(lambda: "before" in fleet.cli("jobs", "logs", job_id).out, what="the job's first line")
    agent = fleet.agent_pid
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.cli("hosts", "list").code == 0 and fleet.agent_pid not in (None, agent),
                   what="a new agent", timeout=40)
    go.touch()
    final = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert final["state"] == "succeeded" and len(final["runs"]) == 1
    assert fleet.cli("jobs", "logs", job_id).out.splitlines() == ["before ***", "after ***"]
    assert occurrences(fleet.root, canary.encode()) == [str(fleet.home.secrets_file)]
