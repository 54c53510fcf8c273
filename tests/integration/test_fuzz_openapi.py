"""Fuzz every route from the OpenAPI document with schemathesis: no 5xx, whatever the input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import GatewayProcess, base_env, create_key

pytestmark = pytest.mark.skipif(shutil.which("st", path=str(Path(sys.executable).parent)) is None,
                                reason="schemathesis is a dev dependency")


def test_schemathesis_finds_no_server_error(tmp_path_factory, tiny_models_file):
    data = tmp_path_factory.mktemp("gw-fuzz")
    # small token caps keep generated requests cheap on the CPU model; limits high so fuzzing is not throttled
    env = base_env(data, PALISADE_MODELS_FILE=str(tiny_models_file), PALISADE_DEFAULT_MAX_TOKENS="2",
                   PALISADE_MAX_TOKENS_CAP="8", PALISADE_LIMIT_REQUESTS_PER_MIN="100000",
                   PALISADE_LOGIN_SLOWDOWN_AFTER="100000")
    key = create_key(env, "fuzzer", "tiny")
    proc = GatewayProcess(env, data / "serve.log").start()
    try:
        st = str(Path(sys.executable).parent / "st")
        run = subprocess.run(
            [st, "run", f"{proc.url}/schema/openapi.json", "-H", f"Authorization: Bearer {key}",
             "--checks", "not_a_server_error", "--max-examples", "25", "--workers", "2",
             "--request-timeout", "30", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=data,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-6000:]
        assert "Tested:" in out and " passed" in out, out[-3000:]  # it really ran the operations
        assert "Traceback" not in proc.log()
        assert proc.alive()
    finally:
        proc.stop()
