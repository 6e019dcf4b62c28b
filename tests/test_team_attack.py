"""Attacks on a team controller by its own members: real OS users on the real team socket, doing what no CLI does.

Each story is one attack that once worked (or still does: those are marked
xfail, strict, with the finding in their reason), made by a real OS user
(tests/team_users.py) against the root controller of tests/team_head.py, or
against ``controller serve`` itself. The raw requests go through
tests/team_attack_client.py, run as that user, so the identity the
controller sees is the socket's peer (SO_PEERCRED), as in a real team.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import Fleet
from team_head import MLFLEET, Head
from team_users import TeamUsers, User

CLIENT = str(Path(__file__).with_name("team_attack_client.py"))


def _raw(user: User, head: Head, method: str, params: dict, count: int = 1) -> dict:
    """``count`` calls of ``method`` as ``user`` on the team socket; the client's JSON summary."""
    result = user.run(user.python, CLIENT, str(head.socket), method, json.dumps(params), str(count), timeout=120)
    assert result.code == 0, result.err
    return json.loads(result.out)


def _denied_rows(fleet: Fleet, actor: str) -> int:
    rows = fleet.cli_json("db", "query",
                          f"select count(*) as n from audit where action = 'policy.denied' and actor = '{actor}'")
    rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
    first = rows[0]
    return int(first["n"] if isinstance(first, dict) else first[0])


@pytest.mark.timeout(240)
def test_a_viewer_cannot_flood_the_audit_chain_by_naming_a_new_project_in_each_refused_submit(
        fleet: Fleet, team_users: TeamUsers, request: pytest.FixtureRequest) -> None:
    """Finding (fixed): refusals were audited once a minute per (user, method, project, target), and a submit's
    project is the caller's to choose, so a viewer wrote one audit row per made-up project: 300 refused submits,
    300 rows on the hash chain (and the memo of audited refusals grew without bound, rebuilt on every insert
    past 10,000). Now each user's refusals are audited at most a few dozen times a minute, the first one past
    that saying so; every request is still refused."""
    viewers = team_users.group("v")
    (fleet.root / "policy.yaml").write_text(f"roles:\n  - {{group: {viewers}, role: viewer}}\n")
    head: Head = request.getfixturevalue("head")
    viewer = head.member(team_users, groups=(viewers,))
    spec = {"name": "flood", "project": "p{i}", "command": ["true"], "workdir": "/tmp"}
    flood = _raw(viewer, head, "submit", {"spec": spec, "code": {"sha256": "0" * 64}}, count=300)
    assert flood["answered"] == 0 and sum(flood["refused"].values()) == 300, flood
    assert "may not submit jobs in p0" in flood["first_error"], flood
    audited = _denied_rows(fleet, viewer.name)
    assert 2 <= audited <= 30, f"{audited} policy.denied rows for one viewer's 300 refused submits"
    flood_note = fleet.cli_json("db", "query", "select detail from audit where action = 'policy.denied' "
                                               f"and actor = '{viewer.name}' and detail like '%not audited%'")
    assert flood_note, "the first refusal past the budget says that more are not audited"


@pytest.mark.timeout(120)
def test_serve_refuses_a_socket_folder_another_user_made_before_it(fleet: Fleet, team_users: TeamUsers) -> None:
    """Finding (fixed): ``serve --team`` refused only a folder every user may write. A member who made the socket's
    folder first (``mkdir /run/mlfleet`` before the service's first start) owned it: they could unlink the team
    socket and bind their own in its place, so every member's ``secrets set`` and code went to them, and swap a
    symlink in between the bind and the chown/chmod by path, so root gave the team group a file of their choice.
    Now a folder (or a folder above it) that is not root's or the controller's user's, or that its group may
    write, is refused in one sentence, exit 2."""
    group = team_users.group()
    squatter = team_users.user(groups=(group,))
    base = Path(tempfile.mkdtemp(prefix="mlft", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        for name, mode, owner in (("theirs", 0o755, squatter), ("grouped", 0o770, None)):
            folder = base / name
            folder.mkdir()
            os.chmod(folder, mode)
            if owner is not None:
                os.chown(folder, owner.uid, owner.gid)
            else:
                os.chown(folder, 0, grp.getgrnam(group).gr_gid)
            process = subprocess.Popen([MLFLEET, "controller", "serve", "--team", group, "--socket",
                                        str(folder / "c.sock")], env=fleet.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, cwd="/")
            try:
                out, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.terminate()
                process.communicate(timeout=20)
                raise AssertionError(f"serve --team took the socket folder {folder} (mode {mode:04o}, "
                                     f"owner {owner.name if owner else 'root'}) and served the team there")
            assert process.returncode == 2, (out, err)
            assert err.count("\n") == 1 and "Traceback" not in err and str(folder) in err, err
            assert not (folder / "c.sock").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(180)
def test_a_policy_file_others_may_write_or_own_is_not_obeyed(fleet: Fleet, team_users: TeamUsers) -> None:
    """Finding (fixed): the controller obeyed any policy.yaml at its path: one made 0666 (or 0664 for the team
    group, or a symlink to a member's own file) let a member write ``{user: me, role: admin}`` and be admin at
    the next request. secrets.json is refused when others may touch it; now policy.yaml is too: at start the
    start stops in one sentence, and a file that turns so while the controller runs is a bad file (the
    last good policy stays in force, ``controller status`` says why)."""
    member = team_users.user()
    policy = fleet.root / "policy.yaml"
    # (A file others may write at start is tightened by the start itself, with the rest of the installation;
    # a symlink is never followed by that, so it is the start's case.) A symlink to a file the member owns:
    # theirs to rewrite whenever they like.
    theirs = member.write("policy.yaml", f"roles:\n  - {{user: {member.name}, role: admin}}\n")
    policy.symlink_to(theirs)
    refused = fleet.cli("controller", "start")
    assert refused.code != 0 and member.name in refused.err and "Traceback" not in refused.err, refused
    assert "who may give anyone any role" in refused.err, refused.err

    # A good file at start, made writable by everyone later: the last good one stays in force.
    policy.unlink()
    policy.write_text(f"roles:\n  - {{user: {member.name}, role: viewer}}\n")
    fleet.cli("controller", "start", check=True)
    try:
        policy.write_text(f"roles:\n  - {{user: {member.name}, role: admin}}\n")
        policy.chmod(0o666)
        status = fleet.cli_json("controller", "status")
        assert status["policy_error"] and "writable" in status["policy_error"], status
        whoami = fleet.cli_json("policy", "show")
        assert whoami["policy_error"], whoami
    finally:
        fleet.cli("controller", "stop")


@pytest.mark.timeout(120)
def test_residency_inputs_are_matched_as_the_paths_they_name_not_as_spelt(fleet: Fleet) -> None:
    """Finding (fixed): an ``inputs:`` glob was matched against an absolute path as written, so
    ``/data//eu/x``, ``/data/./eu/x`` or ``/data/us/../eu/x`` (the same file as ``/data/eu/x``) matched no rule
    on ``/data/eu/**`` and the job could run in any region. Only relative paths were normalised. Now every
    input is matched as the path it names too; here each spelling pinned to a host outside eu-west is refused
    at submit, exit 6, like the plain one."""
    (fleet.root / "policy.yaml").write_text("residency:\n  - {inputs: \"/data/eu/**\", regions: [eu-west]}\n")
    fleet.cli("controller", "start", check=True)
    try:
        for i, path in enumerate(("/data/eu/x.csv", "/data//eu/x.csv", "/data/./eu/x.csv", "/data/us/../eu/x.csv",
                                  "//data/eu/x.csv")):
            spec = fleet.write_spec(f"eu{i}", f"name: eu{i}\ncommand: [true]\ninputs: [\"{path}\"]\n"
                                              "constraints: {hosts: [local]}\n")
            refused = fleet.cli("submit", str(spec), "--queue-anyway")
            assert refused.code == 6, (path, refused)
            assert "residency[0]) keeps its data in eu-west" in refused.err, (path, refused.err)
    finally:
        fleet.cli("controller", "stop")


@pytest.mark.timeout(180)
def test_an_operator_cannot_tie_someone_elses_job_or_a_made_up_one_to_a_drift_report(
        fleet: Fleet, team_users: TeamUsers, request: pytest.FixtureRequest) -> None:
    """Finding (fixed): ``drift_trigger`` recorded any job id the caller named, so an operator could write on the
    audit chain that anyone's job (or one that never existed) was the retraining a drift report started. Now
    the job must exist, and another user's job needs what acting on others' jobs needs (maintainer there)."""
    operators = team_users.group("o")
    (fleet.root / "policy.yaml").write_text(f"roles:\n  - {{group: {operators}, role: operator}}\n")
    head: Head = request.getfixturevalue("head")
    alice = head.joined(team_users, groups=(operators,))
    bob = head.joined(team_users, groups=(operators,))
    spec = "name: never\ncommand: [true]\nresources: {gpus: 64}\n"
    jobs = {}
    for user in (alice, bob):
        path = user.write("never.yaml", spec)
        jobs[user.name] = user.cli("submit", str(path), "--queue-anyway", check=True).out.strip()
    report = {"reference": "r.parquet", "current": "c.parquet", "drifted": True, "drifted_columns": 1,
              "column_count": 1, "compared_columns": 1, "drift_share": 1.0, "drift_share_threshold": 0.5,
              "multiple_testing": "none", "columns": []}
    saved = _raw(alice, head, "drift_save_report", {"report": report})
    assert saved["answered"] == 1, saved
    report_id = saved["first_answer"]["report_id"]

    theirs = _raw(alice, head, "drift_trigger", {"report": report_id, "job_id": jobs[bob.name], "spec_path": "x"})
    assert theirs["refused"] == {"PermissionDeniedError": 1}, theirs
    assert theirs["first_error"].endswith(f"may not record a drift trigger for {bob.name}'s job {jobs[bob.name]}: "
                                          "that needs maintainer in default"), theirs
    made_up = _raw(alice, head, "drift_trigger", {"report": report_id, "job_id": "jnosuch", "spec_path": "x"})
    assert made_up["refused"] == {"NotFoundError": 1}, made_up
    own = _raw(alice, head, "drift_trigger", {"report": report_id, "job_id": jobs[alice.name], "spec_path": "x"})
    assert own["answered"] == 1, own
    triggers = fleet.cli_json("db", "query", "select target, actor from audit where action = 'drift.trigger'")
    triggers = triggers.get("rows", triggers) if isinstance(triggers, dict) else triggers
    assert len(triggers) == 1, triggers
