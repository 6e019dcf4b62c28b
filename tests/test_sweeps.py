"""A user sweeps a training job over a grid and random draws, watches it, finds the best run, and cancels one."""

from __future__ import annotations

import time

from conftest import Fleet

TRAIN = ("python -c \"import sys; from mlfleet import track; p = track.params(); "
         "track.log({'val_loss': (p['lr'] - 0.01) ** 2 + p['bs'] / 1000}); track.flush(); "
         "print('lr', sys.argv[1], 'bs', sys.argv[2])\" {params.lr} {params.bs}")


def grid_spec(fleet: Fleet, name: str, extra: str = "") -> str:
    return str(fleet.write_spec(name, f"name: {name}\ncommand: \"{TRAIN.replace(chr(34), chr(92) + chr(34))}\"\n"
                                      "sweep:\n  grid:\n    params.lr: [0.1, 0.01]\n    params.bs: [16, 32, 64]\n"
                                      f"  objective: {{metric: val_loss, mode: min}}\n{extra}"))


def test_a_two_by_three_grid_makes_six_runs_with_their_params_and_finds_the_best(fleet: Fleet) -> None:
    done = fleet.cli("submit", grid_spec(fleet, "grid"), "--wait", "--json", timeout=180)
    assert done.code == 0, done.err + done.out
    assert done.json()["progress"]["succeeded"] == 6

    runs = fleet.cli_json("runs", "list", "--where", "sweep = 'grid'")
    assert sorted((r["params"]["lr"], r["params"]["bs"]) for r in runs) == \
        sorted((lr, bs) for lr in (0.1, 0.01) for bs in (16, 32, 64))
    assert fleet.cli_json("runs", "list", "--where", "sweep = 'other'") == []

    sweep = fleet.cli_json("sweeps", "show", "grid")
    assert [c["name"] for c in sweep["children"]] == [f"grid-{i}" for i in range(6)]
    assert sweep["best"]["name"] == "grid-3" and sweep["best"]["point"] == {"params.lr": 0.01, "params.bs": 16}
    assert abs(sweep["best"]["value"] - 0.016) < 1e-9
    child = fleet.job(sweep["children"][4]["job_id"])
    assert fleet.cli("jobs", "logs", child["job_id"]).out.strip() == "lr 0.01 bs 32"  # {params.*} in the command
    text = fleet.cli("sweeps", "show", "grid").out
    assert "progress: 6/6 done (6 succeeded)" in text and "best: grid-3 val_loss=0.016" in text
    listed = fleet.cli("sweeps", "list").out
    assert "grid" in listed and "6/6 done" in listed


def test_max_parallel_two_never_runs_more_than_two_and_says_why_the_rest_wait(fleet: Fleet) -> None:
    spec = fleet.write_spec("par", "name: par\ncommand: \"sleep 6\"\nsweep:\n  grid:\n    params.i: [0, 1, 2, 3, 4]\n"
                                   "  max_parallel: 2\n")
    answer = fleet.cli("submit", str(spec), "--json")
    assert answer.code == 0, answer.err
    # A child seen pending may start before ``jobs why`` asks (a CLI call takes seconds on a loaded machine):
    # then look again, for whichever child is pending by then.
    def a_waiting_child() -> tuple[str, str] | None:
        for job in fleet.cli_json("jobs", "list"):
            if job["state"] == "pending" and "reached" in (job["reason"] or ""):
                said = fleet.cli("jobs", "why", job["job_id"]).out
                return None if "is not pending" in said else (job["reason"], said)
        return None

    reason, why = fleet.wait_for(a_waiting_child, timeout=60, what="a child waiting for max_parallel")
    assert reason.startswith("sweep par: max_parallel 2 reached (2 of its children running)")
    assert "sweep par: max_parallel 2" in why
    fleet.wait_for(lambda: fleet.cli_json("sweeps", "show", "par")["progress"]["succeeded"] == 5, timeout=90,
                   what="all five children")
    spans = fleet.cli_json("db", "query", "select epoch(started_at), epoch(finished_at) from runs")["rows"]
    assert len(spans) == 5
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # they did run side by side, and never three at once


def test_random_with_a_seed_draws_the_same_points_each_submit(fleet: Fleet) -> None:
    spec = fleet.write_spec("rnd", "name: rnd\ncommand: \"echo {params.lr} {params.opt}\"\nsweep:\n  random:\n"
                                   "    n: 4\n    seed: 11\n    space:\n      params.lr: {loguniform: [0.0001, 0.1]}\n"
                                   "      params.opt: {choice: [adam, sgd]}\n  max_parallel: 1\n")
    points = []
    for name in ("rnd-a", "rnd-b"):
        assert fleet.cli("submit", str(spec), "--name", name, "--queue-anyway").code == 0
        points.append([c["point"] for c in fleet.cli_json("sweeps", "show", name)["children"]])
    assert points[0] == points[1] and len({p["params.lr"] for p in points[0]}) == 4
    fleet.cli("sweeps", "cancel", "rnd-a")
    fleet.cli("sweeps", "cancel", "rnd-b")


def test_cancel_stops_the_running_children_and_the_queued_ones(fleet: Fleet) -> None:
    spec = fleet.write_spec("long", "name: long\ncommand: \"sleep 60\"\nsweep:\n  grid:\n    params.i: [1, 2, 3, 4, 5]\n"
                                    "  max_parallel: 2\n")
    assert fleet.cli("submit", str(spec)).code == 0
    fleet.wait_for(lambda: fleet.cli_json("sweeps", "show", "long")["progress"]["running"] == 2, what="two running")
    answer = fleet.cli_json("sweeps", "cancel", "long")
    assert answer["cancelled"] == 3 and answer["stopping"] == 2
    fleet.wait_for(lambda: fleet.cli_json("sweeps", "show", "long")["progress"]["cancelled"] == 5, timeout=40,
                   what="every child cancelled")
    assert fleet.cli("sweeps", "show", "nope").code == 4


def test_a_sweep_submitted_twice_with_its_key_is_one_sweep(fleet: Fleet) -> None:
    spec = fleet.write_spec("keyed", "name: keyed\ncommand: \"true\"\nsweep:\n  grid:\n    params.i: [1, 2]\n")
    first = fleet.cli("submit", str(spec), "--key", "sw-1", "--json")
    again = fleet.cli("submit", str(spec), "--key", "sw-1", "--json")
    assert first.code == 0 and again.code == 0 and again.json()["existing"]
    assert again.json()["sweep_id"] == first.json()["sweep_id"] and again.json()["jobs"] == first.json()["jobs"]
    other = fleet.cli("submit", str(spec), "--key", "sw-1", "--set", "sweep.grid={params.i: [3]}")
    assert other.code == 2 and "was already used for sweep" in other.err
    named_again = fleet.cli("submit", str(spec))
    assert named_again.code == 2 and "a sweep named 'keyed' exists already" in named_again.err
    assert len(fleet.cli_json("jobs", "list")) == 2


def test_hostile_sweeps_are_one_sentence_at_their_line(fleet: Fleet) -> None:
    head = "name: bad\ncommand: \"true\"\nsweep:\n"
    cases = {
        "  grid: {}\n": ":4: sweep.grid: is empty",
        "  grid:\n    params.lr: []\n": ":5: sweep.grid.params.lr: is an empty list",
        "  grid:\n    params.lr: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n    params.a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n"
        "    params.b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n    params.c: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n":
            ":3: sweep: makes 11,000 points, more than 10,000",
        "  random:\n    n: 0\n    space: {params.lr: {uniform: [0, 1]}}\n": ":5: sweep.random.n: must be an integer >= 1",
        "  random:\n    n: 3\n    space:\n      params.lr: {uniform: [1, 0]}\n":
            ":7: sweep.random.space.params.lr.uniform: lo 1 is above hi 0",
        "  random:\n    n: 3\n    space:\n      params.lr: {loguniform: [0, 1]}\n":
            ":7: sweep.random.space.params.lr.loguniform: lo must be above 0",
        "  grid:\n    params.lr: [0.1]\n  objective: {mode: min}\n": ":6: sweep.objective.metric: is required but missing",
        "  grid:\n    params.lr: [0.1]\n    resources.gpus: [1, 100]\n":
            ":6: sweep.grid.resources.gpus: point 1 (resources.gpus=100): must be an integer <= 64",
    }
    for i, (block, words) in enumerate(cases.items()):
        spec = fleet.write_spec(f"bad{i}", head + block)
        result = fleet.cli("submit", str(spec))
        assert result.code == 2, (block, result.err)
        assert f"{spec}{words}" in result.err, (block, result.err)
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert fleet.cli_json("jobs", "list") == []
    started = time.monotonic()
    assert fleet.cli_json("sweeps", "list") == [] and time.monotonic() - started < 30
