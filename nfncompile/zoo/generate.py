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
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from ..errors import ConfigError, Interrupted, ZooError
from ..files import atomic_write, sigint_replaced
from ..progress import progress as progress_bar
from .cnn import make_cnn_shard
from .config import ZooConfig
from .inr import make_inr_shard
from .store import (
    MANIFEST,
    base_manifest,
    config_digest,
    encode_shard,
    finalize,
    manifest_name,
    sha256_file,
    shard_header,
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


def _shard_job_packed(job: tuple[ZooConfig, int, str]) -> tuple[int, str, int]:
    return _shard_job(*job)


def _models_in(config: ZooConfig, index: int) -> int:
    first = index * config.models_per_shard
    return min(config.models_per_shard, config.num_models - first)


def _worker_init() -> None:
    torch.set_num_threads(1)
    # Ctrl-C in a terminal reaches every process of the group: the parent alone handles it
    # (records what finished, stops the workers), so a worker neither dies with a traceback
    # nor leaves the pool waiting on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _finished_on_disk(config: ZooConfig, out: Path, index: int) -> tuple[int, str, int] | None:
    """``(index, sha256, models)`` of a shard a worker wrote completely (shards are renamed
    into place whole) but that was not recorded; ``None`` unless its header is this zoo's."""
    path = out / shard_name(index)
    try:
        header = shard_header(path)
    except Exception:
        return None
    if header.get("shard") != index or header.get("config_sha256") != config_digest(config):
        return None
    return index, sha256_file(path), int(header["models"])


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
    progress: bool | None = None,
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
    progress : bool or None
        Report progress over models (:func:`nfncompile.progress.progress`: a bar on a
        terminal, a line every 30 s in a log); ``None`` follows the process setting,
        ``False`` is silent.
    on_shard_done : callable, optional
        Called with each shard index once the shard is written and recorded (tests use it to
        simulate an interruption).
    spec, quick : optional
        The spec file and ``--quick`` flag, recorded so error messages can say how to rerun.

    Raises
    ------
    ZooError
        When ``out`` holds a zoo made with a different config.
    Interrupted
        On Ctrl-C: the workers are stopped at once and every shard that was finished is
        recorded, so the same call resumes where this one stopped (and gives the same bytes).
    """
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
    before = {s: _file_state(out / shard_name(s)) for s in todo}  # stale files stay unrecorded
    made: list[int] = []
    with progress_bar(
        total, f"zoo {config.name}", "model", initial=initial, enabled=progress
    ) as bar:

        def record(index: int, sha: str, models: int) -> None:
            done[index] = part_done[index] = {"models": models, "sha256": sha}
            write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))
            made.append(index)
            bar.update(models)
            if on_shard_done is not None:
                on_shard_done(index)

        try:
            _make_shards(config, todo, out, workers, record)
        except KeyboardInterrupt:
            with sigint_replaced(
                signal.SIG_IGN
            ):  # a second Ctrl-C must not cut the bookkeeping short
                for s in todo:  # finished while we were stopping: record them too
                    state = _file_state(out / shard_name(s))
                    if s not in done and state is not None and state != before[s]:
                        job = _finished_on_disk(config, out, s)
                        if job is not None:
                            record(*job)
                write_manifest(out, name, base, part_done, complete=False, part=_part_str(shard))
            raise Interrupted(
                f"zoo {config.name}: {len(done)} of {config.num_shards} shards made and "
                f"recorded in {out}"
            ) from None

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


def _make_shards(
    config: ZooConfig,
    todo: list[int],
    out: Path,
    workers: int,
    record: Callable[[int, str, int], None],
) -> None:
    """Make the shards ``todo``, in ``workers`` processes, calling ``record`` as each ends.

    On Ctrl-C (or any error) the worker processes are terminated at once: a shard being
    written is a temp file that the next run deletes, never a half-written shard.
    """
    if workers == 1 or len(todo) <= 1:
        for s in todo:
            record(*_shard_job(config, s, str(out)))
        return
    pool = get_context("spawn").Pool(min(workers, len(todo)), initializer=_worker_init)
    try:
        jobs = [(config, s, str(out)) for s in todo]
        for result in pool.imap_unordered(_shard_job_packed, jobs):
            record(*result)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


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
