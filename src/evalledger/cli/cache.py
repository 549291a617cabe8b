"""``evalledger cache stats`` and ``evalledger cache prune``: the response cache shared across runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from evalledger.fsio import human_bytes
from evalledger.response_cache import cache_stats, prune_cache

_CACHE_DIR = click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                          metavar="DIR", help="The response cache's directory. Default: $EVALLEDGER_CACHE_DIR, "
                                              "else $XDG_CACHE_HOME/evalledger/responses, else "
                                              "~/.cache/evalledger/responses.")


@click.group()
def cache() -> None:
    """The response cache shared across runs: what it holds, and removing old entries."""


@cache.command(name="stats")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print cache_stats() as JSON.")
def stats(cache_dir: Path | None, as_json: bool) -> None:
    """Entries, bytes, the oldest and newest entry, and entries per model."""
    s = cache_stats(cache_dir)
    if as_json:
        click.echo(json.dumps(s.to_dict(), indent=2))
        return
    click.echo(f"cache    {s.cache_dir}{'' if s.exists else ' (does not exist yet)'}")
    click.echo(f"entries  {s.entries} ({human_bytes(s.bytes)})")
    click.echo(f"oldest   {s.oldest or '-'}")
    click.echo(f"newest   {s.newest or '-'}")
    if s.corrupt:
        click.echo(f"ignored  {s.corrupt} damaged or foreign file(s) ({human_bytes(s.corrupt_bytes)}): runs do not "
                   "trust them; `evalledger cache prune` removes them")
    if s.temp_files:
        click.echo(f"temp     {s.temp_files} temporary file(s) (writes in progress, or left by killed runs)")
    width = max((len(m) for m in s.by_model), default=0)
    for model, share in sorted(s.by_model.items()):
        click.echo(f"  {model:<{width}}  {share.entries} entries  {human_bytes(share.bytes)}")


@cache.command(name="prune")
@_CACHE_DIR
@click.option("--older-than", type=float, default=None, metavar="DAYS",
              help="Remove entries stored at least DAYS ago. Without it only files runs never use are removed: "
                   "damaged entries and temporary files killed runs left.")
@click.option("--dry-run", is_flag=True, help="Only count what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print prune_cache() as JSON.")
def prune(cache_dir: Path | None, older_than: float | None, dry_run: bool, as_json: bool) -> None:
    """Remove old entries, damaged entries and leftover temporary files from the response cache."""
    if older_than is not None and not older_than >= 0:
        raise click.BadParameter(f"{older_than}: must be 0 or more days", param_hint="--older-than")
    result = prune_cache(cache_dir, older_than_days=older_than, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    verb = "would remove" if dry_run else "removed"
    age = "" if older_than is None else f" stored {older_than:g}+ days ago"
    click.echo(f"{result.cache_dir}: {verb} {result.entries} entr{'y' if result.entries == 1 else 'ies'}{age}, "
               f"{result.corrupt} damaged, {result.temp_files} temporary file(s) ({human_bytes(result.bytes)}); "
               f"{result.kept} kept")
    for failure in result.failed:
        click.echo(f"warning: could not remove {failure}", err=True)
