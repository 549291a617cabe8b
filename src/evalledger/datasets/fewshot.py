"""Few-shot exemplars: where they come from, which ones each sample is shown, and what names them.

``--fewshot N`` shows N worked examples before each question. They come from an *exemplar
source*: the file ``--fewshot-from`` names (any format ``--dataset`` accepts, read by the same
loader with the same task's required fields and checks), else the built-in dataset's shipped
source (``BuiltinDataset.fewshot_filename``: GSM8K's chain-of-thought exemplars, MMLU's dev split).

Which exemplars a sample is shown depends only on the run seed, the sample id and the source
(:data:`SELECTION_RULE`), never on order, shard, concurrency, resume or repeat. The draw is a
partial Fisher-Yates shuffle driven by sha256 rather than :mod:`random`, whose ``sample`` Python
does not promise to keep from one version to the next: the same run must show the same exemplars
on any interpreter. The chosen exemplars keep the source's order, so N equal to the source's size
shows the whole source as published (the standard 8-shot GSM8K prompt, MMLU's 5-shot prompt).

A sample is never its own exemplar: source rows with the sample's id, and rows that ask the same
question (the task's ``exemplar_key``, whitespace ignored), are left out of its draw. That matters
when the source is the evaluated dataset itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.datasets.files import ResolvedDataset, check_dataset_path, locate_dataset, read_dataset_file
from evalledger.datasets.loader import check_samples, load_dataset_bytes
from evalledger.datasets.parse import columns_of, parse_rows
from evalledger.errors import DatasetError, UsageError
from evalledger.samples import Sample

__all__ = ["SELECTION_RULE", "ExemplarSelector", "ExemplarSource", "load_exemplar_source"]

SELECTION_RULE = "sha256-partial-shuffle-v1"
"""Names how exemplars are drawn (part of the run ID): change it whenever :func:`_draw` or the
exclusion of the sample itself changes, so no run mixes two selections."""


@dataclass(frozen=True)
class ExemplarSource:
    """The worked examples ``--fewshot`` draws from, validated, in the source file's order.

    ``sha256`` is the hash of the file's bytes (the run ID uses it, not the path); ``label`` is how
    messages name the source (``--fewshot-from FILE``, or the built-in dataset's shipped file).
    """

    path: Path
    sha256: str
    exemplars: tuple[Sample, ...]
    label: str

    def describe(self) -> dict[str, Any]:
        """The source as the manifest records it."""
        return {"path": str(self.path), "sha256": self.sha256, "rows": len(self.exemplars)}


def load_exemplar_source(dataset: ResolvedDataset, fewshot_from: str | None, *, n: int,
                         dataset_raw: bytes | None, id_column: str | None, required_fields: Sequence[str],
                         check: Callable[[Sample], str | None], task_spec: str) -> ExemplarSource:
    """The exemplar source of a run of ``dataset`` with ``--fewshot n``.

    ``fewshot_from`` (a path or a built-in name, as ``--dataset`` takes) wins; else the dataset's
    shipped source, and a dataset without one is a :class:`UsageError` naming ``--fewshot``.
    Every row is checked like a dataset's (parse errors, required fields, ids) and then with
    ``check`` (the task's ``validate_exemplar``); a problem is a :class:`DatasetError` naming the
    file and the rows. ``dataset_raw``, the dataset's bytes, is parsed instead of reading the same
    file again. A source with the dataset's id column (``id_column``, else the built-in's) takes
    its ids from it, so a sample and its own row have the same id. ``n`` larger than the source is a
    :class:`UsageError` naming ``--fewshot`` and the source's size.
    """
    if fewshot_from is None:
        path = dataset.fewshot_path
        if path is None:
            what = (f"the built-in dataset {dataset.name!r}" if dataset.default_task is not None
                    else f"dataset {dataset.path}")
            raise UsageError(
                f"--fewshot {n}: {what} ships no worked examples to show; give a file of them with "
                f"--fewshot-from FILE (any format --dataset accepts, with the fields task '{task_spec}' needs)"
            )
        label = f"{path.name} (shipped with {dataset.name})"
        prefix = f"--fewshot {n}, {label}: "
        if not path.is_file():
            raise DatasetError(f"{prefix}file not found: {path}; give another source with --fewshot-from FILE")
        located = ResolvedDataset(name=f"{dataset.name} exemplars", path=path, sha256="")
    else:
        prefix = f"--fewshot-from {fewshot_from}: "
        try:
            located = locate_dataset(fewshot_from)
        except DatasetError as exc:
            raise DatasetError(prefix + exc.message) from None
        label = f"--fewshot-from {fewshot_from}"
    try:
        if dataset_raw is not None and located.path == dataset.path:
            raw = dataset_raw  # the evaluated dataset itself: these are the bytes its hash names
        else:
            raw, _ = read_dataset_file(check_dataset_path(located.path))
        sha256 = hashlib.sha256(raw).hexdigest()
        # Ids as the dataset's (its --id-column, or the built-in's id column) where the source has
        # that column, so an exemplar that is a dataset row has that row's id; else the usual rules.
        wanted = id_column or dataset.default_id_column
        if wanted is not None and sha256 != dataset.sha256:
            wanted = wanted if wanted in columns_of(parse_rows(located.path, raw).rows) else None
        loaded = load_dataset_bytes(dataclasses.replace(located, sha256=sha256), raw, id_column=wanted,
                                    required_fields=required_fields)
        check_samples(loaded.path, loaded.samples, check, task_spec)
    except DatasetError as exc:
        raise DatasetError(prefix + exc.message) from None
    source = ExemplarSource(path=loaded.path, sha256=sha256, exemplars=tuple(loaded.samples), label=label)
    size = len(source.exemplars)
    if n > size:
        raise UsageError(f"--fewshot {n}: only {size} exemplar(s) in {label}; choose --fewshot {size} or fewer")
    return source


def _question_key(text: str) -> str:
    # Whitespace-insensitive: a copy of a question with other line breaks or spacing is the same question.
    return " ".join(text.split())


class ExemplarSelector:
    """Chooses each sample's ``n`` exemplars from ``source`` (see the module's docstring).

    ``key`` is the task's ``exemplar_key`` (the question a row asks); ``layout`` the task's
    ``exemplar_version`` (how the exemplars are laid out in the prompt). :attr:`identity` is what
    the run ID takes from all this.
    """

    def __init__(self, source: ExemplarSource, n: int, seed: int, *, key: Callable[[Sample], str],
                 layout: str) -> None:
        if not 1 <= n <= len(source.exemplars):
            raise ValueError(f"n={n} for a source of {len(source.exemplars)} exemplars")
        self.source = source
        self.n = n
        self.seed = seed
        self.key = key
        self._by_id = {ex.id: i for i, ex in enumerate(source.exemplars)}  # the loader refuses duplicate ids
        self._by_question: dict[str, list[int]] = {}
        for i, ex in enumerate(source.exemplars):
            self._by_question.setdefault(_question_key(key(ex)), []).append(i)
        self.identity: dict[str, Any] = {"n": n, "source_sha256": source.sha256, "rule": SELECTION_RULE,
                                         "layout": layout}

    def _excluded(self, sample: Sample) -> list[int]:
        """Positions in the source that are ``sample`` itself (its id, or its question), ascending."""
        same = set(self._by_question.get(_question_key(self.key(sample)), ()))
        own = self._by_id.get(sample.id)
        if own is not None:
            same.add(own)
        return sorted(same)

    def _too_few(self, sample: Sample, available: int) -> UsageError:
        size = len(self.source.exemplars)
        itself = size - available
        return UsageError(
            f"--fewshot {self.n}: sample {sample.id} (row {sample.row}) can be shown only {available} of the "
            f"{size} exemplars in {self.source.label}: {itself} of them {'is' if itself == 1 else 'are'} the "
            f"sample itself (the same id or the same question); choose --fewshot {available} or fewer"
        )

    def choose(self, sample: Sample) -> tuple[Sample, ...]:
        """``sample``'s exemplars, in the source's order; :class:`UsageError` if fewer than ``n`` remain
        once the sample itself is left out."""
        skip = self._excluded(sample)
        available = len(self.source.exemplars) - len(skip)
        if available < self.n:
            raise self._too_few(sample, available)
        positions = sorted(_past(rank, skip) for rank in _draw(self.seed, sample.id, available, self.n))
        return tuple(self.source.exemplars[p] for p in positions)

    def attach(self, sample: Sample) -> Sample:
        """``sample`` carrying its exemplars (``Sample.fewshot``)."""
        return dataclasses.replace(sample, fewshot=self.choose(sample))

    def attach_all(self, samples: Iterable[Sample]) -> list[Sample]:
        """:meth:`attach` of every sample, in order."""
        return [self.attach(sample) for sample in samples]

    def check(self, samples: Iterable[Sample]) -> None:
        """Raise the :class:`UsageError` of :meth:`choose` for the first sample with fewer than ``n``
        exemplars left, without drawing any (for samples whose exemplars are attached later)."""
        size = len(self.source.exemplars)
        for sample in samples:
            available = size - len(self._excluded(sample))
            if available < self.n:
                raise self._too_few(sample, available)


def _words(seed: int, sample_id: str) -> Iterator[int]:
    """An endless stream of 64-bit numbers from sha256 of (seed, "fewshot", sample id, block)."""
    block = 0
    while True:
        key = f"{seed}\x00fewshot\x00{sample_id}\x00{block}"
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        for k in range(0, 32, 8):
            yield int.from_bytes(digest[k:k + 8], "big")
        block += 1


def _draw(seed: int, sample_id: str, size: int, n: int) -> list[int]:
    """``n`` distinct numbers of ``range(size)``: the first ``n`` steps of a Fisher-Yates shuffle,
    keeping only the positions it moved (so it costs O(n), whatever ``size``)."""
    moved: dict[int, int] = {}
    words = _words(seed, sample_id)
    out = []
    for i in range(n):
        j = i + next(words) % (size - i)  # the bias of a 64-bit modulo is below 2**-40 for any real source
        out.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return out


def _past(rank: int, skip: list[int]) -> int:
    """The position of the ``rank``-th (0-based) row not in ``skip`` (ascending)."""
    position = rank
    for s in skip:
        if s > position:
            break
        position += 1
    return position
