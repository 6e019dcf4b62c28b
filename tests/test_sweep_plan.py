"""A sweep's points come from its block alone: grids in written order, seeded draws the same every time, mistakes named."""

from __future__ import annotations

import pytest

from mlfleet.core.base.errors import SpecError
from mlfleet.core.jobs.spec import validate_job_spec
from mlfleet.core.sweeps import plan
from mlfleet.core.sweeps.children import children


def test_a_grid_is_every_combination_with_the_last_path_fastest() -> None:
    points = plan.plan({"grid": {"params.lr": [0.1, 0.01], "params.bs": [16, 32, 64]}})
    assert points == [{"params.lr": lr, "params.bs": bs} for lr in (0.1, 0.01) for bs in (16, 32, 64)]


def test_random_with_a_seed_gives_the_same_points_twice_and_another_seed_others() -> None:
    block = {"random": {"n": 20, "seed": 7, "space": {
        "params.lr": {"loguniform": [1e-5, 1e-1]}, "params.dropout": {"uniform": [0.0, 0.5]},
        "params.layers": {"int": [1, 4]}, "params.opt": {"choice": ["adam", "sgd"]}}}}
    first, again = plan.plan(block), plan.plan(block)
    assert first == again and len(first) == 20
    assert all(1e-5 <= p["params.lr"] <= 1e-1 and 0 <= p["params.dropout"] <= 0.5 for p in first)
    assert {p["params.layers"] for p in first} <= {1, 2, 3, 4} and {p["params.opt"] for p in first} <= {"adam", "sgd"}
    # log-uniform: spread over the decades, not bunched near the top
    assert any(p["params.lr"] < 1e-3 for p in first)
    other = plan.plan({"random": {**block["random"], "seed": 8}})
    assert other != first


def test_grid_and_random_together_combine_every_grid_point_with_every_draw() -> None:
    points = plan.plan({"grid": {"resources.gpus": [1, 2]},
                        "random": {"n": 3, "seed": 1, "space": {"params.lr": {"uniform": [0, 1]}}}})
    assert len(points) == 6 and [p["resources.gpus"] for p in points] == [1, 1, 1, 2, 2, 2]
    assert [p["params.lr"] for p in points[:3]] == [p["params.lr"] for p in points[3:]]


@pytest.mark.parametrize("block, where, words", [
    ({}, ("sweep",), "has neither grid: nor random:"),
    ({"grid": {}}, ("sweep", "grid"), "is empty"),
    ({"grid": {"params.lr": []}}, ("sweep", "grid", "params.lr"), "is an empty list"),
    ({"grid": {"params.a": list(range(101)), "params.b": list(range(100))}}, ("sweep",),
     "makes 10,100 points, more than 10,000"),
    ({"random": {"n": 2, "space": {"params.lr": {"uniform": [1, 0]}}}},
     ("sweep", "random", "space", "params.lr", "uniform"), "lo 1 is above hi 0"),
    ({"random": {"n": 2, "space": {"params.lr": {"loguniform": [0, 1]}}}},
     ("sweep", "random", "space", "params.lr", "loguniform"), "lo must be above 0 for loguniform"),
    ({"random": {"n": 2, "space": {"params.lr": {}}}}, ("sweep", "random", "space", "params.lr"),
     "must give one distribution"),
    ({"random": {"n": 2, "space": {}}}, ("sweep", "random", "space"), "is empty"),
    ({"grid": {"name": ["a", "b"]}}, ("sweep", "grid", "name"), "name cannot be swept"),
])
def test_mistakes_are_one_problem_at_their_path(block: dict, where: tuple, words: str) -> None:
    found = plan.problems(block)
    assert found and found[0].parts == where and words in found[0].problem


def test_a_huge_grid_is_refused_without_being_built() -> None:
    block = {"grid": {f"params.p{i}": list(range(100)) for i in range(10)}}  # 10**20 points
    assert plan.count_points(block) == 10**20
    assert "more than 10,000" in plan.problems(block)[0].problem


def spec(sweep: dict, **extra) -> dict:
    return {"name": "s", "command": "echo {params.lr}", "workdir": "/tmp", "sweep": sweep, **extra}


def test_children_are_the_base_spec_with_each_point_set_and_named_by_number() -> None:
    made = children(validate_job_spec(spec({"grid": {"params.lr": [0.1, 0.2], "resources.gpus": [0]}},
                                           params={"bs": 8})))
    assert [c.spec.name for c in made] == ["s-0", "s-1"]
    assert [c.spec.params for c in made] == [{"bs": 8, "lr": 0.1}, {"bs": 8, "lr": 0.2}]
    assert all(c.spec.sweep is None for c in made)


def test_a_child_the_schema_refuses_is_named_by_its_point() -> None:
    with pytest.raises(SpecError) as exc:
        children(validate_job_spec(spec({"grid": {"params.lr": [0.1], "resources.gpuz": [1]}})))
    assert "sweep.grid.resources.gpuz: point 0 (resources.gpuz=1): unknown field; did you mean 'gpus'?" in str(exc.value)


def test_the_sweep_block_is_typed_by_the_schema() -> None:
    with pytest.raises(SpecError) as exc:
        validate_job_spec(spec({"random": {"n": 0, "space": {"params.lr": {"unifrom": [0, 1]}}},
                                "objective": {"mode": "min"}}))
    text = str(exc.value)
    assert "sweep.random.n: must be an integer >= 1" in text
    assert "sweep.random.space.params.lr.unifrom: unknown field; did you mean 'uniform'?" in text
    assert "sweep.objective.metric: is required but missing" in text


def test_bounds_written_as_yaml_reads_them_in_exponent_form_are_numbers(tmp_path) -> None:
    """``loguniform: [1e-5, 1e-1]`` is how everyone writes a learning-rate range; YAML 1.1 reads 1e-5 as text."""
    from mlfleet.core.base.models import to_plain
    from mlfleet.core.jobs.spec import load_job_spec

    path = tmp_path / "sweep.yaml"
    path.write_text("name: lr\ncommand: [python, -c, pass]\n"
                    "sweep:\n  random:\n    n: 50\n    seed: 3\n"
                    "    space: {params.lr: {loguniform: [1e-5, 1e-1]}, params.wd: {uniform: [0, 2E-2]}}\n")
    job = load_job_spec(path)
    points = plan.plan(to_plain(job)["sweep"])
    assert len(points) == 50
    assert all(1e-5 <= p["params.lr"] <= 1e-1 and 0 <= p["params.wd"] <= 2e-2 for p in points)
    assert min(p["params.lr"] for p in points) < 1e-3 < max(p["params.lr"] for p in points)  # spread over decades
    path.write_text(path.read_text().replace("1e-5", "1e-5x"))  # text that is no number stays a mistake
    with pytest.raises(SpecError, match="loguniform"):
        load_job_spec(path)
