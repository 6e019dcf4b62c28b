"""Jobs land on the GPUs that are really free, and a waiting job says why (real agent, simulated GPUs)."""

from __future__ import annotations

from conftest import Fleet

H100 = "NVIDIA H100 80GB HBM3"


def _gpu(busy: bool = False) -> str:
    text = f"  - name: {H100}\n    memory_total: 80GiB\n"
    if busy:
        text += "    utilization: 95\n    processes: [{pid: 4121, used_memory: 30GiB, name: jupyter}]\n"
    return text


def _simulate(fleet: Fleet, *gpus: str) -> None:
    path = fleet.root / "gpus.yaml"
    path.write_text("gpus:\n" + "".join(gpus))
    if not fleet.home.config_file.exists():
        fleet.home.config_file.write_text(f"scheduler: {{utilization_window: 1s}}\nlocal: {{simulate_gpus: {path}}}\n")
        fleet.cli("controller", "start", check=True)


def _wait_gpus(fleet: Fleet, count: int) -> None:
    fleet.wait_for(lambda: len((fleet.cli_json("hosts", "list")[0]["telemetry"] or {}).get("gpus", [])) == count,
                   what=f"{count} simulated GPUs")


def _cuda(fleet: Fleet, job_id: str) -> str:
    return fleet.wait_for(lambda: next((line[5:] for line in fleet.cli("jobs", "logs", job_id).out.splitlines()
                                        if line.startswith("cuda=")), None), what="the job's CUDA_VISIBLE_DEVICES")


def test_a_foreign_process_sends_the_job_elsewhere_and_its_end_frees_the_gpu(fleet: Fleet) -> None:
    _simulate(fleet, _gpu(busy=True), _gpu())
    _wait_gpus(fleet, 2)
    spec = fleet.write_spec("one-gpu", "name: one-gpu\nresources: {gpus: 1}\n"
                                       "command: \"echo cuda=$CUDA_VISIBLE_DEVICES; sleep 60\"\n")
    first = fleet.cli("submit", str(spec), check=True).out.strip()
    assert _cuda(fleet, first) == "1"  # GPU 0 is someone else's notebook

    second = fleet.cli("submit", str(spec), check=True).out.strip()
    why = fleet.wait_for(lambda: (j := fleet.job(second))["why_pending"] and j, what="a reason")
    message = why["why_pending"][0]["message"]
    assert message.startswith("0 of 2 GPUs free (need 1); GPU 0 busy: 95% util by pid 4121 (not mlfleet)")
    assert "GPU 0 busy" in fleet.cli("jobs", "why", second).out

    _simulate(fleet, _gpu(), _gpu())  # the notebook is closed
    assert _cuda(fleet, second) == "0"
    for job_id in (first, second):
        fleet.cli("jobs", "cancel", job_id, check=True)


def test_a_four_gpu_job_waits_while_three_are_free_and_says_so(fleet: Fleet) -> None:
    _simulate(fleet, _gpu(), _gpu(), _gpu(busy=True), _gpu())
    _wait_gpus(fleet, 4)
    spec = fleet.write_spec("four", "name: four\nresources: {gpus: 4, gpu_memory: 20GiB}\ncommand: [true]\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    why = fleet.wait_for(lambda: (j := fleet.job(job_id))["why_pending"] and j, what="a reason")
    assert why["why_pending"][0]["message"] == ("3 of 4 GPUs have 20.0 GiB free (need 4); "
                                                "GPU 2 busy: 95% util by pid 4121 (not mlfleet)")
    listed = next(j for j in fleet.cli_json("jobs", "list") if j["job_id"] == job_id)
    assert listed["reason"].startswith("local: 3 of 4 GPUs have 20.0 GiB free")

    _simulate(fleet, _gpu(), _gpu(), _gpu(), _gpu())
    done = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert done["state"] == "succeeded" and sorted(done["gpus"]) == [0, 1, 2, 3]


def test_a_drained_host_takes_no_new_jobs_until_undrained(fleet: Fleet) -> None:
    _simulate(fleet, _gpu())
    _wait_gpus(fleet, 1)
    assert fleet.cli_json("hosts", "drain", "local", "--reason", "driver upgrade")["drained"] is True
    spec = fleet.write_spec("quick", "name: quick\nresources: {gpus: 1}\ncommand: [true]\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    why = fleet.wait_for(lambda: (j := fleet.job(job_id))["why_pending"] and j, what="a reason")
    assert why["why_pending"][0]["message"].startswith("host drained (by ") and "driver upgrade" in \
        why["why_pending"][0]["message"]
    fleet.cli("hosts", "undrain", "local", check=True)
    assert fleet.wait_state(job_id, {"succeeded", "failed"})["state"] == "succeeded"
    actions = [e["action"] for e in fleet.cli_json("audit", "list")]
    assert "host.drain" in actions and "host.undrain" in actions


def test_a_residency_constraint_is_never_broken_and_each_refusal_is_audited(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("local: {labels: {region: us-east}}\n")
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: fleet.cli_json("hosts", "list")[0]["telemetry"], what="telemetry")
    spec = fleet.write_spec("eu", "name: eu-only\nconstraints: {labels: {region: eu-*}}\ncommand: [true]\n")
    refused = fleet.cli("submit", str(spec))
    assert refused.code == 2 and "label region=us-east (need eu-*)" in refused.err
    job_id = fleet.cli("submit", str(spec), "--queue-anyway", check=True).out.strip()
    fleet.wait_for(lambda: any(e["action"] == "scheduler.refuse" and e["target"] == job_id
                               for e in fleet.cli_json("audit", "list")), what="the refusal in the audit trail")
    assert fleet.job(job_id)["state"] == "pending"


def test_a_raised_priority_puts_a_waiting_job_first(fleet: Fleet) -> None:
    _simulate(fleet, _gpu())
    _wait_gpus(fleet, 1)
    hold = fleet.write_spec("hold", "name: hold\nresources: {gpus: 1}\ncommand: [sleep, '60']\n")
    quick = fleet.write_spec("quick", "name: quick\nresources: {gpus: 1}\ncommand: [true]\n")
    holder = fleet.cli("submit", str(hold), check=True).out.strip()
    fleet.wait_state(holder, {"running"})
    early = fleet.cli("submit", str(quick), check=True).out.strip()
    late = fleet.cli("submit", str(quick), check=True).out.strip()
    fleet.cli("jobs", "priority", late, "10", check=True)  # the later one, raised: it must go first now
    fleet.cli("jobs", "cancel", holder, check=True)
    fleet.wait_state(late, {"running", "succeeded"})
    first, second = fleet.wait_state(late, {"succeeded"}), fleet.wait_state(early, {"succeeded"})
    assert first["started_at"] <= second["started_at"], (first, second)
