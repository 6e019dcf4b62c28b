"""Stories of a Slurm cluster seen as a cluster: its partitions, nodes and free GPUs in ``hosts list``, the TUI and
``jobs why``, and GPU types told apart by partition on a cluster whose GRES has none.

The real cluster is tests/slurm.py's (one node, partition ``debug``, two GPUs of type ``fake``); the pure
stories feed the parsers what sinfo prints on bigger clusters.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

import pytest
from rich.console import Console
from textual.app import App

from mlfleet.agents import slurm
from mlfleet.core.base.errors import SpecError
from mlfleet.core.fleet import slurm_cluster as cluster_words
from mlfleet.core.fleet.inventory import SlurmDefaults
from mlfleet.core.jobs import scheduler
from mlfleet.core.jobs.dispatch import slurm_view
from mlfleet.core.jobs.slurm_plan import free_gpus_words, partition_and_gres
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import job_detail

import slurm as slurm_fixtures  # tests/slurm.py
from test_slurm import _add_cluster

slurm_cluster = slurm_fixtures.slurm_cluster  # the real cluster, one per module

# What Slurm 22.05 prints for `sinfo -h -N -O SINFO_NODE_FIELDS` on a cluster whose GRES has no GPU types: one
# line per node and partition; a node mid-job is "mix", one that stopped answering "down*".
TYPELESS = """\
a1|gpu-a100|up|mix|64|512000|gpu:4|gpu:3(IDX:0-2)|
a2|gpu-a100|up|idle|64|512000|gpu:4|gpu:0(IDX:N/A)|
h1|gpu-h100|up|alloc|96|1024000|gpu:8(S:0-1)|gpu:8(IDX:0-7)|
h2|gpu-h100|up|down*|96|1024000|gpu:8(S:0-1)|gpu:0|
c1|cpu*|up|idle|32|128000|(null)|(null)|
"""


def _table_of(out: str, host: str) -> dict[str, list[str]]:
    """The partition rows under ``host``'s heading in ``hosts list``, by partition."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{host}: Slurm cluster"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_a_typeless_cluster_is_read_node_by_node_with_its_free_gpus():
    shape = slurm.parse_sinfo_nodes(TYPELESS)
    parts = {p["name"]: p for p in shape["partitions"]}
    assert parts["gpu-a100"]["nodes"] == {"allocated": 1, "idle": 1, "down": 0, "total": 2}
    assert parts["gpu-a100"]["gpus"] == {"gpu": {"total": 8, "free": 5, "free_max_node": 4}}
    # the down node's GPUs are in the total, never free; the busy one has none left
    assert parts["gpu-h100"]["gpus"] == {"gpu": {"total": 16, "free": 0, "free_max_node": 0}}
    assert parts["gpu-h100"]["nodes"]["down"] == 1 and parts["cpu"]["default"] and parts["cpu"]["gpus"] == {}
    assert shape["nodes"] == {"allocated": 2, "idle": 2, "down": 1, "total": 5}
    assert shape["gpus"] == {"gpu": {"total": 24, "free": 5}}
    assert cluster_words.free_gpus_sentence(parts["gpu-a100"]) == (
        "partition gpu-a100 has 5 of 8 GPUs free (gpu: 5/8), at most 4 on one node")
    # commas inside (IDX:...) are not item separators; typed GRES with two types stay apart
    assert slurm.gres_gpus("gpu:a100:3(IDX:0,2-3),gpu:v100:1(IDX:4)") == {"a100": 3, "v100": 1}
    assert [slurm.node_state(s) for s in ("idle~", "mix", "drng", "down*", "alloc*", "resv")] == [
        "idle", "allocated", "down", "down", "down", "down"]


def test_a_node_in_two_partitions_counts_once_for_the_cluster():
    shape = slurm.parse_sinfo_nodes("n1|short*|up|idle|8|1000|gpu:t4:2|gpu:t4:0(IDX:N/A)|\n"
                                    "n1|long|up|idle|8|1000|gpu:t4:2|gpu:t4:0(IDX:N/A)|\n")
    assert [p["gpus"]["t4"]["free"] for p in shape["partitions"]] == [2, 2]
    assert shape["gpus"] == {"t4": {"total": 2, "free": 2}} and shape["nodes"]["total"] == 1


def test_a_thousand_node_sinfo_is_one_pass():
    lines = "".join(f"n{i}|gpu*|up|{'mix' if i % 3 else 'idle'}|64|512000|gpu:a100:8(S:0-1)|"
                    f"gpu:a100:{i % 3 * 2}(IDX:0-{i % 3})|\n" for i in range(1000))
    started = time.perf_counter()
    shape = slurm.parse_sinfo_nodes(lines)
    took = time.perf_counter() - started
    (part,) = shape["partitions"]
    assert part["node_count"] == 1000 and part["gpus"]["a100"]["total"] == 8000
    assert part["gpus"]["a100"]["free"] == 8000 - sum(i % 3 * 2 for i in range(1000))
    assert took < 0.5, f"parsing 1000 nodes took {took:.3f} s"


def test_gpu_types_told_apart_by_partition_are_placed_and_sent_there():
    shape = slurm.parse_sinfo_nodes(TYPELESS)
    mapped = SlurmDefaults(gpu_partitions={"a100": "gpu-a100", "h100": "gpu-h100"})
    view = slurm_view("hpc", True, {}, shape, None, None, mapped.gpu_partitions)
    assert sorted({g.name for g in view.gpus}) == ["a100", "h100"] and len(view.gpus) == 12
    jobs = [scheduler.QueuedJob("a", gpus=4, gpu_types=("A100",), hosts=("hpc",)),
            scheduler.QueuedJob("big", gpus=8, gpu_types=("a100",), hosts=("hpc",)),
            scheduler.QueuedJob("v", gpus=1, gpu_types=("v100",), hosts=("hpc",))]
    decision = scheduler.schedule([view], jobs)
    assert [p.job_id for p in decision.placements] == ["a"]  # 8 a100 are in the partition, never on one node
    assert "need v100" in decision.short_reason("v"), decision.short_reason("v")
    # without the map the same cluster offers no a100: the job is refused with the types it has
    plain = slurm_view("hpc", True, {}, shape, "gpu-a100", None)
    assert "GPU type gpu" in scheduler.schedule([plain], jobs[:1]).short_reason("a")

    assert partition_and_gres(mapped, 4, ("A100",)) == ("gpu-a100", "gpu:4")  # no type in --gres: GRES has none
    assert partition_and_gres(mapped, 2, ("a100", "h100")) == ("gpu-a100,gpu-h100", "gpu:2")  # Slurm picks
    assert partition_and_gres(mapped, 2, ("v100",)) == (None, "gpu:v100:2")  # unmapped: as before
    assert partition_and_gres(SlurmDefaults(partition="gpu"), 1, ()) == ("gpu", "gpu:1")
    assert free_gpus_words(mapped, shape, 4, ("a100",)) == (
        "partition gpu-a100 has 5 of 8 GPUs free (gpu: 5/8), at most 4 on one node")
    assert free_gpus_words(mapped, shape, 2, ("a100", "h100")).endswith(
        "; partition gpu-h100 has 0 of 16 GPUs free (gpu: 0/16)")


def test_a_gpu_partition_map_is_added_in_one_command_and_mistakes_are_one_sentence(fleet):
    from mlfleet.core.fleet.inventory import load_inventory

    added = fleet.cli("hosts", "add-slurm", "hpc", "--login", "ml@login1.example.com", "--gpu-partition",
                      "a100=gpu-a100", "--gpu-partition", "h100=gpu-h100")
    assert added.code == 0, added.err
    (path,) = list(fleet.root.rglob("hosts.yaml"))
    host = {h.name: h for h in load_inventory(path)}["hpc"]
    assert host.slurm.gpu_partitions == {"a100": "gpu-a100", "h100": "gpu-h100"}
    bad = fleet.cli("hosts", "add-slurm", "hpc2", "--login", "ml@login1", "--gpu-partition", "a100")
    assert bad.code != 0 and "GPU_TYPE=PARTITION" in bad.err and "Traceback" not in bad.err
    spaced = fleet.cli("hosts", "add-slurm", "hpc3", "--login", "ml@login1", "--gpu-partition", "a100=gpu a100")
    assert spaced.code != 0 and "slurm.gpu_partitions holds something that is not a Slurm partition name" in spaced.err
    assert "Traceback" not in spaced.err
    assert "a100=gpu a100" not in path.read_text()
    typo = path.parent / "typo.yaml"  # a hand edit of hosts.yaml with a misspelt key: its line and field
    typo.write_text(path.read_text().replace("gpu_partitions:", "gpu_partitons:"))
    with pytest.raises(SpecError) as refused:
        load_inventory(typo)
    assert re.search(r"typo.yaml:\d+: hosts\[\d\]\.slurm\.gpu_partitons: unknown field", str(refused.value))


def test_hosts_list_and_the_tui_show_the_cluster_and_jobs_why_its_free_gpus(ssh_fleet, slurm_cluster):
    fleet = _add_cluster(ssh_fleet, slurm_cluster)
    fleet.wait_for(lambda: (h := ssh_fleet.host("cluster"))["state"] == "up" and h["info"].get("slurm"), 60,
                   what="the cluster to be up with its sinfo")
    out = fleet.cli("hosts", "list", check=True).out
    assert _table_of(out, "cluster")["debug*"] == ["debug*", "up", "1", "1", "0", "0", "fake", "2/2"], out
    cluster_row = next(line for line in out.splitlines() if line.startswith("cluster "))
    assert "slurm" in cluster_row and "2/2 free" in cluster_row, cluster_row

    spec = "name: {name}\nconstraints: {{hosts: [cluster]}}\nresources: {{gpus: 2}}\ncommand: [sleep, '120']\n"
    hog = fleet.cli("submit", str(fleet.write_spec("hog", spec.format(name="hog"))), check=True).out.strip()
    fleet.wait_state(hog, {"running"}, timeout=90)
    seen_at: set[float] = set()

    def taken() -> str | None:
        host = ssh_fleet.host("cluster")
        seen_at.add(host["info"]["slurm"]["at"])
        text = fleet.cli("hosts", "list", check=True).out
        taken_now = _table_of(text, "cluster")["debug*"][3:] == ["0", "1", "0", "fake", "0/2"]
        return text if taken_now and len(seen_at) >= 2 else None  # two refreshes seen: how far apart they are

    out = fleet.wait_for(taken, slurm_cluster_refresh_wait(), interval=1.0, what="hosts list to show 0/2 free")
    assert "0/2 free" in next(line for line in out.splitlines() if line.startswith("cluster "))
    stamps = sorted(seen_at)
    assert all(b - a >= cluster_words.REFRESH_S - 1 for a, b in zip(stamps, stamps[1:])), stamps  # not every tick

    waiter = fleet.cli("submit", str(fleet.write_spec("waiter", spec.format(name="waiter"))), check=True).out.strip()
    why = fleet.wait_for(lambda: "Resources" in (text := fleet.cli("jobs", "why", waiter).out) and text, 60,
                         what="Slurm's reason in jobs why")
    assert "pending in Slurm (Resources: waiting for resources" in why, why
    assert why.rstrip().endswith("; partition debug has 0 of 2 GPUs free (fake: 0/2)"), why

    page = Console(width=200, record=True)  # the TUI's job page (Enter on the job) says the same
    page.print(job_detail(fleet.cli_json("jobs", "show", waiter)))
    assert "partition debug has 0 of 2 GPUs free (fake: 0/2)" in page.export_text()
    host = ssh_fleet.host("cluster")
    row, card = asyncio.run(_fleet_view_of(host))
    assert row[6] == "0/2 free", row
    assert "debug*" in card and "fake 0/2" in card and "sinfo" in card, card
    for job_id in (waiter, hog):
        fleet.cli("jobs", "cancel", job_id, check=True)
    for job_id in (waiter, hog):
        assert fleet.wait_state(job_id, {"cancelled", "failed", "succeeded"}, timeout=90)["state"] == "cancelled"


def test_a_job_naming_a_mapped_gpu_type_runs_in_that_partition_with_a_typeless_gres(ssh_fleet, slurm_cluster):
    """The map says partition debug's GPUs are "a100" (its GRES says "fake"): a job asking for one a100 is placed on
    the cluster, and sbatch gets --partition=debug --gres=gpu:1, which Slurm runs with a GPU."""
    fleet, server = ssh_fleet.fleet, ssh_fleet.servers["node-a"]
    fleet.cli("hosts", "add-slurm", "cluster", "--login", f"{server.user}@127.0.0.1", "--port", str(server.port),
              "--identity", str(ssh_fleet.user_key), "--state-dir", str(ssh_fleet.state_dir("node-a")),
              "--agent-command", f"env SLURM_CONF={slurm_cluster.conf} {sys.executable} -m mlfleet",
              "--gpu-partition", "a100=debug", check=True)
    fleet.cli("hosts", "trust", "cluster", "--yes", check=True)
    spec = ("name: on-a100\nconstraints: {hosts: [cluster]}\nresources: {gpus: 1, gpu_type: a100}\n"
            "command: [sh, -c, 'echo CVD=$CUDA_VISIBLE_DEVICES']\n")
    job_id = fleet.cli("submit", str(fleet.write_spec("a100", spec)), check=True).out.strip()
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
    assert job["state"] == "succeeded" and job["host"] == "cluster", job
    assert "CVD=0" in fleet.cli("jobs", "logs", job_id).out  # Slurm gave it a GPU: --gres=gpu:1 was asked
    record = fleet.wait_for(lambda: next((line for line in _jobcomp(slurm_cluster).splitlines()
                                          if f"Name=mlfleet-{job['run_id']} " in line), None), 30,
                            what="the job's record in Slurm's job completion log")
    assert "Partition=debug" in record, record
    unmapped = fleet.cli("submit", str(fleet.write_spec("v100", spec.replace("a100", "v100"))))
    assert unmapped.code != 0 and "cluster: GPU type a100 (need v100)" in unmapped.err, unmapped.err


def slurm_cluster_refresh_wait() -> float:
    return 3 * cluster_words.REFRESH_S + 20


def _jobcomp(cluster) -> str:
    path = cluster.root / "jobcomp.txt"
    return path.read_text() if path.exists() else ""


class _FleetApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.view = FleetScreen()

    def on_mount(self) -> None:
        self.push_screen(self.view)


async def _fleet_view_of(host: dict[str, Any]) -> tuple[list[str], str]:
    """The fleet view fed one real ``hosts_list`` entry: the host's table row and its card's cluster block."""
    app = _FleetApp()
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        await app.view.show_hosts([host])
        await pilot.pause()
        row = [str(cell) for cell in app.view.table.get_row(host["name"])]
        card = str(app.view.card.query_one("#gpus").render())
    return row, card
