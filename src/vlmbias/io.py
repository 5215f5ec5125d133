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


# A table with a `path` column of image files (dataset manifest, acquired images, labels) stores those
# paths relative to a root folder, and the root in the Parquet file's metadata under this key, both
# relative to the table's own folder and absolute. read_table turns them back into absolute paths,
# preferring the relative root: a results folder (or the whole project) can be moved or copied and a
# later stage still finds images inside it; images outside it are found through the absolute root.
PATH_ROOT_KEY = b"vlmbias.path_root"


def common_folder(paths) -> Path | None:
    """The deepest folder holding every file in `paths` (None if there are none)."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths if isinstance(p, str) and p]
    return Path(os.path.commonpath(folders)) if folders else None


def write_table(df: pd.DataFrame, path: str | os.PathLike, *, path_root: str | os.PathLike | None = None) -> None:
    """Write a DataFrame as Parquet or CSV (by suffix), atomically.

    `path_root` (Parquet only): store the `path` column relative to this folder and record the folder
    in the file's metadata (PATH_ROOT_KEY), so that read_table resolves the paths wherever the table
    and its images have moved. Paths given relative are taken relative to the working directory.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            if path_root is not None and "path" in df.columns:
                _write_parquet_with_root(df, tmp, Path(path_root).resolve(), path.parent.resolve())
            else:
                df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            if path_root is not None:
                raise ValueError(f"path_root needs a Parquet table: {path}")
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"unsupported table format: {path}")


def _write_parquet_with_root(df: pd.DataFrame, tmp: Path, root: Path, table_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rel = df["path"].map(lambda p: Path(os.path.relpath(os.path.abspath(p), root)).as_posix()
                         if isinstance(p, str) and p else p)
    table = pa.Table.from_pandas(df.assign(path=rel), preserve_index=False)
    info = {"root": Path(os.path.relpath(root, table_dir)).as_posix(), "root_absolute": str(root)}
    meta = {**(table.schema.metadata or {}), PATH_ROOT_KEY: json.dumps(info).encode()}
    pq.write_table(table.replace_schema_metadata(meta), tmp)


def table_path_root(path: str | os.PathLike) -> Path | None:
    """The folder a table's `path` column is relative to, as found now (None: paths stored absolute)."""
    path = Path(path)
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(PATH_ROOT_KEY)
    if raw is None:
        return None
    info = json.loads(raw)
    relative = (path.parent.resolve() / info["root"]).resolve()
    absolute = Path(info.get("root_absolute") or relative)
    return relative if relative.is_dir() or not absolute.is_dir() else absolute


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by write_table; a `path` column stored relative comes back absolute."""
    path = Path(path)
    if path.suffix != ".parquet":
        return pd.read_csv(path)
    df = pd.read_parquet(path)
    root = table_path_root(path)
    if root is not None and "path" in df.columns:
        df["path"] = df["path"].map(lambda p: str(root / p) if isinstance(p, str) and p else p)
    return df


def write_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def read_npy(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """`mmap`: a read-only memory map; only the rows a caller touches are read into memory."""
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


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
