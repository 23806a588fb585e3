"""Writing files so that a crash never leaves a half-written one behind, and checking where they will go."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` to write to; on success it is synced and renamed over `path` (atomic
    on POSIX), on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary, open(temporary, "w") as file:
        file.write(text)


def check_output_dir(directory: str | os.PathLike, needed_bytes: int) -> None:
    """Fail before training if `directory` cannot be written or has less free space than `needed_bytes`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise OSError(f"output_dir: cannot write to {directory}: {error.strerror or error}") from error
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OSError(
            f"output_dir: {directory} has {free / 2**20:.0f} MiB free, but saving this run needs about "
            f"{needed_bytes / 2**20:.0f} MiB"
        )
