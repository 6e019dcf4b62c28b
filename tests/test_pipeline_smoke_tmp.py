import json, subprocess, sys
from conftest import REPO, Fleet

def test_smoke(fleet: Fleet, tmp_path) -> None:
    work = tmp_path / "w"; work.mkdir()
    (work / "a.sh").write_text("mkdir -p out; echo a > out/x.txt\n")
    (work / "b.sh").write_text("mkdir -p out; cat out/x.txt > out/y.txt; echo b >> out/y.txt\n")
    (tmp_path / "p.yaml").write_text(f"""name: smoke
steps:
  a:
    job: {{command: [sh, a.sh], workdir: {work}}}
    outputs: {{x: out/x.txt}}
  b:
    job: {{command: [sh, b.sh], workdir: {work}}}
    inputs: [a.outputs.x]
    outputs: {{y: out/y.txt}}
""")
    fleet.cli("controller", "start", check=True)
    for i in range(2):
        out = subprocess.run([sys.executable, "/tmp/p17/smoke.py", str(tmp_path / "p.yaml")], env=fleet.env, cwd=REPO,
                             capture_output=True, text=True, timeout=200)
        print(out.stdout[-3000:], out.stderr[-3000:])
        done = json.loads(out.stdout)
        print([ (s["step"], s["state"], s["reasons"], s["outputs"]) for s in done["steps"]], done["state"], done["reason"])
    assert done["state"] == "succeeded"
    assert [s["state"] for s in done["steps"]] == ["cached", "cached"]
