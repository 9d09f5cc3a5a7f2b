"""`python manage.py generate_dev_keys`: development keys for both sides of every channel.

Writes PEM files and an env file (``KEY=value`` lines, read by honcho) that configure the project's
adapters and the simulators alike. Existing files are kept, so a second `make run` reuses them. These keys are
generated locally, for the simulators only: they are never real and never committed.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management.base import BaseCommand


def write_rsa_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """``<name>_private.pem`` (PKCS#8) and ``<name>_public.pem`` (SubjectPublicKeyInfo), made if missing."""
    private_path, public_path = directory / f"{name}_private.pem", directory / f"{name}_public.pem"
    if not private_path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        private_path.chmod(0o600)
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return private_path, public_path


def dev_channel_env(directory: Path) -> dict[str, str]:
    """The settings (environment variables) of the development accounts, generating what is missing."""
    directory.mkdir(parents=True, exist_ok=True)
    values_path = directory / "values.env"
    values: dict[str, str] = {}
    if values_path.exists():
        values = dict(line.split("=", 1) for line in values_path.read_text().splitlines() if "=" in line)
    values.setdefault("SANDBOX_SECRET", secrets.token_urlsafe(24))
    alphabet = string.ascii_letters + string.digits
    values.setdefault("WECHATPAY_APIV3_KEY", "".join(secrets.choice(alphabet) for _ in range(32)))
    values.setdefault("WECHATPAY_MERCHANT_SERIAL_NO", secrets.token_hex(20).upper())
    values.setdefault("WECHATPAY_PLATFORM_PUBLIC_KEY_ID", "PUB_KEY_ID_" + secrets.token_hex(16).upper())
    values_path.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
    values_path.chmod(0o600)

    alipay_app_private, alipay_app_public = write_rsa_pair(directory, "alipay_app")
    alipay_private, alipay_public = write_rsa_pair(directory, "alipay_platform")
    wechat_merchant_private, wechat_merchant_public = write_rsa_pair(directory, "wechatpay_merchant")
    wechat_platform_private, wechat_platform_public = write_rsa_pair(directory, "wechatpay_platform")
    return {
        "SANDBOX_MERCHANT_ID": "sbx_m_dev",
        "SANDBOX_SECRET": values["SANDBOX_SECRET"],
        # Alipay: the app's key pair is ours; Alipay's key pair is the simulator's (we hold its public key).
        "ALIPAY_APP_ID": "2021000000000001",
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(alipay_app_private),
        "ALIPAY_PUBLIC_KEY_PATH": str(alipay_public),
        "ALIPAY_SIM_APP_PUBLIC_KEY_PATH": str(alipay_app_public),
        "ALIPAY_SIM_PRIVATE_KEY_PATH": str(alipay_private),
        # WeChat Pay: the merchant's key pair is ours; the platform's key pair is the simulator's.
        "WECHATPAY_MCHID": "1900000001",
        "WECHATPAY_APPID": "wxd930ea5d5a258f4f",
        "WECHATPAY_MERCHANT_PRIVATE_KEY_PATH": str(wechat_merchant_private),
        "WECHATPAY_MERCHANT_SERIAL_NO": values["WECHATPAY_MERCHANT_SERIAL_NO"],
        "WECHATPAY_APIV3_KEY": values["WECHATPAY_APIV3_KEY"],
        "WECHATPAY_PLATFORM_PUBLIC_KEY_PATH": str(wechat_platform_public),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_ID": values["WECHATPAY_PLATFORM_PUBLIC_KEY_ID"],
        "WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH": str(wechat_merchant_public),
        "WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH": str(wechat_platform_private),
    }


class Command(BaseCommand):
    help = "Generate development keys for the channels and their simulators (kept if present)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--dir", default=".dev/keys")
        parser.add_argument("--env-file", default=".dev/channels.env")

    def handle(self, *args: Any, dir: str, env_file: str, **options: Any) -> None:
        env = dev_channel_env(Path(dir).resolve())
        Path(env_file).write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.stdout.write(f"channel settings for development written to {env_file}")
