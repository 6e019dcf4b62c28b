"""A new user imports the ~/.ssh/config they already have: Include, Match, a bastion, a ProxyCommand.

The corpus is tests/ssh_configs/ (a realistic config and what it includes);
the bastion and the lab machine are two real sshd on loopback. The bastion
logs every forward it makes, and stopping it takes down exactly the hosts
that are reached through it: the route is proven, not assumed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, Fleet

CORPUS = REPO / "tests" / "ssh_configs"


class Lab:
    """A bastion and a lab machine (real sshd), and the user's ssh config that describes them."""

    def __init__(self, fleet: Fleet) -> None:
        from sshd import SshServer, keygen

        self.fleet = fleet
        self.key = keygen(fleet.root / "user_key")
        self.bastion = SshServer(fleet.root / "sshd-bastion", self.key, log_level="DEBUG1").start()
        self.target = SshServer(fleet.root / "sshd-target", self.key).start()
        self.dir = fleet.root / "ssh"
        values = {"{ROOT}": str(self.dir), "{KEY}": str(self.key), "{USER}": self.bastion.user,
                  "{BASTION_PORT}": str(self.bastion.port), "{TARGET_PORT}": str(self.target.port)}
        for source in CORPUS.rglob("*"):
            if source.is_file() and "hostile" not in source.parts:
                text = source.read_text()
                for placeholder, value in values.items():
                    text = text.replace(placeholder, value)
                dest = self.dir / source.relative_to(CORPUS)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text)
        bastion_key = " ".join((self.bastion.root / "host_key.pub").read_text().split()[:2])
        (self.dir / "bastion_known_hosts").write_text(f"[127.0.0.1]:{self.bastion.port} {bastion_key}\n")
        self.config = self.dir / "config"

    def run_agents_from_this_checkout(self) -> None:
        """A hand edit of hosts.yaml, as the docs allow: the nodes run mlfleet from here, in their own folders."""
        data = yaml.safe_load(self.fleet.home.hosts_file.read_text())
        for host in data["hosts"]:
            host["agent_command"] = f"{sys.executable} -m mlfleet"
            host["state_dir"] = str(self.fleet.root / f"state-{host['name']}")
        self.fleet.home.hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))

    def host(self, name: str) -> dict:
        return next(h for h in self.fleet.cli_json("hosts", "list") if h["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict:
        return self.fleet.wait_for(lambda: (h := self.host(name))["state"] == state and h, timeout,
                                   what=f"{name} to be {state}")

    def stop(self) -> None:
        self.bastion.stop()
        self.target.stop()


def test_hosts_behind_a_bastion_are_imported_with_their_route_and_run_jobs_through_it(fleet: Fleet) -> None:
    lab = Lab(fleet)
    try:
        first = fleet.cli("hosts", "import-ssh-config", "--file", str(lab.config))
        assert first.code == 2, first  # one host could not be honoured: said, and the others imported
        assert "Traceback" not in first.err
        assert first.out.strip() == "added team-gpu, gpu-jump, gpu-proxied"
        lines = first.err.splitlines()
        assert any(line.startswith("mlfleet: old-box not imported: host old-box: IdentityFile ")
                   and "id_mlfleet_test_deleted_old-box" in line and "does not exist" in line for line in lines), lines
        assert (f"mlfleet: bastion is the jump host of gpu-jump, gpu-proxied, not a fleet host: not imported "
                f"(add --host bastion to import it too)") in lines
        assert any("'Match exec' is not evaluated" in line and f"{lab.config}:24:" in line for line in lines), lines
        assert not (lab.dir / "match-exec-ran").exists()  # an import never runs a command from the config

        again = fleet.cli("hosts", "import-ssh-config", "--file", str(lab.config), "--json")
        report = again.json()
        assert again.code == 2 and report["added"] == [] and report["skipped"] == ["team-gpu", "gpu-jump", "gpu-proxied"]
        assert list(report["refused"]) == ["old-box"] and report["jump_hosts"] == {"bastion": ["gpu-jump", "gpu-proxied"]}

        hosts = {h["name"]: h for h in yaml.safe_load(fleet.home.hosts_file.read_text())["hosts"]}
        assert set(hosts) == {"team-gpu", "gpu-jump", "gpu-proxied"}  # no bastion, no pattern, no old-box
        assert hosts["team-gpu"]["port"] == lab.target.port  # the included Match came first, so its Port won
        assert hosts["gpu-jump"]["proxy_jump"] == [{"address": "127.0.0.1", "port": lab.bastion.port,
                                                    "user": lab.bastion.user, "identity": str(lab.key)}]
        assert hosts["gpu-proxied"]["proxy_command"] == f"ssh -F {lab.dir}/proxy.conf -W %h:%p bastion"
        lab.run_agents_from_this_checkout()

        trust = fleet.cli("hosts", "trust", "gpu-jump", "--yes", check=True).out
        assert f"the jump host 127.0.0.1:{lab.bastion.port} of gpu-jump presents ssh-ed25519 key" in trust
        assert trust.strip().endswith("for gpu-jump")  # then the lab machine's own key, asked through the bastion
        known = fleet.home.known_hosts_file.read_text()
        assert f"[127.0.0.1]:{lab.bastion.port} " in known and f"[127.0.0.1]:{lab.target.port} " in known
        assert "already trusted" in fleet.cli("hosts", "trust", "gpu-proxied", "--yes", check=True).out

        for name in ("gpu-jump", "gpu-proxied", "team-gpu"):
            lab.wait_state(name, "up")
        assert lab.host("gpu-jump")["address"] == f"127.0.0.1:{lab.target.port} via 127.0.0.1:{lab.bastion.port}"
        assert lab.host("gpu-proxied")["address"] == f"127.0.0.1:{lab.target.port} via proxy command"
        forwards = [line for line in (lab.bastion.root / "sshd.log").read_text().splitlines()
                    if "server_request_direct_tcpip" in line and line.endswith(f"target 127.0.0.1 port {lab.target.port}")]
        assert len(forwards) >= 2, forwards  # one for the ProxyJump host, one for the ssh -W of the ProxyCommand

        for name in ("gpu-jump", "gpu-proxied"):
            spec = fleet.write_spec(f"hello-{name}", f"name: hello\nconstraints: {{hosts: [{name}]}}\n"
                                                     f"command: echo reached {name} through the bastion\n")
            job_id = fleet.cli("submit", str(spec), check=True).out.strip()
            job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=90)
            assert job["state"] == "succeeded" and job["host"] == name, job
            assert f"reached {name} through the bastion" in fleet.cli("jobs", "logs", job_id).out

        lab.bastion.stop()  # the door closes: what is behind it goes dark, what is not stays up
        jumped = lab.wait_state("gpu-jump", "unreachable")
        lab.wait_state("gpu-proxied", "unreachable")
        assert lab.host("team-gpu")["state"] == "up"
        fleet.wait_for(lambda: "jump host" in lab.host("gpu-jump")["message"], 30,
                       what="gpu-jump to say its jump host is down")
        assert "Traceback" not in jumped["message"]
        lab.bastion.start()
        lab.wait_state("gpu-jump", "up", timeout=90)
    finally:
        lab.stop()


def test_an_identity_that_cannot_be_used_is_refused_when_the_host_is_added(fleet: Fleet) -> None:
    missing = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--identity", "/nonexistent")
    assert missing.code == 2
    assert missing.err.strip() == ("mlfleet: host gpu-a: the identity /nonexistent does not exist; check the path, "
                                   "or leave the identity out to use ssh-agent and ~/.ssh/id_*")
    public = fleet.root / "id_test.pub"
    shutil.copy(__file__, public)
    wrong = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--identity", str(public))
    assert wrong.code == 2 and wrong.err.strip().endswith(f"is not a private key (that is a public key: name "
                                                          f"{fleet.root / 'id_test'})")
    folder = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--identity", str(fleet.root))
    assert folder.code == 2 and "is not a file" in folder.err
    jump = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--proxy-jump", "ops@bastion:22",
                     "--identity", "/nonexistent")
    assert jump.code == 2 and "does not exist" in jump.err
    assert not fleet.home.hosts_file.exists() or "gpu-a" not in fleet.home.hosts_file.read_text()


def test_host_fields_are_explained_in_the_users_words_wherever_they_come_from(fleet: Fleet) -> None:
    bad_name = fleet.cli("hosts", "add", "bad name!", "--address", "10.0.0.1")
    assert bad_name.code == 2
    assert bad_name.err.strip() == ("mlfleet: 'bad name!' is not a valid host name; use letters, digits, '.', '_' "
                                    "and '-', starting with a letter or digit (128 characters at most)")
    port = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--port", "99999")
    assert port.code == 2 and "--port: must be 65535 or less, got 99999" in port.err
    empty = fleet.cli("hosts", "add", "gpu-a", "--address", "")
    assert empty.err.strip() == ("mlfleet: host gpu-a: address is empty; write e.g. 10.0.0.12, gpu-a.example.com "
                                 "or fd00::12, without a scheme, brackets or a port (give the port with --port; "
                                 "255 characters at most)")
    token = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--proxy-command", "nc %d %p")
    assert token.code == 2 and "proxy_command uses %d, which mlfleet does not expand" in token.err
    hop = fleet.cli("hosts", "add", "gpu-a", "--address", "10.0.0.1", "--proxy-jump", "bastion:70000")
    assert hop.code == 2 and hop.err.strip() == ("mlfleet: --proxy-jump 'bastion:70000': '70000' is not a TCP port "
                                                 "(1 to 65535); write it as [user@]host[:port], several separated by commas")

    fleet.cli("controller", "stop", check=True)  # a hand edit read afresh, as by a client starting one
    fleet.home.hosts_file.write_text("hosts:\n  - name: gpu-a\n    address: 10.0.0.1\n    port: 99999\n")
    listed = fleet.cli("hosts", "list")
    assert listed.code == 2
    assert listed.err.strip() == (f"mlfleet: {fleet.home.hosts_file}:4: hosts[0].port: 99999 is not a TCP port; "
                                  "use a number from 1 to 65535 (SSH's is 22)")
    fleet.home.hosts_file.write_text("hosts:\n  - name: gpu-a\n    address: 10.0.0.1\n"
                                     "    proxy_jump: [{address: b, port: 0}]\n")
    hop_port = fleet.cli("hosts", "list").err.strip()
    assert hop_port.endswith("hosts[0].proxy_jump[0].port: 0 is not a TCP port; use a number from 1 to 65535 (SSH's is 22)")
    for result in (bad_name, port, empty, token, hop, listed):
        assert "Expected" not in result.err and "Traceback" not in result.err and "$." not in result.err


HOSTILE = {  # file in tests/ssh_configs/hostile -> what the user must read (stderr), exit 2 each
    "include_loop": ["include_loop:2: Include: nests deeper than 16 files (does a file include itself?)"],
    "include_device": ["include_device:3: /dev/zero is not a regular file"],
    "unbalanced_quote": ["unbalanced_quote:2: IdentityFile: cannot be read: No closing quotation"],
    "match_without_criteria": ["match_without_criteria:1: Match: has no value"],
    "jump_loop": ["gpu-a not imported: host gpu-a: ProxyJump loops (gpu-a -> gpu-b -> gpu-a",
                  "gpu-b not imported: host gpu-b: ProxyJump loops (gpu-b -> gpu-a -> gpu-b"],
    "bad_ports": ["big-port not imported: host big-port: Port 99999 (", "word-port not imported: host word-port: Port ssh (",
                  "hop-port not imported: host hop-port: ProxyJump (", "'notaport' is not a TCP port"],
    "bad_names": ["local not imported: 'local' is mlfleet's embedded host",
                  "two words not imported: not a valid mlfleet host name",
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa... (182 characters) not imported"],
    "tokens": ["home-token not imported: host home-token: ProxyCommand (", "uses %d, which mlfleet does not expand",
               "unset-variable not imported:", "${MLFLEET_TEST_SURELY_UNSET} is not set in this environment",
               "bad-hostname-token not imported:", "uses %z, which ssh does not expand there"],
    "deep_jumps": ["far not imported: host far: 9 jump hosts ("],
    "jump_via_command": ["door is the jump host of inner, not a fleet host: not imported",
                         "inner not imported: host inner: its jump host door is reached through a ProxyCommand ("],
    "match_unsupported": ["match_unsupported:2: 'Match localnetwork' is not evaluated by the import",
                          "gpu-x not imported: host gpu-x: Port 0 ("],
    "not_utf8": ["not_utf8:1: is not UTF-8 text"],  # refused, not decoded into U+FFFD
}


def test_a_hostile_ssh_config_is_one_sentence_per_problem_and_never_a_traceback_or_a_hang(fleet: Fleet) -> None:
    folder = fleet.root / "hostile"
    folder.mkdir()
    for source in (CORPUS / "hostile").iterdir():
        (folder / source.name).write_bytes(source.read_bytes().replace(b"{ROOT}", str(fleet.root).encode()))
    assert sorted(HOSTILE) == sorted(p.name for p in folder.iterdir())  # every file in the corpus is checked
    for name, expected in HOSTILE.items():
        result = fleet.cli("hosts", "import-ssh-config", "--file", str(folder / name), timeout=30)
        assert result.code == 2, (name, result)
        assert "Traceback" not in result.err and "Error:" not in result.err, (name, result.err)
        for text in expected:
            assert text in result.err, (name, text, result.err)
    assert not fleet.home.hosts_file.exists()  # nothing was importable: nothing written, no controller started
    assert fleet.controller_pid is None
    for special in ("/dev/zero", str(fleet.root), "/nonexistent/ssh_config"):
        result = fleet.cli("hosts", "import-ssh-config", "--file", special, timeout=30)
        assert result.code == 2 and result.err.count("\n") == 1 and "Traceback" not in result.err, (special, result)
    named = fleet.cli("hosts", "import-ssh-config", "--file", str(folder / "jump_loop"), "--host", "gpu-typo")
    assert named.code == 2 and f"gpu-typo not imported: no Host entry in {folder / 'jump_loop'} matches 'gpu-typo'" \
        in named.err


def test_a_jump_hosts_key_is_checked_as_strictly_as_the_hosts_own(fleet: Fleet) -> None:
    lab = Lab(fleet)
    try:
        imported = fleet.cli_json("hosts", "import-ssh-config", "--file", str(lab.config), "--host", "gpu-jump")
        assert imported["added"] == ["gpu-jump"] and imported["refused"] == {}
        lab.run_agents_from_this_checkout()
        unknown = fleet.wait_for(lambda: "does not know" in (h := lab.host("gpu-jump"))["message"] and h, 30,
                                 what="gpu-jump to refuse the unknown bastion key")
        assert unknown["message"].startswith(f"the jump host 127.0.0.1:{lab.bastion.port} of gpu-jump presented a "
                                             "host key mlfleet does not know (SHA256:")
        assert unknown["message"].endswith("run 'mlfleet hosts trust gpu-jump' to record it")
        recorded = fleet.cli_json("hosts", "trust", "gpu-jump", "--yes")
        assert recorded["recorded"] and [h["port"] for h in recorded["jump_hosts"]] == [lab.bastion.port]
        lab.wait_state("gpu-jump", "up")

        lab.bastion.stop()
        lab.bastion.new_host_key()  # the bastion reinstalled, or someone in its place
        lab.bastion.start()
        changed = fleet.wait_for(lambda: "CHANGED" in (h := lab.host("gpu-jump"))["message"] and h, 60,
                                 what="gpu-jump to refuse the bastion's changed key")
        assert changed["state"] == "unreachable"
        assert changed["message"].startswith(f"the host key of the jump host 127.0.0.1:{lab.bastion.port} of gpu-jump "
                                             "has CHANGED")
        shown = fleet.cli("hosts", "trust", "gpu-jump")  # no terminal, no --yes: shown, nothing recorded
        assert shown.code == 2 and "the key has CHANGED" in shown.out
        assert lab.host("gpu-jump")["state"] == "unreachable"
    finally:
        lab.stop()


def test_an_ssh_config_is_read_as_strictly_as_ssh_reads_it(fleet: Fleet) -> None:
    """A BOM, a typo'd keyword, a byte that is not UTF-8 and a Port in other digits never import a wrong host."""
    files = {"bom": b"\xef\xbb\xbfHost gpu1\n  HostName 10.9.9.9\nHost gpu2\n",
             "typo": b"Host gpu3\n  HostNmae 10.1.1.1\n  Prot 2200\n",
             "badutf": b"Host q2\n  HostName \xff\xfe\n",
             "aport": "Host p3\n  HostName 127.0.0.1\n  Port \u0663\u0663\n".encode(),
             "ignored": b"IgnoreUnknown UseKeychain,Frob*\nHost ok\n  HostName 127.0.0.2\n  FrobNicate yes\n"}
    for name, data in files.items():
        (fleet.root / name).write_bytes(data)
    bom = fleet.cli("hosts", "import-ssh-config", "--file", str(fleet.root / "bom"))
    assert bom.code == 0, bom
    hosts = {h["name"]: h for h in yaml.safe_load(fleet.home.hosts_file.read_text())["hosts"]}
    assert hosts["gpu1"]["address"] == "10.9.9.9" and hosts["gpu2"]["address"] == "gpu2"
    fleet.home.hosts_file.unlink()
    expected = {"typo": f"{fleet.root / 'typo'}:2: HostNmae: is not an ssh_config keyword, so ssh itself refuses "
                        "this file; did you mean HostName?",
                "badutf": f"{fleet.root / 'badutf'}:2: is not UTF-8 text",
                "aport": "Port \u0663\u0663"}
    for name, words in expected.items():
        result = fleet.cli("hosts", "import-ssh-config", "--file", str(fleet.root / name))
        assert result.code == 2 and words in result.err and "Traceback" not in result.err, (name, result)
        assert not fleet.home.hosts_file.exists(), name
    ignored = fleet.cli("hosts", "import-ssh-config", "--file", str(fleet.root / "ignored"))
    assert ignored.code == 0, ignored
    assert "127.0.0.2" in fleet.home.hosts_file.read_text()
    port = fleet.cli("hosts", "add", "p4", "--address", "127.0.0.1", "--port", "\u0663\u0663")
    assert port.code == 2 and "expected a whole number" in port.err, port


@pytest.mark.parametrize("address", ["a b", "http://gpu-a", "127.0.0.1:22", "[::1]", "300.1.1.1", "gpu-\ufffd", "-gpu"])
def test_an_address_that_is_no_host_name_or_ip_is_refused_in_the_users_words(fleet: Fleet, address: str) -> None:
    result = fleet.cli("hosts", "add", "gpu-a", "--address", address)
    assert result.code == 2 and "Traceback" not in result.err
    assert "is not a host name or IP address" in result.err and "--port" in result.err, result.err
    assert fleet.cli("hosts", "add", "gpu-b", "--address", "fd00::12", "--port", "2222").code == 0
