"""Configuration: typed loading, errors that name the key and its line, secrets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import REPO

from leadloop.config import ConfigError, LoadedConfig, config_path, load
from leadloop.tomlpos import key_lines

MAILBOX = """
[[mailboxes]]
name = "sales"
address = "sales@acme.example"
"""


def problems(text: str, tmp_path: Path) -> list[tuple[str, int | None, str]]:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(file)
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_shipped_config_passes_check_config() -> None:
    """The config.toml in the repository is valid as shipped, via the real command."""
    result = subprocess.run(
        [sys.executable, "-m", "leadloop", "--config", str(REPO / "config.toml"), "check-config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_defaults_and_relative_paths(
    make_config: Callable[[str], LoadedConfig], tmp_path: Path
) -> None:
    """Relative data paths resolve against the state directory, itself against the file."""
    loaded = make_config(MAILBOX)
    assert loaded.state_dir == (tmp_path / "var").resolve()
    assert loaded.data_path(loaded.settings.mailboxes[0].maildir_path) == tmp_path / "var" / "mail"
    assert loaded.database_url == f"sqlite+aiosqlite:///{tmp_path}/var/leadloop.db"
    assert loaded.settings.pipeline.max_attempts == 3
    assert loaded.settings.mailboxes[0].poll_interval == timedelta(seconds=10)


def test_state_directory_from_systemd(
    make_config: Callable[[str], LoadedConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$STATE_DIRECTORY (systemd's StateDirectory=) wins over service.state_dir."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    loaded = make_config(MAILBOX)
    assert loaded.state_dir == tmp_path / "state"
    assert loaded.data_path(Path("mail")) == tmp_path / "state" / "mail"


def test_unknown_key_names_path_and_line(tmp_path: Path) -> None:
    """An unknown key is reported with its dotted path and the line it is on."""
    text = '[service]\nlog_level = "info"\nlogg_level = "debug"\n'
    assert problems(text, tmp_path) == [("service.logg_level", 3, "unknown key")]


def test_wrong_type_in_array_of_tables(tmp_path: Path) -> None:
    """A wrong value inside the second [[mailboxes]] names mailboxes[1] and its line."""
    text = (
        MAILBOX
        + '\n[[mailboxes]]\nname = "support"\naddress = "help@acme.example"\n'
        + 'poll_interval = "soon"\n'
    )
    [(path, line, message)] = problems(text, tmp_path)
    assert path == "mailboxes[1].poll_interval"
    assert line == 9
    assert "not a duration" in message


def test_nested_inline_array_element_line(tmp_path: Path) -> None:
    """Positions are found inside multi-line arrays of inline tables, as cadences use."""
    text = (
        "[cadence]\nsteps = [\n"
        '  { id = "a", delay = "2d" },\n'
        '  { id = "b", delay = "3d" },\n'
        '  { id = "c", delay = "x" },  # comment, with = and [brackets]\n'
        "]\n"
        'note = """multi\nline = 1\n[not.a.table]"""\n'
        "other = 1\n"
    )
    lines = key_lines(text)
    assert lines[("cadence", "steps", 2, "delay")] == 5
    assert lines[("cadence", "steps", 0)] == 3
    assert lines[("cadence", "note")] == 7
    assert lines[("cadence", "other")] == 10
    assert ("not", "a", "table") not in lines


def test_wrong_type_and_missing_key_together(tmp_path: Path) -> None:
    """Every problem is reported at once, each with its key path."""
    text = '[pipeline]\nmax_attempts = "three"\n\n[[mailboxes]]\nname = "sales"\n'
    found = {(path, line) for path, line, _ in problems(text, tmp_path)}
    assert found == {("pipeline.max_attempts", 2), ("mailboxes[0].address", 4)}


def test_placeholder_anywhere_is_an_error(tmp_path: Path) -> None:
    """`changeme` in any value is refused, with the key and line."""
    text = '[[mailboxes]]\nname = "sales"\naddress = "changeme@acme.example"\n'
    [(path, line, message)] = problems(text, tmp_path)
    assert (path, line) == ("mailboxes[0].address", 3)
    assert "placeholder" in message


def test_reserved_domain_sender_refused_off_loopback(tmp_path: Path) -> None:
    """example.com-style senders are refused once mail goes through a non-loopback server."""
    text = MAILBOX + '\n[smtp]\nhost = "smtp.acme-corp.com"\n'
    [(path, line, message)] = problems(text, tmp_path)
    assert (path, line) == ("mailboxes[0].address", 4)
    assert "reserved example domain" in message


def test_reserved_domain_sender_allowed_on_loopback(
    make_config: Callable[[str], LoadedConfig],
) -> None:
    """The same sender is fine while the server is on loopback (tests, demo)."""
    loaded = make_config(MAILBOX + '\n[smtp]\nhost = "::1"\n')
    assert loaded.settings.mailboxes[0].address == "sales@acme.example"


def test_invalid_toml_gives_line(tmp_path: Path) -> None:
    """A syntax error names the line tomllib reports."""
    [(path, line, message)] = problems('[service]\nstate_dir = "x\n', tmp_path)
    assert path == "" and line == 2 and "not valid TOML" in message


def test_secret_from_environment(
    make_config: Callable[[str], LoadedConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """password_env reads the named environment variable."""
    monkeypatch.setenv("LEADLOOP_TEST_SMTP", "s3cret")
    loaded = make_config('[smtp]\nusername = "u"\npassword_env = "LEADLOOP_TEST_SMTP"\n')
    assert loaded.secret("smtp") == "s3cret"
    assert "s3cret" not in repr(loaded)


def test_secret_from_file(make_config: Callable[[str], LoadedConfig], tmp_path: Path) -> None:
    """password_file reads the first line of the file."""
    (tmp_path / "pw").write_text("from-file\nignored\n")
    loaded = make_config(
        f'[database]\nurl = "postgresql://app@db/app"\npassword_file = "{tmp_path}/pw"\n'
    )
    assert loaded.secret("database") == "from-file"
    assert loaded.database_url == "postgresql+asyncpg://app:from-file@db/app"


def test_secret_from_credentials_directory(
    make_config: Callable[[str], LoadedConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """password_credential reads $CREDENTIALS_DIRECTORY/<name> (systemd's LoadCredential=)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "smtp-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    loaded = make_config('[smtp]\npassword_credential = "smtp-password"\nusername = "sales"\n')
    assert loaded.secret("smtp") == "from-systemd"


def test_missing_secret_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable, a missing file and a missing credentials directory are errors."""
    monkeypatch.delenv("LEADLOOP_NOPE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text = (
        '[smtp]\npassword_env = "LEADLOOP_NOPE"\nusername = "sales"\n\n'
        f'[database]\npassword_file = "{tmp_path}/missing"\n'
    )
    found = {(path, line): message for path, line, message in problems(text, tmp_path)}
    assert "LEADLOOP_NOPE is not set" in found[("smtp.password_env", 2)]
    assert "cannot read" in found[("database.password_file", 6)]
    text = '[smtp]\npassword_credential = "x"\nusername = "sales"\n'
    [(path, _, message)] = problems(text, tmp_path)
    assert path == "smtp.password_credential" and "CREDENTIALS_DIRECTORY" in message


def test_two_secret_sources_refused(tmp_path: Path) -> None:
    """A secret has exactly one source."""
    text = '[smtp]\npassword_env = "A"\npassword_file = "/x"\n'
    [(path, _, message)] = problems(text, tmp_path)
    assert path == "smtp" and "only one" in message


def test_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins, then $LEADLOOP_CONFIG, then ./config.toml."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEADLOOP_CONFIG", raising=False)
    assert config_path(None) == tmp_path / "config.toml"
    monkeypatch.setenv("LEADLOOP_CONFIG", "/etc/leadloop/config.toml")
    assert config_path(None) == Path("/etc/leadloop/config.toml")
    assert config_path("other.toml") == tmp_path / "other.toml"


def test_check_config_exit_code(tmp_path: Path) -> None:
    """check-config prints every error and exits with the config exit code (78)."""
    bad = tmp_path / "config.toml"
    bad.write_text("[service]\nbogus = 1\n[pipeline]\nmax_attempts = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "leadloop", "check-config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 78
    assert "line 2: service.bogus: unknown key" in result.stderr
    assert "line 4: pipeline.max_attempts" in result.stderr


def test_run_with_bad_config_exits_78(tmp_path: Path) -> None:
    """`leadloop run` on a bad config exits with the config code, before touching anything."""
    bad = tmp_path / "config.toml"
    bad.write_text("[[mailboxes]]\nname = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "leadloop", "--config", str(bad), "run"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 78
    assert "mailboxes[0].address: required key is missing" in result.stderr
    assert not (tmp_path / "var").exists()


IMAP = """
[[mailboxes]]
name = "sales"
kind = "imap"
address = "sales@acme-corp.com"
host = "imap.acme-corp.com"
username = "sales"
password_env = "LEADLOOP_TEST_IMAP"
"""


def test_imap_mailbox(
    make_config: Callable[[str], LoadedConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An imap mailbox takes host, TLS by default on 993, and its own secret."""
    monkeypatch.setenv("LEADLOOP_TEST_IMAP", "pw")
    loaded = make_config(IMAP)
    box = loaded.settings.mailboxes[0]
    assert (box.security, box.imap_port, box.folder, box.idle) == ("tls", 993, "INBOX", True)
    assert loaded.mailbox_secret("sales") == "pw"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ('host = "imap.acme-corp.com"\n', "needs host"),
        ('password_env = "LEADLOOP_TEST_IMAP"\n', "needs password_env"),
    ],
)
def test_imap_mailbox_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str, expected: str
) -> None:
    """Missing host or secret is an error at the mailbox's line."""
    monkeypatch.setenv("LEADLOOP_TEST_IMAP", "pw")
    [(path, line, message)] = problems(IMAP.replace(edit, ""), tmp_path)
    assert (path, line) == ("mailboxes[0]", 2)
    assert expected in message


def test_plain_imap_refused_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """security = "none" is refused unless the server is on loopback."""
    monkeypatch.setenv("LEADLOOP_TEST_IMAP", "pw")
    [(_, _, message)] = problems(IMAP + 'security = "none"\n', tmp_path)
    assert "clear text" in message
    local = IMAP.replace("imap.acme-corp.com", "127.0.0.1") + 'security = "none"\n'
    (tmp_path / "ok.toml").write_text(local)
    assert load(tmp_path / "ok.toml").settings.mailboxes[0].imap_port == 143


def test_imap_reserved_sender_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reserved example domain cannot be the address of a mailbox on a real server."""
    monkeypatch.setenv("LEADLOOP_TEST_IMAP", "pw")
    text = IMAP.replace("sales@acme-corp.com", "sales@example.com")
    [(path, _, message)] = problems(text, tmp_path)
    assert path == "mailboxes[0].address" and "imap.acme-corp.com" in message


def test_maildir_refuses_imap_keys(tmp_path: Path) -> None:
    """Keys of the other kind are errors, not silently ignored."""
    text = MAILBOX + 'host = "imap.acme-corp.com"\n'
    [(path, _, message)] = problems(text, tmp_path)
    assert path == "mailboxes[0]" and "host is for imap mailboxes only" in message


def test_cadence_template_errors_name_the_step_and_its_line(tmp_path: Path) -> None:
    """A nested [[cadences.steps]] error points at its own line, and an
    unknown merge field or delay is refused before anything is sent."""
    text = (
        '[[cadences]]\nname = "launch"\n\n'
        '[[cadences.steps]]\nid = "intro"\nsubject = "Hi"\nbody = "Hello"\n\n'
        '[[cadences.steps]]\nid = "f1"\ndelay = "3 fortnights"\n'
        'subject = "{first_name.__class__}"\nbody = "x"\n'
    )
    found = {(path, line): message for path, line, message in problems(text, tmp_path)}
    assert "unknown merge field" in found[("cadences[0].steps[1].subject", 12)]
    assert "3 fortnights" in found[("cadences[0].steps[1].delay", 11)]


def test_smtp_and_tracking_mistakes_are_named(tmp_path: Path) -> None:
    """A password without a user, a clear-text login off loopback, an http
    one-click URL and a DKIM selector without a key are refused."""
    text = (
        '[smtp]\nhost = "smtp.acme-corp.com"\nusername = "sales"\n'
        'password_env = "HOME"\nsecurity = "none"\n\n'
        '[tracking]\npublic_url = "http://links.acme-corp.com"\n\n'
        '[dkim]\nselector = "ll2026"\n'
    )
    found = {path: message for path, _, message in problems(text, tmp_path)}
    assert "clear text" in found["smtp"]
    assert "https" in found["tracking.public_url"]
    assert "private_key_file" in found["dkim"]
