"""A new user's first hour with the CLI: every command takes --json, mistakes are one sentence, output says
what it means (issue #13: export formats, --sort -x, nested params, data headers, not-found metrics).

Everything goes through the real ``mlfleet`` command against a real controller and agent.
"""

from __future__ import annotations

import json
import re

import duckdb

from conftest import Fleet
from mlfleet.main import build_parser
from mlfleet.core.cli.parser import commands

TRAIN = """\
import sys
from mlfleet import track

lr, name = float(sys.argv[1]), sys.argv[2]
track.log_params({"optimizer": {"lr": lr, "name": name, "betas": [0.9, lr]}, "epochs": 3, "Batch.Size": 32})
track.summary("val_loss", "min")
for step in range(20):
    track.log({"loss": 1.0 / (1 + lr * step), "val_loss": 2.0 / (1 + lr * step) + (0.5 if step == 19 else 0)},
              step=step)
track.flush()
"""


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one sentence, got {len(lines)} lines:\n{text}"
    return lines[0]


def train(fleet: Fleet, name: str, lr: str, optimizer: str) -> str:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "train.py").write_text(TRAIN)
    spec = fleet.write_spec(name, f"name: {name}\ncommand: [python, train.py, '{lr}', {optimizer}]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    return done.json()["run_id"]


# ------------------------------------------------------------ every command

def test_every_command_takes_json_and_a_mistake_in_it_is_one_sentence_naming_that_command(fleet: Fleet) -> None:
    """Walk the whole command tree: each command accepts --json, and a wrong flag gets its own usage, as JSON too."""
    tree = commands(build_parser())
    assert len(tree) >= 30 and ("jobs", "logs") in [words for words, _ in tree]
    for words, parser in tree:
        assert "--json" in parser._option_string_actions, f"mlfleet {' '.join(words)} does not take --json"
        wrong = fleet.cli(*words, "--json", "--no-such-flag")
        name = " ".join(words)
        assert wrong.code == 2, (name, wrong.err)
        sentence = one_line(wrong.err)
        assert sentence.startswith(f"mlfleet: {name}: ") and f"usage: mlfleet {name} " in sentence, sentence
        assert "Traceback" not in wrong.err
        error = json.loads(wrong.out)["error"]
        assert error["kind"] == "UsageError" and error["exit_code"] == 2 and error["message"] in sentence
    assert fleet.controller_pid is None  # none of those mistakes started anything


def test_read_commands_answer_json_and_their_errors_are_json_too(fleet: Fleet) -> None:
    for argv in (["jobs", "list"], ["hosts", "list"], ["runs", "list"], ["audit", "list"], ["drift", "list"],
                 ["drift", "profiles"], ["controller", "status"], ["db", "query", "select 42 as answer"]):
        answer = fleet.cli(*argv, "--json")
        assert answer.code == 0, (argv, answer.err)
        json.loads(answer.out)
    for argv, code in ((["jobs", "show", "jnosuch"], 4), (["jobs", "logs", "jnosuch"], 4),
                       (["runs", "show", "rnosuch"], 4), (["drift", "export", "dnosuch"], 4),
                       (["tui"], 2), (["db", "query", "drop table runs"], 2)):
        failed = fleet.cli(*argv, "--json")
        assert failed.code == code, (argv, failed.out, failed.err)
        assert json.loads(failed.out)["error"]["exit_code"] == code and one_line(failed.err).startswith("mlfleet: ")


def test_argparse_mistakes_say_what_and_where_in_one_sentence(fleet: Fleet) -> None:
    typo = fleet.cli("jobs", "lst")
    assert typo.code == 2 and "did you mean 'list'?" in one_line(typo.err) and "usage: mlfleet jobs " in typo.err
    missing = fleet.cli("jobs", "logs")
    assert missing.code == 2 and one_line(missing.err).startswith("mlfleet: jobs logs: the following arguments are "
                                                                  "required: id; usage: mlfleet jobs logs ")
    flag = fleet.cli("jobs", "logs", "j1", "--jsn")
    assert flag.code == 2
    assert one_line(flag.err).startswith("mlfleet: jobs logs: --jsn is an argument it does not take; usage: ")
    no_value = fleet.cli("runs", "list", "--sort", "--json")  # --json is a flag of the command, not a sort
    assert no_value.code == 2 and "--sort needs a value after it" in one_line(no_value.err)
    assert "--sort=VALUE" in no_value.err and json.loads(no_value.out)["error"]["exit_code"] == 2
    assert fleet.controller_pid is None


# ---------------------------------------------------------------- jobs logs

LOGGER = r"""
import sys
print("epoch 1 loss 0.31")
print('quote " backslash \\ tab \t and \x1b[31m escape')
print("naïve ✓")
print("to stderr", file=sys.stderr)
sys.stdout.write("no newline at the end")
"""


def test_jobs_logs_json_is_one_object_per_line_of_output(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "logger.py").write_text(LOGGER)
    spec = fleet.write_spec("logger", "name: logger\ncommand: [python, logger.py]\n")
    job = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120).json()
    assert job["state"] == "succeeded", job
    out = fleet.cli("jobs", "logs", job["job_id"][:6], "--json")
    assert out.code == 0, out.err
    records = [json.loads(line) for line in out.out.splitlines()]
    assert [r["text"] for r in records] == ["epoch 1 loss 0.31", 'quote " backslash \\ tab \t and \x1b[31m escape',
                                            "naïve ✓", "no newline at the end"]
    assert {(r["job_id"], r["run_id"], r["stream"]) for r in records} == {(job["job_id"], job["run_id"], "stdout")}
    assert [r.get("partial", False) for r in records] == [False, False, False, True]
    err = fleet.cli("jobs", "logs", job["job_id"], "--stderr", "--json", "-f")
    assert [json.loads(line)["text"] for line in err.out.splitlines()] == ["to stderr"]
    assert json.loads(err.out)["stream"] == "stderr"
    plain = fleet.cli("jobs", "logs", job["job_id"], check=True)
    assert plain.out.endswith("no newline at the end") and "epoch 1 loss 0.31\n" in plain.out


# ------------------------------------------------------------ runs, the story

def two_runs(fleet: Fleet) -> tuple[str, str]:
    return train(fleet, "adam", "0.5", "adam"), train(fleet, "sgd", "0.001", "sgd")


def test_sort_takes_a_leading_minus_as_written(fleet: Fleet) -> None:
    adam, sgd = two_runs(fleet)
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--sort", "-metrics.loss.min")] == [sgd, adam]
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--sort", "-params.optimizer.lr")] == [adam, sgd]
    out = fleet.files / "sorted.csv"
    fleet.cli("runs", "export", "-o", str(out), "--sort", "-name", check=True)
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == [sgd, adam]
    limit = fleet.cli("runs", "list", "--limit", "-5")  # a negative number is still a value, and out of range
    assert limit.code == 2 and "--limit: must be 1 or more, got -5" in one_line(limit.err)


def test_nested_params_and_the_declared_summary_can_be_filtered(fleet: Fleet) -> None:
    adam, sgd = two_runs(fleet)
    # params.optimizer.lr is lr inside {"optimizer": {...}}; a list item by its index
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--where", "params.optimizer.lr > 0.01")] == [adam]
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--where", "params.optimizer.name = 'sgd'")] == [sgd]
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--where", 'params.optimizer.betas."1" < 0.01')] \
        == [sgd]
    assert fleet.cli_json("runs", "list", "--where", "params.optimizer.nosuch is not null") == []
    assert [r["run_id"] for r in fleet.cli_json("runs", "list", "--where", "params.Batch.Size = 32",
                                                "--sort", "name")] == [adam, sgd]  # a dotted key as logged
    # metrics.K.summary: the value of the mode track.summary declared (val_loss: min), not the last one
    best = fleet.cli_json("runs", "list", "--where", "metrics.val_loss.summary < 0.25")
    assert [r["run_id"] for r in best] == [adam]
    assert best[0]["metrics"]["val_loss"]["summary"] == {"mode": "min", "value": best[0]["metrics"]["val_loss"]["min"]}
    assert fleet.cli_json("runs", "list", "--where", "metrics.loss.summary is not null") == []  # never declared
    text = fleet.cli("runs", "list", "--where", "params.optimizer.lr > 0", "--sort", "metrics.val_loss.summary",
                     check=True).out
    row = next(line for line in text.splitlines() if line.startswith(adam))
    assert row.split()[-2:] == ["0.5", "0.2"], text  # the nested value and the summary, as extra columns


def test_headers_that_are_data_keep_their_case_and_status_speaks_words(fleet: Fleet) -> None:
    adam, sgd = two_runs(fleet)
    text = fleet.cli("runs", "list", "--where", "params.optimizer.lr > 0", "--sort", "metrics.val_loss.summary",
                     check=True).out
    header = text.splitlines()[0]
    assert header.startswith("RUN ") and "params.optimizer.lr" in header and "metrics.val_loss.summary" in header
    human = fleet.cli("runs", "compare", adam, sgd, "--metric", "loss", check=True).out
    assert re.search(rf"^PARAM\s+{adam}\s+{sgd}$", human, re.M), human
    counted = fleet.cli("db", "query", 'select count(*), 1 as "MiXed", 2 as "two\nlines" from runs', check=True)
    assert counted.out.splitlines()[0].split() == ["count_star()", "MiXed", "two\\nlines"]
    status = fleet.cli("controller", "status", check=True).out
    assert "1 host (local up)" in status and "{" not in status


def test_comparing_a_metric_no_run_logged_is_not_found(fleet: Fleet) -> None:
    adam, sgd = two_runs(fleet)
    nosuch = fleet.cli("runs", "compare", adam, sgd, "--metric", "val_los")
    assert nosuch.code == 4, nosuch.out + nosuch.err
    assert one_line(nosuch.err) == f"mlfleet: none of runs {adam}, {sgd} logged metric 'val_los'; close matches: " \
                                   "val_loss"
    far = fleet.cli("runs", "compare", adam, "--metric", "loss", "--metric", "zzzz", "--json")
    assert far.code == 4 and json.loads(far.out)["error"]["kind"] == "NotFoundError"
    assert f"run {adam} logged no metric 'zzzz'; it logged 2 metric keys" in far.err
    assert fleet.cli_json("runs", "compare", adam, sgd, "--metric", "loss")["metrics"]["loss"]["best"][adam]


def test_export_writes_the_format_its_name_says_or_refuses(fleet: Fleet) -> None:
    two_runs(fleet)
    # the format is the one the name ends in, or a mismatch is refused before anything starts
    csv = fleet.files / "r.csv"
    wrote = fleet.cli("runs", "export", "--output", str(csv), check=True).out
    assert one_line(wrote) == f"wrote 2 runs to {csv} as csv"
    assert not csv.read_bytes().startswith(b"PAR1") and csv.read_text().startswith("run_id,")
    parquet = fleet.files / "points.parquet"
    wrote = fleet.cli("runs", "export", "--metrics", "--metric", "loss", "-o", str(parquet), check=True).out
    assert one_line(wrote) == f"wrote 40 metric points of 2 runs to {parquet} as parquet"
    assert parquet.read_bytes()[:4] == b"PAR1"
    gz = fleet.files / "r.csv.gz"
    assert fleet.cli_json("runs", "export", "-o", str(gz))["format"] == "csv"
    plain = fleet.files / "runs.out"
    assert fleet.cli_json("runs", "export", "--format", "csv", "-o", str(plain))["format"] == "csv"
    for argv, words in ((["-o", str(fleet.files / "r.dat")], "cannot tell the format of r.dat from its name"),
                        (["--format", "parquet", "-o", str(fleet.files / "x.csv")],
                         "x.csv ends in .csv but --format is parquet")):
        refused = fleet.cli("runs", "export", *argv)
        assert refused.code == 2 and words in one_line(refused.err), refused.err
    assert not (fleet.files / "r.dat").exists() and not (fleet.files / "x.csv").exists()

    fleet.cli("controller", "stop", check=True)
    con = duckdb.connect()
    assert con.execute("select count(*) from read_csv(?)", [str(csv)]).fetchall() == [(2,)]
    assert con.execute("select count(*) from read_csv(?)", [str(gz)]).fetchall() == [(2,)]
    assert con.execute("select count(*), min(key) from read_parquet(?)", [str(parquet)]).fetchall() == [(40, "loss")]


def test_jobs_logs_json_cuts_a_line_that_never_ends_into_bounded_pieces(fleet: Fleet) -> None:
    """A job that writes 3 MiB and no newline: --json holds back at most 1 MiB of it, and loses nothing."""
    spec = fleet.write_spec("endless", "name: endless\ncommand: [python, -c, \"import sys; "
                                       "sys.stdout.write('x' * (3 * 1024**2 + 5))\"]\n")
    job = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120).json()
    assert job["state"] == "succeeded", job
    out = fleet.cli("jobs", "logs", job["job_id"], "--json", check=True)
    records = [json.loads(line) for line in out.out.splitlines()]
    assert all(r["partial"] for r in records) and max(len(r["text"]) for r in records) == 1024**2
    assert "".join(r["text"] for r in records) == "x" * (3 * 1024**2 + 5)
