"""Files a command writes where the user says (--output): never into mlfleet's home, never over what the user had.

An export once aimed at $MLFLEET_HOME/mlfleet.duckdb replaced the live store with a CSV (exit 0), and every job
was gone after a restart; an existing file, or a symlink, was silently replaced; an immutable file ended in
"internal error". These are the stories that broke, through the real CLI and the controller's RPC.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from conftest import Fleet
from mlfleet.core.controller.client import RemoteError, connect

OWN = "is inside mlfleet's own folder"


def one_sentence(err: str) -> str:
    assert err.strip().count("\n") == 0 and "Traceback" not in err and "internal error" not in err, err
    return err.strip()


def a_job(fleet: Fleet) -> str:
    spec = fleet.write_spec("one", 'name: one\ncommand: "true"\n')
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    return done.json()["job_id"]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_an_export_aimed_at_the_store_or_hosts_yaml_is_refused_and_the_jobs_survive_a_restart(fleet: Fleet) -> None:
    job = a_job(fleet)
    store, hosts = fleet.home.db_path, fleet.home.hosts_file
    (fleet.files / "home-link").symlink_to(fleet.root)  # a folder of the user's that is the home, by another name
    sideways = f"{fleet.files}/../{fleet.root.name}/mlfleet.duckdb"
    attempts = [
        ["runs", "export", "--output", str(store), "--format", "csv"],
        ["runs", "export", "--output", str(store), "--format", "csv", "--force"],
        ["runs", "export", "--output", str(hosts), "--format", "csv", "--force"],
        ["runs", "export", "--output", sideways, "--format", "csv", "--force"],
        ["runs", "export", "--output", str(fleet.files / "home-link" / "mlfleet.duckdb"), "--format", "csv",
         "--force"],
        ["runs", "export", "--output", str(fleet.files / "home-link" / "logs" / "new.csv")],
        ["drift", "export", "dnosuch", "--output", str(store), "--force"],
        ["runs", "artifact", "get", "rnosuch", "m.bin", "--output", str(store), "--force"],
    ]
    for argv in attempts:
        refused = fleet.cli(*argv)
        assert refused.code == 2 and OWN in one_sentence(refused.err), (argv, refused.err)
    assert not hosts.exists() and not (fleet.root / "logs" / "new.csv").exists()
    assert store.read_bytes()[8:12] == b"DUCK" and no_temp_files(fleet.root)

    # The controller still works, and after a restart the job is still in the store.
    assert [j["job_id"] for j in fleet.cli_json("jobs", "list")] == [job]
    fleet.cli("controller", "stop", check=True)
    assert [j["job_id"] for j in fleet.cli_json("jobs", "list")] == [job]


def test_the_controller_refuses_it_too_when_a_script_calls_the_rpc(fleet: Fleet) -> None:
    job = a_job(fleet)

    async def export(output: str) -> str:
        async with await connect(fleet.home, autostart=False) as client:
            try:
                await client.call("runs_export", output=output, format="csv", force=True)
            except RemoteError as exc:
                return f"{exc.exit_code}: {exc}"
            return "written"

    for output in (str(fleet.home.db_path), str(fleet.home.config_file), str(fleet.root / ".." / fleet.root.name /
                                                                              "mlfleet.duckdb")):
        answer = asyncio.run(export(output))
        assert answer.startswith("2: ") and OWN in answer, answer
    assert not fleet.home.config_file.exists()
    fleet.cli("controller", "stop", check=True)
    assert [j["job_id"] for j in fleet.cli_json("jobs", "list")] == [job]


def test_an_existing_file_is_kept_without_force_and_replaced_whole_with_it(fleet: Fleet) -> None:
    a_job(fleet)
    mine = fleet.files / "p.csv"
    mine.write_text("precious\n")
    kept = fleet.cli("runs", "export", "--output", str(mine))
    assert kept.code == 2 and one_sentence(kept.err) == (
        f"mlfleet: {mine} already exists; nothing was written: pass --force to replace it, or choose another name")
    assert mine.read_text() == "precious\n"
    report = fleet.files / "report.json"
    report.write_text("mine\n")
    kept = fleet.cli("drift", "export", "dnosuch", "--output", str(report))  # refused before the id is looked up
    assert kept.code == 2 and "already exists" in one_sentence(kept.err) and report.read_text() == "mine\n"
    fetched = fleet.files / "q.bin"
    fetched.write_text("mine\n")
    kept = fleet.cli("runs", "artifact", "get", "rnosuch", "m.bin", "--output", str(fetched))
    assert kept.code == 2 and "already exists" in one_sentence(kept.err) and fetched.read_text() == "mine\n"

    inode = mine.stat().st_ino
    replaced = fleet.cli("runs", "export", "--output", str(mine), "--force")
    assert replaced.code == 0, replaced.err
    assert mine.read_text().startswith("run_id,") and mine.stat().st_ino != inode  # renamed in whole
    assert no_temp_files(fleet.files)


def test_a_symlink_or_a_device_is_refused_even_with_force_and_never_followed(fleet: Fleet) -> None:
    a_job(fleet)
    target = fleet.files / "target.txt"
    target.write_text("precious\n")
    (fleet.files / "link.csv").symlink_to(target)
    (fleet.files / "dangling.csv").symlink_to("/nonexistent/x.csv")
    os.mkfifo(fleet.files / "pipe.csv")
    for name, words in (("link.csv", "is a symbolic link"), ("dangling.csv", "is a symbolic link"),
                        ("pipe.csv", "is not a regular file")):
        for force in ([], ["--force"]):
            refused = fleet.cli("runs", "export", "--output", str(fleet.files / name), *force)
            assert refused.code == 2 and words in one_sentence(refused.err), (name, refused.err)
        refused = fleet.cli("drift", "export", "dnosuch", "--output", str(fleet.files / name), "--force")
        assert refused.code == 2 and words in one_sentence(refused.err), (name, refused.err)
    assert target.read_text() == "precious\n" and not Path("/nonexistent/x.csv").exists()
    assert (fleet.files / "link.csv").is_symlink() and (fleet.files / "dangling.csv").is_symlink()
    assert no_temp_files(fleet.files)


def test_an_immutable_file_is_one_sentence_and_no_temporary_file_stays(fleet: Fleet) -> None:
    a_job(fleet)
    locked = fleet.files / "p.csv"
    locked.write_text("precious\n")
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        refused = fleet.cli("runs", "export", "--output", str(locked), "--force")
        assert refused.code == 2, refused.err
        assert one_sentence(refused.err) == (
            f"mlfleet: cannot write {locked}: operation not permitted; check the file's permissions and attributes "
            "(lsattr; chattr -i), or choose another path")
        assert locked.read_text() == "precious\n" and no_temp_files(fleet.files)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
