"""Generating a zoo: every shard of a zoo config, in parallel workers, resumable, splittable.

Every shard is generated from a seed derived from ``(seed, shard index)``
(:func:`~.store.shard_seed`): any shard can be recomputed alone and the same seed gives
byte-identical shards (on one machine and torch version: every shard is computed with one
thread). Generation is resumable (finished shards are recorded with their sha256 and skipped; a
shard is written to a temp file, fsynced and renamed, so none is ever half-written), parallel
(``workers``) and splittable across machines (``shard=(i, n)`` makes every n-th shard from i;
copy the parts into one directory and run once more without ``--shard`` to finish).

Examples
--------
>>> config = load_zoo_config("specs/zoos/digits_cnn.yaml", quick=True)  # doctest: +SKIP
>>> generate_zoo(config, "zoo", progress=False)  # doctest: +SKIP
>>> zoo = load_zoo("zoo")  # doctest: +SKIP
>>> feats = zoo.features(spec)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from ..errors import ConfigError, ZooError
from ..files import atomic_write
from .cnn import make_cnn_shard
from .config import ZooConfig
from .inr import make_inr_shard
from .store import (
    MANIFEST,
    base_manifest,
    encode_shard,
    finalize,
    manifest_name,
    shard_name,
    verified_shards,
    write_manifest,
)

__all__ = ["ZooReport", "make_shard", "generate_zoo", "default_workers"]


def make_shard(config: ZooConfig, index: int) -> bytes:
    """The bytes of shard ``index`` of a zoo: a safetensors file, computed with one thread.

    Deterministic: the same config and index always give the same bytes (on one machine and
    torch version). The header metadata (one key, ``nfncompile``) holds the rows (JSON) and
    the config digest.
    """
    if not 0 <= index < config.num_shards:
        raise ZooError(f"shard index {index} out of range: the zoo has {config.num_shards} shards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if config.type == "cnn":
            tensors, rows = make_cnn_shard(config, index)
        else:
            tensors, rows = make_inr_shard(config, index)
    finally:
        torch.set_num_threads(threads)
    return encode_shard(config, index, tensors, rows)


def default_workers() -> int:
    """The number of CPUs this process may run on: the default number of zoo workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _shard_job(config: ZooConfig, index: int, out: str) -> tuple[int, str, int]:
    """Make one shard and write it into ``out``: ``(index, sha256, models)``."""
    data = make_shard(config, index)
    atomic_write(Path(out) / shard_name(index), data)
    return index, hashlib.sha256(data).hexdigest(), _models_in(config, index)


def _models_in(config: ZooConfig, index: int) -> int:
    first = index * config.models_per_shard
    return min(config.models_per_shard, config.num_models - first)


def _worker_init() -> None:
    torch.set_num_threads(1)


@dataclass(frozen=True)
class ZooReport:
    """What :func:`generate_zoo` did.

    Attributes
    ----------
    directory : Path
    num_models, num_shards : int
        Of the whole zoo.
    made, skipped : tuple of int
        Shards made by this run, and shards of this run's part already complete.
    complete : bool
        Whether every shard of the zoo now exists (``metadata.csv`` is written).
    seconds : float
        Wall-clock time of this run.
    summary : dict or None
        Min/median/max/mean of the target (``test_accuracy`` or ``psnr``) when complete.
    """

    directory: Path
    num_models: int
    num_shards: int
    made: tuple[int, ...]
    skipped: tuple[int, ...]
    complete: bool
    seconds: float
    summary: dict | None = None

    def __str__(self) -> str:
        lines = [
            f"zoo {self.directory}: made {len(self.made)} shard(s), skipped {len(self.skipped)} "
            f"already complete, in {self.seconds:.1f} s"
        ]
        if self.complete and self.summary:
            for key, stats in self.summary.items():
                if isinstance(stats, dict):
                    body = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
                    lines.append(f"  {key}: {body}")
                else:
                    lines.append(f"  {key}: {stats}")
            lines.append(f"  complete: {self.num_models} models in {self.num_shards} shards")
        elif not self.complete:
            lines.append(
                "  incomplete: other shards are missing (made elsewhere with --shard?); copy "
                "them in and rerun without --shard to finish"
            )
        return "\n".join(lines)


def generate_zoo(
    config: ZooConfig,
    out: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
    spec: str | None = None,
    quick: bool = False,
) -> ZooReport:
    """Generate (or finish) a zoo in ``out``.

    Parameters
    ----------
    config : CNNZooConfig or INRZooConfig
    out : path, optional
        The zoo directory (default ``config.out``).
    workers : int
        Processes making shards in parallel (each with one torch thread). Any value gives the
        same bytes.
    shard : (i, n), optional
        Make only the shards ``s`` with ``s % n == i`` (recorded in
        ``manifest.part-i-of-n.json``). When every shard of the zoo is present the zoo is
        finished (``metadata.csv``, ``manifest.json``), whichever run completes it.
    progress : bool
        Show a tqdm bar over models.
    on_shard_done : callable, optional
        Called with each shard index once the shard is written and recorded (tests use it to
        simulate an interruption).
    spec, quick : optional
        The spec file and ``--quick`` flag, recorded so error messages can say how to rerun.

    Raises
    ------
    ZooError
        When ``out`` holds a zoo made with a different config.
    """
    from tqdm import tqdm

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be a positive int, got {workers!r}")
    if shard is not None:
        shard = _check_part(shard)
    start = time.perf_counter()
    out = Path(config.out if out is None else out)
    out.mkdir(parents=True, exist_ok=True)
    base = {**base_manifest(config, spec), "quick": bool(quick)}
    name = manifest_name(shard)
    mine = [s for s in range(config.num_shards) if shard is None or s % shard[1] == shard[0]]

    done = verified_shards(out, config)  # every shard recorded and intact
    todo = [s for s in mine if s not in done]
    skipped = tuple(s for s in mine if s in done)
    for s in todo:  # temp files a killed run left behind
        for tmp in out.glob(f".{shard_name(s)}.tmp-*"):
            with contextlib.suppress(OSError):
                tmp.unlink()
    part_done = {i: e for i, e in done.items() if i in set(mine)}
    if name == MANIFEST:
        part_done = dict(done)
    if todo:  # (a finished zoo's manifest is not touched when there is nothing to make)
        write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))

    total = sum(_models_in(config, s) for s in mine)
    initial = sum(_models_in(config, s) for s in skipped)
    bar = tqdm(
        total=total,
        initial=initial,
        desc=f"zoo {config.name}",
        unit="model",
        disable=not progress,
        dynamic_ncols=True,
    )
    made: list[int] = []

    def record(index: int, sha: str, models: int) -> None:
        done[index] = part_done[index] = {"models": models, "sha256": sha}
        write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))
        made.append(index)
        bar.update(models)
        if on_shard_done is not None:
            on_shard_done(index)

    try:
        if workers == 1 or len(todo) <= 1:
            for s in todo:
                record(*_shard_job(config, s, str(out)))
        else:
            ctx = get_context("spawn")
            n = min(workers, len(todo))
            with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init) as pool:
                pending = {pool.submit(_shard_job, config, s, str(out)) for s in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in sorted(finished, key=lambda f: f.result()[0]):
                            record(*fut.result())
                finally:
                    for fut in pending:
                        fut.cancel()
    finally:
        bar.close()

    # shards other runs (other --shard parts sharing this directory) recorded meanwhile
    done.update(verified_shards(out, config, skip=set(done)))
    complete = len(done) == config.num_shards
    summary = finalize(out, config, base, done) if complete else None
    return ZooReport(
        directory=out,
        num_models=config.num_models,
        num_shards=config.num_shards,
        made=tuple(sorted(made)),
        skipped=skipped,
        complete=complete,
        seconds=time.perf_counter() - start,
        summary=summary,
    )


def _part_str(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def _check_part(shard: tuple[int, int]) -> tuple[int, int]:
    """``shard`` as ``(i, n)`` ints with ``0 <= i < n``, else a :class:`ConfigError`."""
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard: expected (i, n) with 0 <= i < n, got {shard!r}")
    return i, n
