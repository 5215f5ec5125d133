"""Small helpers for writing artifacts atomically and setting up per-stage logging.

Artifacts are built under a temporary name and renamed into place. `tempfile` creates those
temporary files 0600 and folders 0700; before the rename they get the permissions a plain
`open()`/`mkdir()` would have given under the process's umask (0666/0777 & ~umask), so a colleague
can read a shared results folder whenever the umask allows it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_mode(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain open() (file) or mkdir() (folder) would have: 0666/0777 & ~umask."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def temp_dir_beside(out_dir: str | os.PathLike) -> Path:
    """A fresh hidden folder next to `out_dir` to build it in (then renamed onto it), with umask permissions."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask_mode(tmp)
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    A crash or an exception leaves no half-written artifact behind. The final file gets the
    permissions a plain open() would give it (see the module doc), not tempfile's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a DataFrame as Parquet or CSV (by suffix), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported table format: {path}")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def parse_json_arg(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"error: {what} must be a JSON object")
    return value


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; Snakemake rules redirect stderr into the rule's log file."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_cli(main_fn, argv=None) -> int:
    """Run a stage's main(); user errors become one readable line and exit code 2."""
    from vlmbias import VlmbiasError

    setup_logging()
    try:
        main_fn(argv)
    except VlmbiasError as e:
        logging.getLogger("vlmbias").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
