"""The `resv` command: against an unreachable server or with a malformed
setting, every command prints one line and exits non-zero (no traceback);
`resv keys` prints plain keys; an unknown command says so."""

from __future__ import annotations

import subprocess

import pytest

from resv.cli import main
from resv.embedded import free_port
from resv.engine import keys

DEAD_REDIS = f"redis://127.0.0.1:{free_port()}"
DEAD_PG = f"postgresql://resv@127.0.0.1:{free_port()}/resv"


@pytest.mark.parametrize("argv", [
    ["migrate", "--database-url", DEAD_PG],
    ["timeline", "gig", "--redis-url", DEAD_REDIS],
    ["timeline", "gig", "--redis-url", DEAD_REDIS, "--database-url", DEAD_PG],
    ["verify", "--redis-url", DEAD_REDIS],
    ["verify", "--redis-url", DEAD_REDIS, "--database-url", DEAD_PG],
    ["restore", "--redis-url", DEAD_REDIS, "--database-url", DEAD_PG],
    ["serve", "--port", str(free_port())],
], ids=lambda a: " ".join(a[:1]) + (" +pg" if DEAD_PG in a else ""))
def test_an_unreachable_server_is_one_line_and_a_failure(argv, capsys, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", DEAD_REDIS)
    monkeypatch.setenv("RESV_API_KEYS", "operator:cli-test-key")
    monkeypatch.setenv("RESV_REDIS_TIMEOUT_S", "0.3")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"resv {argv[0]}: ") and "Traceback" not in err


def test_the_archiver_reports_in_its_log_without_a_traceback(capsys, monkeypatch) -> None:
    code = main(["archiver", "--once", "--redis-url", DEAD_REDIS, "--database-url", DEAD_PG])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err


@pytest.mark.parametrize("setting, value", [
    ("RESV_PARTITIONS", "sixteen"),
    ("RESV_REDIS_TIMEOUT_S", "soon"),
])
@pytest.mark.parametrize("argv", [["keys", "gig"], ["timeline", "gig"], ["verify"], ["serve"]],
                         ids=lambda a: a[0])
def test_a_malformed_setting_is_one_line_and_a_failure(argv, setting, value, capsys, monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", DEAD_REDIS)
    monkeypatch.setenv("RESV_API_KEYS", "operator:cli-test-key")
    monkeypatch.setenv(setting, value)
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and setting in lines[0] and "Traceback" not in err, err


def test_an_unknown_command_says_so(capsys) -> None:
    assert main(["bogus"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "resv: unknown command 'bogus'"
    assert main(["--help"]) == 0 and "unknown" not in capsys.readouterr().err


def test_keys_are_plain_by_default_and_quoted_with_shell(capsys, monkeypatch) -> None:
    monkeypatch.delenv("RESV_PARTITIONS", raising=False)
    assert main(["keys", "concert-42", "--request-id", "op-1", "--actor", "client#1"]) == 0
    plain = capsys.readouterr().out.split()
    expected = list(keys.reserve_keys("concert-42", "op-1", 16, "client#1"))  # the scoped KEYS[7], KEYS[11]
    assert len(expected) == 11 and expected[6] == "resv:{p8}:req:concert-42@client#1:op-1"
    assert plain == expected
    assert main(["keys", "concert-42", "--shell"]) == 0
    assert capsys.readouterr().out.split() == [f"'{k}'" for k in expected[:6]]
    # K=$(resv keys ID) then $K: the shell's word splitting gives the keys, braces untouched
    out = subprocess.run(["bash", "-c", 'K="$1"; printf "%s\\n" $K', "_", " ".join(expected)],
                         capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert out == expected
