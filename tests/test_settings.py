"""Installation settings: a mistake is one sentence with its line; a change is audited."""

from __future__ import annotations

from conftest import Fleet


def test_a_bad_settings_file_stops_the_command_with_its_line(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("controller:\n  tick: 0.5s\ntelemetry:\n  retension: 7d\n")
    result = fleet.cli("jobs", "list")
    assert result.code == 2
    assert result.err.strip() == (f"mlfleet: {fleet.home.config_file}:4: telemetry.retension: unknown field; "
                                  "did you mean 'retention'?")
    assert fleet.controller_pid is None


def test_an_out_of_range_setting_names_the_range(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("telemetry:\n  window: 2h\n")
    result = fleet.cli("controller", "start")
    assert result.code == 2
    assert ":2: telemetry.window: 7200 s is out of range; use between 1 s and 3600 s" in result.err


def test_a_log_cap_too_small_to_keep_a_line_is_refused_with_its_line(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("controller:\n  tick: 0.5s\nlogs:\n  max_size: 4KiB\n")
    result = fleet.cli("jobs", "list")
    assert result.code == 2
    assert result.err.strip() == (f"mlfleet: {fleet.home.config_file}:4: logs.max_size: 4096 bytes is out of range; "
                                  "use between 1MiB and 1TiB")


def test_an_artifact_root_must_be_a_full_path_on_the_node(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("local:\n  artifact_roots:\n    - /data/models\n    - models\n")
    result = fleet.cli("jobs", "list")
    assert result.code == 2
    assert result.err.strip() == (f"mlfleet: {fleet.home.config_file}:4: local.artifact_roots[1]: 'models' is not an "
                                  "absolute path; write the folder's full path on the node, e.g. /data/models")
    fleet.home.config_file.unlink()
    fleet.home.hosts_file.write_text("hosts:\n  - name: gpu-a\n    address: 10.0.0.1\n    artifact_roots: [data]\n")
    result = fleet.cli("hosts", "list")
    assert result.code == 2
    assert result.err.strip() == (f"mlfleet: {fleet.home.hosts_file}:4: hosts[0].artifact_roots[0]: 'data' is not an "
                                  "absolute path; write the folder's full path on the node, e.g. /data/models")


def test_a_changed_settings_file_is_audited_with_its_owner(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("controller:\n  tick: 0.2s\n")
    fleet.cli("controller", "start", check=True)
    fleet.cli("controller", "stop", check=True)
    fleet.cli("controller", "start", check=True)  # unchanged: no second event
    fleet.cli("controller", "stop", check=True)
    fleet.home.config_file.write_text("controller:\n  tick: 0.3s\n")
    events = [e for e in fleet.cli_json("audit", "list") if e["action"] == "config.change"]
    assert len(events) == 2
    assert all(e["target"] == str(fleet.home.config_file) and e["actor"] for e in events)
