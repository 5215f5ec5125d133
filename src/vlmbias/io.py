"""Small helpers for writing and reading artifacts safely and setting up per-stage logging.

Artifacts are built under a temporary name and renamed into place. `tempfile` creates those
temporary files 0600 and folders 0700; before the rename they get the permissions a plain
`open()`/`mkdir()` would have given under the process's umask (0666/0777 & ~umask), so a colleague
can read a shared results folder whenever the umask allows it. A temporary name carries its
writer's host and process id, so the next write of the same artifact removes what a killed writer
left behind (`sweep_stale_temps`) without touching a live writer's file.

Reading: a missing, truncated or damaged file becomes one `VlmbiasError` sentence naming the file
and what to do, never a library traceback. A table may carry provenance (`PROVENANCE_KEY`: its row
count, the digests of the inputs it was made from, the vlmbias version) in its Parquet metadata or,
for CSV, in a `<name>.json` sidecar; `read_table` checks the row count it records.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
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


# A writer on another host cannot be asked whether it is alive: its temporary file counts as
# abandoned once it has not changed for this long (a live writer keeps writing to it).
FOREIGN_STALE_SECONDS = 600
_log = logging.getLogger(__name__)


def _owner() -> str:
    """`<host>.<pid>`: who writes a temporary file (dots in the host name become '-')."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname()) or 'host'}.{os.getpid()}"


def _temp_pattern(name: str, suffix: str) -> re.Pattern:
    # `.<name>.[<host>.<pid>.]<8 random chars><suffix>`; names without an owner come from older versions
    return re.compile(rf"\.{re.escape(name)}\.(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?[a-z0-9_]{{8}}"
                      rf"{re.escape(suffix)}\Z")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale_temps(path: str | os.PathLike, suffix: str) -> list[Path]:
    """Remove the temporary siblings of `path` (files or folders) that an interrupted write left:
    older versions' unowned ones, this host's whose process is gone, another host's untouched for
    FOREIGN_STALE_SECONDS. Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern, host, removed = _temp_pattern(path.name, suffix), _owner().rsplit(".", 1)[0], []
    for entry in path.parent.iterdir():
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            if m["pid"] is not None:
                if m["host"] == host:
                    if int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
                        continue
                elif time.time() - entry.lstat().st_mtime < FOREIGN_STALE_SECONDS:
                    continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # its writer finished or another sweep got there first
            continue
        _log.info("removed %s, left by an interrupted write", entry)
        removed.append(entry)
    return removed


def temp_dir_beside(out_dir: str | os.PathLike) -> Path:
    """A fresh hidden folder next to `out_dir` to build it in (then renamed onto it), with umask
    permissions; the folders interrupted builds of `out_dir` left are removed first."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out_dir, ".tmp")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{_owner()}.", suffix=".tmp", dir=out_dir.parent))
    umask_mode(tmp)
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    A crash or an exception leaves no half-written artifact behind; what a killed process left is
    removed by the next write of `path`. The final file gets the permissions a plain open() would
    give it (see the module doc), not tempfile's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path, ".tmp" + path.suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp" + path.suffix, dir=path.parent)
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


PROVENANCE_KEY = b"vlmbias.provenance"


def provenance(rows: int, inputs: dict | None = None, **extra) -> dict:
    """What an artifact records about itself: its row count, the digests of the inputs it was made
    from ({name: digest}) and the vlmbias version that wrote it (docs/artifacts.md, Provenance)."""
    from vlmbias import __version__

    return {"rows": int(rows), "inputs": dict(inputs or {}), "vlmbias": __version__, **extra}


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where a CSV table's provenance lives: `<name>.csv.json` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_table(df: pd.DataFrame, path: str | os.PathLike, *, path_root: str | os.PathLike | None = None,
                meta: dict | None = None) -> None:
    """Write a DataFrame as Parquet or CSV (by suffix), atomically.

    `path_root` (Parquet only): store the `path` column relative to this folder and record the folder
    in the file's metadata (PATH_ROOT_KEY), so that read_table resolves the paths wherever the table
    and its images have moved. Paths given relative are taken relative to the working directory.
    `meta` (see `provenance`): stored under PROVENANCE_KEY in a Parquet file's metadata, or as a
    `<name>.json` sidecar beside a CSV (written first: the table is the artifact a rule declares).
    """
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(f"unsupported table format: {path}")
    if path_root is not None and path.suffix != ".parquet":
        raise ValueError(f"path_root needs a Parquet table: {path}")
    if path.suffix == ".csv":
        if meta is not None:
            with atomic_path(sidecar_path(path)) as tmp:
                tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
        elif sidecar_path(path).is_file():  # an earlier version's record would no longer describe it
            sidecar_path(path).unlink()
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            root = None if path_root is None or "path" not in df.columns else Path(path_root).resolve()
            _write_parquet(df, tmp, root, path.parent.resolve(), meta)
        else:
            df.to_csv(tmp, index=False)


def _write_parquet(df: pd.DataFrame, tmp: Path, root: Path | None, table_dir: Path, meta: dict | None) -> None:
    if root is None and meta is None:
        df.to_parquet(tmp, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = {}
    if root is not None:
        df = df.assign(path=df["path"].map(lambda p: Path(os.path.relpath(os.path.abspath(p), root)).as_posix()
                                           if isinstance(p, str) and p else p))
        info = {"root": Path(os.path.relpath(root, table_dir)).as_posix(), "root_absolute": str(root)}
        extra[PATH_ROOT_KEY] = json.dumps(info).encode()
    if meta is not None:
        extra[PROVENANCE_KEY] = json.dumps(meta, sort_keys=True, default=str).encode()
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}), tmp)


def _rerun_hint(made_by: str | None) -> str:
    return (f"delete it and run snakemake again (rule {made_by} rewrites it)" if made_by
            else "delete it and rerun the step that writes it")


def _load_error(path: Path, e: BaseException, made_by: str | None):
    from vlmbias import VlmbiasError

    if isinstance(e, FileNotFoundError):
        return VlmbiasError(f"{path} does not exist; run the step that writes it"
                            + (f" (rule {made_by})" if made_by else ""))
    if isinstance(e, IsADirectoryError | PermissionError):
        return VlmbiasError(f"cannot read {path}: {e.strerror}")
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return VlmbiasError(f"cannot read {path}, it is truncated or damaged ({reason}); {_rerun_hint(made_by)}")


def table_metadata(path: str | os.PathLike, made_by: str | None = None) -> dict:
    """A table's provenance (see `provenance`), {} when it records none."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            raw = (pq.read_schema(path).metadata or {}).get(PROVENANCE_KEY)
        else:
            side = sidecar_path(path)
            raw = side.read_bytes() if side.is_file() else None
        return json.loads(raw) if raw else {}
    except (OSError, ValueError, EOFError) as e:
        raise _load_error(path, e, made_by) from None


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


def read_table(path: str | os.PathLike, *, made_by: str | None = None) -> pd.DataFrame:
    """Read a table written by write_table; a `path` column stored relative comes back absolute.

    A missing or damaged file, or one holding fewer or more rows than its provenance records, is a
    VlmbiasError naming the file (`made_by`: the rule that rewrites it, for the message)."""
    from vlmbias import VlmbiasError

    path = Path(path)
    try:
        if path.suffix != ".parquet":
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
            root = table_path_root(path)
            if root is not None and "path" in df.columns:
                df["path"] = df["path"].map(lambda p: str(root / p) if isinstance(p, str) and p else p)
    except (OSError, ValueError, EOFError, pd.errors.EmptyDataError) as e:
        raise _load_error(path, e, made_by) from None
    rows = table_metadata(path, made_by).get("rows")
    if rows is not None and rows != len(df):
        raise VlmbiasError(f"{path} holds {len(df)} rows but was written with {rows}; {_rerun_hint(made_by)}")
    return df


def write_npy(array: np.ndarray, path: str | os.PathLike) -> str:
    """Write an array as .npy, atomically; returns the file's content digest (`file_digest`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        digest = file_digest(tmp)
    return digest


def read_npy(path: str | os.PathLike, *, mmap: bool = False, made_by: str | None = None) -> np.ndarray:
    """`mmap`: a read-only memory map; only the rows a caller touches are read into memory. A
    missing, truncated or damaged file is a VlmbiasError naming it (`made_by`: the rule that rewrites it)."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _load_error(path, e, made_by) from None


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """`sha256:<hex>` of a file's bytes, read in chunks (a multi-gigabyte array is never held whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def text_digest(value) -> str:
    """`sha256:<hex>` of a JSON-able value (a model spec, a query set spec), keys sorted."""
    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def check_embeddings(npy_path: str | os.PathLike, table_path: str | os.PathLike, made_by: str = "embed_images",
                     *, manifest: str | os.PathLike | None = None, mmap: bool = True,
                     chunk_rows: int = 65_536) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Read an embedding array and its row table and check that they belong together: a 2-d array
    with one row per table row, every value finite, the bytes the table's provenance records (when
    it records them) and, given `manifest`, made from that manifest. Returns (array, table,
    provenance); any disagreement is one VlmbiasError sentence naming both files and the rule to
    rerun. The array is scanned in chunks of `chunk_rows` rows."""
    from vlmbias import VlmbiasError

    npy_path, table_path = Path(npy_path), Path(table_path)
    emb = read_npy(npy_path, mmap=mmap, made_by=made_by)
    rows = read_table(table_path, made_by=made_by)
    meta = table_metadata(table_path, made_by)
    fix = f"delete both and run snakemake again (rule {made_by} rewrites them)"
    if emb.ndim != 2:
        raise VlmbiasError(f"{npy_path} holds an array of shape {emb.shape}, not one embedding per row; {fix}")
    if len(emb) != len(rows):
        raise VlmbiasError(f"{npy_path} holds {len(emb)} embeddings but {table_path} lists {len(rows)} images, so "
                           f"they were not written together; {fix}")
    recorded = (meta.get("npy") or {}).get("digest")
    if recorded and recorded != file_digest(npy_path):
        raise VlmbiasError(f"{npy_path} is not the array {table_path} was written with (its content digest "
                           f"differs); {fix}")
    for start in range(0, len(emb), chunk_rows):
        bad = ~np.isfinite(np.asarray(emb[start:start + chunk_rows])).all(axis=1)
        if bad.any():
            first = start + int(np.flatnonzero(bad)[0])
            image = rows["image_id"].iat[first] if "image_id" in rows.columns else first
            raise VlmbiasError(f"{npy_path} holds non-finite values (NaN or inf), first in row {first} "
                               f"(image {image}); {fix}")
    if manifest is not None:
        made_from = (meta.get("inputs") or {}).get("manifest")
        if made_from and made_from != file_digest(manifest):
            raise VlmbiasError(f"{npy_path} and {table_path} were made from another version of {manifest}; {fix}")
    return emb, rows, meta


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


def failed_job_errors(log_dir: str | os.PathLike, since: float) -> list[tuple[Path, str]]:
    """The `error: ...` sentence (see run_cli) of every rule log under `log_dir` written since
    `since` (a time.time()): what a failed run's jobs said, for the workflow to print on the console."""
    found = []
    for log_file in sorted(Path(log_dir).rglob("*.log")) if Path(log_dir).is_dir() else []:
        try:
            if log_file.stat().st_mtime < since:
                continue
            with open(log_file, encoding="utf-8", errors="replace") as f:
                found += [(log_file, line.rstrip()) for line in f if line.startswith("error: ")]
        except OSError:
            continue
    return found


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
