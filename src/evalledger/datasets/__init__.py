"""Datasets: files (JSON lines, JSON, CSV, Parquet; gzip) to validated samples with stable ids,
the index a run keeps of them, shard membership, few-shot exemplars, and the built-in datasets
shipped as package data."""

from __future__ import annotations

from evalledger.datasets import index
from evalledger.datasets.columnar import validated_index
from evalledger.datasets.fewshot import SELECTION_RULE, ExemplarSelector, ExemplarSource, load_exemplar_source
from evalledger.datasets.files import (
    BUILTIN_DATASETS,
    ResolvedDataset,
    check_dataset_path,
    dataset_format,
    locate_dataset,
    read_dataset_file,
    resolve_dataset,
)
from evalledger.datasets.hashcache import HASH_CACHE_VARIABLE, forget_sha256, hash_cache_dir, hashed_dataset
from evalledger.datasets.index import (
    LazySamples,
    RowSource,
    ValidatedIndex,
    in_shard,
    index_key,
    load_index,
    sample_ids,
    save_index,
    with_ids,
    without_ids,
)
from evalledger.datasets.loader import Dataset, check_samples, load_dataset, load_dataset_bytes
from evalledger.datasets.sharding import parse_shard, shard_of
from evalledger.datasets.values import max_field_chars

__all__ = [
    "BUILTIN_DATASETS",
    "HASH_CACHE_VARIABLE",
    "forget_sha256",
    "hash_cache_dir",
    "hashed_dataset",
    "SELECTION_RULE",
    "Dataset",
    "ExemplarSelector",
    "ExemplarSource",
    "LazySamples",
    "ResolvedDataset",
    "RowSource",
    "ValidatedIndex",
    "check_dataset_path",
    "check_samples",
    "dataset_format",
    "in_shard",
    "index",
    "index_key",
    "load_dataset",
    "load_dataset_bytes",
    "load_exemplar_source",
    "load_index",
    "locate_dataset",
    "max_field_chars",
    "parse_shard",
    "read_dataset_file",
    "resolve_dataset",
    "sample_ids",
    "save_index",
    "shard_of",
    "validated_index",
    "with_ids",
    "without_ids",
]
