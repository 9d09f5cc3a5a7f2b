"""A channel's key files are read when a process starts: a missing or malformed one stops it, naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from django.core.exceptions import ImproperlyConfigured

from channels.registry import check_keys
from channels.rsa import private_pem, public_pem

ROOT = Path(__file__).resolve().parents[1]


def alipay_env(tmp_path: Path) -> dict[str, str]:
    key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "app.pem").write_text(private_pem(key))
    (tmp_path / "alipay.pem").write_text(public_pem(key.public_key()))
    return {"ALIPAY_APP_ID": "2021000000000001", "ALIPAY_APP_PRIVATE_KEY_PATH": str(tmp_path / "app.pem"),
            "ALIPAY_PUBLIC_KEY_PATH": str(tmp_path / "alipay.pem")}


def test_good_keys_pass(settings, tmp_path: Path) -> None:
    for name, value in alipay_env(tmp_path).items():
        setattr(settings, name, value)
    check_keys()


def test_a_missing_key_file_names_its_setting(settings, tmp_path: Path) -> None:
    for name, value in alipay_env(tmp_path).items():
        setattr(settings, name, value)
    settings.ALIPAY_PUBLIC_KEY_PATH = str(tmp_path / "nowhere.pem")
    with pytest.raises(ImproperlyConfigured, match="ALIPAY_PUBLIC_KEY_PATH"):
        check_keys()


def test_a_malformed_key_names_its_setting(settings, tmp_path: Path) -> None:
    for name, value in alipay_env(tmp_path).items():
        setattr(settings, name, value)
    Path(settings.ALIPAY_APP_PRIVATE_KEY_PATH).write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(ImproperlyConfigured, match="ALIPAY_APP_PRIVATE_KEY_PATH"):
        check_keys()


def test_a_process_with_a_bad_key_does_not_start(tmp_path: Path) -> None:
    env = {**os.environ, **alipay_env(tmp_path), "ALIPAY_APP_PRIVATE_KEY_PATH": str(tmp_path / "missing.pem")}
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "ALIPAY_APP_PRIVATE_KEY_PATH" in done.stderr
