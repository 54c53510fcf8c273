"""compose.yaml cannot run here (no Docker), so check what it would run: commands, settings, files."""

from __future__ import annotations

import re
from dataclasses import fields

import yaml

from gateway.models.spec import load_models_file
from gateway.settings import Settings
from tests.support.server import ROOT, base_env, cli

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_services_present():
    assert {"postgres", "redis", "migrate", "gateway-1", "gateway-2", "worker", "tgi"} <= set(SERVICES)
    assert "gpu" in SERVICES["tgi"]["profiles"]
    assert SERVICES["gateway-1"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_palisade_commands_exist(tmp_path):
    env = base_env(tmp_path)
    for name, svc in SERVICES.items():
        cmd = svc.get("command")
        if cmd and cmd[0] == "palisade":
            proc = cli(env, *cmd[1:2], "--help", check=False)
            assert proc.returncode == 0, f"{name}: palisade {cmd[1]} --help failed: {proc.stderr}"
            for opt in [c for c in cmd[2:] if c.startswith("--")]:
                assert opt in proc.stdout, f"{name}: option {opt} unknown to palisade {cmd[1]}"


def test_environment_names_are_real_settings():
    known = {f"PALISADE_{f.name.upper()}" for f in fields(Settings)} | {"PALISADE_MASTER_KEY"}
    env = SERVICES["gateway-1"]["environment"]
    for name in env:
        assert name in known, f"compose sets unknown setting {name}"
    assert env["PALISADE_DATABASE_URL"].startswith("postgresql://")


def test_models_file_and_dockerfile_inputs():
    assert load_models_file(ROOT / "deploy" / "models.yaml")[0].alias == "chat"
    for src in re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"
    for vol in SERVICES["gateway-1"]["volumes"]:
        host = vol.split(":")[0]
        if host.startswith("./"):
            assert (ROOT / host).exists(), f"missing {host}"


def test_no_secret_in_compose():
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from the environment"
    assert "palisade:${POSTGRES_PASSWORD" in SERVICES["gateway-1"]["environment"]["PALISADE_DATABASE_URL"]
