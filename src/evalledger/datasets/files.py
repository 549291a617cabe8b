"""Built-in datasets and resolving a dataset spec (a name or a path) to a file and its sha256.

:func:`resolve_dataset` is what everything else starts from: it checks the file exists, is a regular
file in a supported format, and hashes it (the hash is part of the run ID).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from evalledger.errors import DatasetError

DATA_DIR_ENV = "EVALLEDGER_DATA_DIR"
"""Environment variable that overrides the directory holding the built-in data files."""

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".jsonl",
    ".jsonl.gz",
    ".json",
    ".json.gz",
    ".csv",
    ".csv.gz",
    ".parquet",
)
"""File name endings :func:`load_dataset` can read (matched case-insensitively)."""

# Suffixes stripped from a file name to get the dataset stem used in run IDs.
_STEM_SUFFIXES = (".gz", ".jsonl", ".json", ".csv", ".parquet")


def data_dir() -> Path:
    """The directory that holds the built-in data files.

    This is ``$EVALLEDGER_DATA_DIR`` if set. Otherwise it is the package's own ``data/``
    (``evalledger/datasets/data/``, shipped in the wheel with its ``SOURCES.md``).
    """
    override = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset shipped in ``data/`` (see ``datasets/data/SOURCES.md`` for provenance and licenses)."""

    name: str
    filename: str
    default_task: str
    id_column: str | None = None
    description: str = ""
    #: The shipped worked examples ``--fewshot N`` draws from when no ``--fewshot-from`` is given.
    fewshot_filename: str | None = None

    @property
    def path(self) -> Path:
        """Where the data file is expected (it may not exist)."""
        return data_dir() / self.filename

    @property
    def fewshot_path(self) -> Path | None:
        """Where the shipped exemplars are expected (None: this dataset ships none)."""
        return None if self.fewshot_filename is None else data_dir() / self.fewshot_filename


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    ds.name: ds
    for ds in (
        BuiltinDataset(
            name="gsm8k",
            filename="gsm8k_test.jsonl",
            default_task="qa",
            description="GSM8K test split, 1319 grade-school math word problems",
            fewshot_filename="gsm8k_cot_exemplars.jsonl",  # the 8 chain-of-thought exemplars of Wei et al., 2022
        ),
        BuiltinDataset(
            name="mmlu-elementary-math",
            filename="mmlu_elementary_mathematics_test.jsonl",
            default_task="mcq",
            description="MMLU elementary_mathematics test split, 378 four-choice questions",
            fewshot_filename="mmlu_elementary_mathematics_dev.jsonl",  # the subject's dev split, MMLU's 5-shot source
        ),
        BuiltinDataset(
            name="humaneval",
            filename="HumanEval.jsonl.gz",
            default_task="humaneval",
            id_column="task_id",
            description="HumanEval, 164 Python function-completion problems",
        ),
    )
}
"""Built-in datasets by name. The name is what ``--dataset`` accepts and what run IDs use."""


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset spec resolved to a file.

    ``name`` is the stem used in the run ID: the built-in name, or else the file name without its
    format suffixes. ``sha256`` is the hash of the file's bytes. ``default_task``,
    ``default_id_column`` and ``fewshot_path`` (the shipped exemplars, if any) are set only for
    built-in datasets.
    """

    name: str
    path: Path
    sha256: str
    default_task: str | None = None
    default_id_column: str | None = None
    fewshot_path: Path | None = None


def dataset_stem(path: str | os.PathLike[str]) -> str:
    """The file name without the ``.jsonl``/``.json``/``.csv``/``.parquet``/``.gz`` suffixes.

    ``HumanEval.jsonl.gz`` becomes ``HumanEval`` and ``my.data.csv`` becomes ``my.data``.
    """
    name = Path(path).name
    stem = name
    while True:
        lowered = stem.lower()
        for suffix in _STEM_SUFFIXES:
            if lowered.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem or name


def dataset_format(path: Path) -> str | None:
    """The supported extension ``path`` ends with (longest match, lower case), or None."""
    lowered = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(ext) and len(lowered) > len(ext):
            return ext
    return None


def _sha256_of_file(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc


def _builtin_names() -> str:
    return ", ".join(sorted(BUILTIN_DATASETS))


def check_dataset_path(path: Path, *, spec: str | None = None) -> Path:
    """Check that ``path`` is an existing regular file in a supported format; return it absolute.

    Raises :class:`DatasetError` otherwise. ``spec`` is what the user typed, shown in the message.
    """
    shown = spec if spec is not None else str(path)
    try:
        absolute = path.expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        # Python 3.11 raises RuntimeError("Symlink loop from ...") for a loop, later versions
        # OSError(ELOOP); both would otherwise escape as a traceback.
        raise DatasetError(f"dataset path {shown}: cannot resolve it ({exc}); is it a symlink loop?") from None
    if not absolute.exists():
        message = f"dataset not found: {shown}"
        if str(absolute) != shown:
            message += f" (looked for {absolute})"
        looks_like_name = (
            spec is not None and "/" not in spec and os.sep not in spec and not Path(spec).suffix
        )
        if looks_like_name:
            message += f"; built-in datasets are: {_builtin_names()}"
        raise DatasetError(message)
    if absolute.is_dir():
        raise DatasetError(f"dataset path is a directory, not a file: {absolute}")
    if not absolute.is_file():
        # A FIFO or a device would block or never end when read.
        raise DatasetError(f"dataset path is not a regular file: {absolute}")
    if dataset_format(absolute) is None:
        raise DatasetError(
            f"unsupported dataset format: {absolute.name} ({absolute}); "
            f"supported extensions are {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return absolute


def resolve_dataset(spec: str | os.PathLike[str]) -> ResolvedDataset:
    """Resolve a built-in dataset name or a file path, and hash the file.

    A string that names a built-in dataset wins over a file with the same relative name.
    Raises :class:`DatasetError` if the file is missing, is a directory, or has an unsupported
    extension. For a missing file, a spec that looks like a name rather than a path also gets
    the list of built-in datasets.
    """
    located = locate_dataset(spec)
    return replace(located, sha256=_sha256_of_file(located.path))


def read_dataset_file(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` and its stat, from one open file (so both describe the same file)."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            return f.read(), st
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc


def locate_dataset(spec: str | os.PathLike[str]) -> ResolvedDataset:
    """:func:`resolve_dataset` without the hash (``sha256`` is ``""``): for a caller that reads the
    bytes itself and hashes what it reads, so the file is read and hashed once."""
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        builtin = BUILTIN_DATASETS[spec]
        path = builtin.path
        if not path.is_file():
            where = (
                f"${DATA_DIR_ENV}={os.environ[DATA_DIR_ENV]}"
                if os.environ.get(DATA_DIR_ENV, "").strip()
                else "the package's datasets/data/ directory"
            )
            raise DatasetError(
                f"built-in dataset {spec!r}: data file not found: {path} (looked in {where}; "
                f"set {DATA_DIR_ENV} to the directory that holds {builtin.filename})"
            )
        return ResolvedDataset(
            name=builtin.name,
            path=path,
            sha256="",
            default_task=builtin.default_task,
            default_id_column=builtin.id_column,
            fewshot_path=builtin.fewshot_path,
        )
    text = os.fspath(spec)
    if not text.strip():
        raise DatasetError(f"empty dataset spec; give a file path or one of: {_builtin_names()}")
    path = check_dataset_path(Path(text), spec=text if isinstance(spec, str) else None)
    return ResolvedDataset(name=dataset_stem(path), path=path, sha256="")
