"""`logger=wandb` follows W&B's own configuration; offline only when none is there. No server is contacted:
every case is environment variables and files in a temporary HOME."""
from __future__ import annotations

import sys

import pytest

from ablate.training.loggers import WandbLogger, wandb_mode_and_reason
from components.registry import option


def netrc(path, *entries: tuple[str, str]):
    path.write_text("".join(f"machine {host}\n  login user\n  password {key}\n" for host, key in entries))
    path.chmod(0o600)
    return path


def settings(path, **values: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[default]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return tmp_path / "home"


def mode(home, **env: str) -> tuple[str, str]:
    return wandb_mode_and_reason(env={"HOME": str(home), **env}, home=home, cwd=home.parent / "work")


def test_nothing_configured_is_offline_and_says_why(home):
    resolved, reason = mode(home)
    assert resolved == "offline"
    assert "api.wandb.ai" in reason and str(home / ".netrc") in reason and "wandb login" in reason


def test_wandb_mode_wins_over_everything(home):
    netrc(home / ".netrc", ("api.wandb.ai", "k" * 40))
    settings(home / ".config" / "wandb" / "settings", mode="offline")
    assert mode(home, WANDB_MODE="disabled", WANDB_API_KEY="k" * 40)[0] == "disabled"
    assert mode(home, WANDB_MODE="online")[0] == "online"


def test_an_api_key_means_online_for_any_server(home):
    assert mode(home, WANDB_API_KEY="k" * 40) == ("online", "WANDB_API_KEY is set (server https://api.wandb.ai)")
    resolved, reason = mode(home, WANDB_API_KEY="k" * 40, WANDB_BASE_URL="https://wandb.example.org")
    assert resolved == "online" and "wandb.example.org" in reason


def test_a_netrc_login_counts_for_the_server_w_and_b_would_use(home):
    netrc(home / ".netrc", ("api.wandb.ai", "k" * 40))
    assert mode(home)[0] == "online"
    # A self-hosted server (the issue: it logged offline silently): its own login counts, api.wandb.ai's does not.
    resolved, reason = mode(home, WANDB_BASE_URL="https://wandb.example.org:8443")
    assert resolved == "offline" and "wandb.example.org:8443" in reason
    netrc(home / ".netrc", ("api.wandb.ai", "k" * 40), ("wandb.example.org:8443", "s" * 40))
    assert mode(home, WANDB_BASE_URL="https://wandb.example.org:8443") == (
        "online", f"a login for wandb.example.org:8443 in {home / '.netrc'}")


def test_wandb_login_host_is_read_from_w_and_b_settings(home):
    # `wandb login --host URL` stores the URL as base_url in the global settings and the key in ~/.netrc.
    settings(home / ".config" / "wandb" / "settings", base_url="https://wandb.example.org")
    netrc(home / ".netrc", ("wandb.example.org", "s" * 40))
    assert mode(home)[0] == "online"
    netrc(home / ".netrc", ("api.wandb.ai", "k" * 40))  # a login for another host only
    assert mode(home)[0] == "offline"


def test_the_netrc_variable_and_the_config_dir_variable_are_honoured(home, tmp_path):
    elsewhere = netrc(tmp_path / "my-netrc", ("api.wandb.ai", "k" * 40))
    assert mode(home, NETRC=str(elsewhere))[0] == "online"
    settings(tmp_path / "wandb-config" / "settings", mode="disabled")
    assert mode(home, NETRC=str(elsewhere), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"))[0] == "disabled"


def test_wandb_offline_and_online_commands_are_followed(home):
    netrc(home / ".netrc", ("api.wandb.ai", "k" * 40))
    settings(home / ".config" / "wandb" / "settings", mode="offline")  # `wandb offline`
    resolved, reason = mode(home)
    assert resolved == "offline" and "settings" in reason
    settings(home.parent / "work" / "wandb" / "settings", mode="online")  # the workspace file wins
    assert mode(home)[0] == "online"


def test_the_sweep_agent_reports_online(home):
    assert mode(home, WANDB_SWEEP_ID="abc123")[0] == "online"


@pytest.mark.parametrize("content", ["machine api.wandb.ai login user\n",  # no password: no key
                                     "machine api.wandb.ai login user password\n",  # malformed
                                     "\x00\x01 not a netrc"])
def test_a_netrc_without_a_usable_key_is_offline_not_an_error(home, content):
    (home / ".netrc").write_text(content)
    assert mode(home)[0] == "offline"


@pytest.mark.parametrize("entries,url", [
    ([("api.wandb.ai", "k" * 40)], "https://api.wandb.ai"),
    ([("api.wandb.ai", "k" * 40)], "https://wandb.example.org"),
    ([("wandb.example.org:8443", "s" * 40)], "https://wandb.example.org:8443"),
    ([("wandb.example.org", "s" * 40)], "https://wandb.example.org:8443"),
    ([("other.host", "s" * 40)], "https://api.wandb.ai"),
])
def test_netrc_logins_agree_with_w_and_b_s_own_reader(home, monkeypatch, entries, url):
    wbnetrc = pytest.importorskip("wandb.sdk.lib.wbauth.wbnetrc")
    path = netrc(home / ".netrc", *entries)
    monkeypatch.setenv("NETRC", str(path))
    theirs = wbnetrc.read_netrc_auth(host=url) is not None
    ours = mode(home, NETRC=str(path), WANDB_BASE_URL=url)[0] == "online"
    assert ours == theirs


def test_the_logger_passes_the_resolved_mode_to_wandb_init(home, monkeypatch, tmp_path):
    from tests.test_fast_paths import FakeWandb

    fake = FakeWandb(init_s=0.0)
    seen = {}
    real_init = fake.init
    fake.init = lambda **kwargs: (seen.update(kwargs), real_init(**kwargs))[1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    netrc(home / ".netrc", ("wandb.example.org", "s" * 40))
    for key in ("WANDB_MODE", "WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    monkeypatch.chdir(home.parent / "work")
    logger = WandbLogger(option("logger", "wandb"), run_dir=tmp_path, config={}, group="g", run_name="r", tags=[])
    logger.log({"train_loss": 1.0}, step=1)
    logger.finish({"status": "completed"})
    assert seen["mode"] == "online" and fake.finished
