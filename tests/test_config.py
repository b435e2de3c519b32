"""Settings precedence (flags > MEET_* env > TOML > defaults) and one-line errors."""

from pathlib import Path

import pytest

from meet_milvus.config import load_settings
from meet_milvus.errors import MeetError


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
