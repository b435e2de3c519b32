"""Settings precedence (flags > MEET_* env > TOML > defaults) and one-line errors."""

from pathlib import Path

import pytest

from meet_milvus.config import load_settings, redact_uri
from meet_milvus.errors import MeetError

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.upper().startswith("MEET_"):
            monkeypatch.delenv(key)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meet.toml"
    path.write_text(text)
    return path


def test_defaults_use_the_embedded_server():
    s = load_settings()
    assert s.embedded and s.milvus_uri is None
    assert s.device == "auto" and s.milvus_db == "default"


def test_precedence_flag_over_env_over_file(tmp_path, monkeypatch):
    cfg = _toml(tmp_path, 'device = "cuda"\nmilvus_db = "filedb"\nembedded_port = 19600\n')
    assert load_settings(cfg).device == "cuda"
    monkeypatch.setenv("MEET_DEVICE", "cpu")
    s = load_settings(cfg)
    assert s.device == "cpu"  # env beats the file
    assert s.milvus_db == "filedb" and s.embedded_port == 19600  # the file beats defaults
    assert load_settings(cfg, device="cuda:1").device == "cuda:1"  # a flag beats both
    assert load_settings(cfg, device=None).device == "cpu"  # an unset flag is no override


def test_config_file_from_env_and_meet_table(tmp_path, monkeypatch):
    cfg = _toml(tmp_path, '[meet]\nmilvus_uri = "http://milvus.example:19530"\n')
    monkeypatch.setenv("MEET_CONFIG", str(cfg))
    s = load_settings()
    assert s.milvus_uri == "http://milvus.example:19530" and not s.embedded


def test_paths_expand_user():
    assert load_settings(data_dir="~/x").data_dir == Path.home() / "x"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"device": "gpu"}, "setting 'device'"),
        ({"milvus_uri": "localhost:19530"}, "setting 'milvus_uri'"),
        ({"embedded_port": 70000}, "setting 'embedded_port'"),
        ({"log_level": "loud"}, "setting 'log_level'"),
        ({"embedded_network": "none"}, "setting 'embedded_network'"),
        ({"embedded_gc_interval": 0}, "setting 'embedded_gc_interval'"),
        ({"embedded_gc_drop_tolerance": -1}, "setting 'embedded_gc_drop_tolerance'"),
    ],
)
def test_invalid_values_name_the_setting(overrides, needle):
    with pytest.raises(MeetError, match=needle) as err:
        load_settings(**overrides)
    assert "\n" not in str(err.value)


def test_invalid_file_value_names_the_file(tmp_path):
    cfg = _toml(tmp_path, 'device = "tpu"\n')
    with pytest.raises(MeetError, match=rf"setting 'device' \(from {cfg}\)"):
        load_settings(cfg)


def test_unknown_key_and_bad_toml(tmp_path):
    with pytest.raises(MeetError, match="setting 'colour'"):
        load_settings(_toml(tmp_path, 'colour = "red"\n'))
    with pytest.raises(MeetError, match="not valid TOML"):
        load_settings(_toml(tmp_path, "device = \n"))
    with pytest.raises(MeetError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_secrets_stay_out_of_repr(tmp_path, monkeypatch):
    cfg = _toml(tmp_path, 'milvus_uri = "http://bob:hunter2@milvus.example:19530"\n')
    monkeypatch.setenv("MEET_MILVUS_TOKEN", "root:s3cr3t-token")
    s = load_settings(cfg)
    # Clients still get both in clear.
    assert s.milvus_token.get_secret_value() == "root:s3cr3t-token"
    assert s.milvus_uri == "http://bob:hunter2@milvus.example:19530"
    for text in (repr(s), str(s), f"{s!r}", repr(s.milvus_token), str(s.milvus_token)):
        assert "s3cr3t" not in text and "hunter2" not in text
    assert "milvus_uri='http://***@milvus.example:19530'" in repr(s)
    assert load_settings(milvus_token="flag:wins").milvus_token.get_secret_value() == "flag:wins"


def test_redact_uri():
    assert redact_uri("at https://u:p@h:1/x and tcp://a@b:2") == "at https://***@h:1/x and tcp://***@b:2"
    assert redact_uri("http://h:19530") == "http://h:19530"


def test_a_config_in_the_current_directory_is_not_read(tmp_path, monkeypatch, capsys):
    # A cloned repository could hold one that points cache_dir at a binary of its making.
    (tmp_path / "meet-milvus.toml").write_text('cache_dir = ".c"\nmilvus_db = "planted"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.milvus_db == "default" and settings.cache_dir != Path(".c")
    assert capsys.readouterr().err.startswith("note: ./meet-milvus.toml is not read")
    assert load_settings("meet-milvus.toml").milvus_db == "planted"  # when named explicitly


def test_the_users_own_config_file_is_read(tmp_path, monkeypatch):
    from meet_milvus import config

    own = tmp_path / "home" / "meet-milvus.toml"
    own.parent.mkdir()
    own.write_text('milvus_db = "mine"\n')
    monkeypatch.setattr(config, "USER_CONFIG_FILE", own)
    assert load_settings().milvus_db == "mine"


def test_a_uri_password_stays_out_of_json_and_an_at_sign_in_it_too():
    settings = load_settings(milvus_uri="http://root:p@ss@word@db.example:19530")
    shown = [settings.model_dump_json(), repr(settings), str(settings)]
    for text in shown:
        assert "p@ss" not in text and "word@" not in text and "ss@" not in text
    assert '"milvus_uri":"http://***@db.example:19530"' in settings.model_dump_json()
    assert settings.model_dump()["milvus_uri"] == "http://root:p@ss@word@db.example:19530"
    assert redact_uri("see http://a:b@c@host/x?y=z@w") == "see http://***@host/x?y=z@w"
