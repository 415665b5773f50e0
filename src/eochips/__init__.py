"""eochips: from one recipe file to an ML-ready dataset of satellite imagery.

The pipeline, each stage a function and a CLI verb::

    recipe = load_recipe("hls-crop-classification")     # config
    plan = make_plan(recipe); write_plan(plan, out)     # eochips plan
    build(out)                                          # eochips build
    finalize(out)                                       # eochips finalize

:func:`run` does all three. :func:`open_dataset` opens the result for training (its index,
splits, chip files in channel order, normalisation, classes); ``eochips.torch`` (extra
``eochips[torch]``) wraps a split as a PyTorch ``Dataset``.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Recipe, load_recipe
from .errors import EochipsError

__version__ = "0.2.0"
__all__ = ["Recipe", "load_recipe", "run", "open_dataset", "ChipDataset", "EochipsError", "__version__"]
_LAZY = {"open_dataset": "api", "ChipDataset": "api"}
"""Names imported on first use: ``eochips.api`` imports rasterio (GDAL, about 70 MB and 1 s), which
``eochips --help``, ``recipes`` or ``validate`` never need."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(recipe: Recipe, out: str | os.PathLike, *, workers: int | None = None, scheduler: str | None = None,
        progress: bool = False, overwrite: bool = False, shard: tuple[int, int] | None = None,
        timings: str | os.PathLike | None = None) -> dict[str, Any]:
    """Plan, build and finalise ``recipe`` into ``out`` (a folder or an fsspec URL such as
    ``s3://bucket/prefix``); return the dataset summary.

    A folder that already holds a dataset of the same recipe is resumed (finished units are
    kept); one built from a different recipe is refused unless ``overwrite``.

    ``shard=(i, n)`` (array jobs): plan, then build only shard ``i`` (0-based) of ``n``
    (:func:`eochips.engine.shard_units`), and do not finalise: the first shard writes the plan,
    the others check that theirs is the same; ``finalize(out)`` merges the shards once all are
    done. Returns ``{"recipe", "shard", "units_total", "build"}`` (the shard's counts).

    The summary also has ``"stages"``: seconds per stage key (``search:SOURCE``,
    ``selection:SOURCE``, ``label_scan``, ``asset_probe``, ``plan``, ``plan_write``,
    ``cluster_start``, ``processing``, ``cluster_stop``, ``build``, ``finalize:NAME``, ``total``;
    :mod:`eochips.progress`), and ``"build"["processing"]`` the units' processing: wall seconds,
    the workers' CPU seconds, cores given, utilisation. ``timings``: a local file that gets both
    and the main process's peak RSS per stage as JSON (:func:`eochips.engine.write_timings`).
    None of it goes into the dataset: ``summary.json`` and the manifest stay byte-identical from
    one finalize to the next, and a rerun with nothing to do changes no file.

    Raises
    ------
    EochipsError
        Bad input (recipe, AOI, catalog, assets, labels, output location, a folder of another
        recipe, a bad ``shard``, ``overwrite`` with ``shard``, another plan than the shards'
        before), before anything is written; a write failure (disk full) removes what this call
        created.
    KeyboardInterrupt
        Ctrl-C / SIGTERM during the build, after the workers are stopped (rerun to resume).
    """
    from .progress import recording

    with recording() as rec:
        return _run(recipe, out, rec, workers=workers, scheduler=scheduler, progress=progress, overwrite=overwrite,
                    shard=shard, timings=timings)


def _run(recipe: Recipe, out, rec, *, workers, scheduler, progress, overwrite, shard, timings) -> dict[str, Any]:
    """:func:`run`, its stages recorded in ``rec`` (:func:`eochips.progress.recording`)."""
    from .dataset import finalize
    from .engine import build, check_output, check_scheduler, check_shard, share_plan, start_forkserver, write_timings
    from .errors import RecipeError
    from .lock import dataset_lock
    from .plan import make_plan, write_plan
    from .progress import stage
    from .writers import OutputStore

    if shard is not None:
        shard = check_shard(shard)
        if overwrite:
            raise RecipeError("--overwrite with --shard: a shard cannot replace a dataset the other shards share; clear "
                              "the output first (or use a new one), then start the shards without --overwrite")
    store = OutputStore(out)
    if scheduler or recipe.engine.scheduler:
        check_scheduler(scheduler or recipe.engine.scheduler)  # before anything is searched or written
    if not (scheduler or recipe.engine.scheduler) and recipe.engine.processes:
        start_forkserver()  # the workers' imports run while this process plans
    with stage(None, "plan"):
        plan = make_plan(recipe)
    created = store.is_local and not store.root.exists()
    command = "run" if shard is None else f"run --shard {shard[0]}/{shard[1]}"
    try:
        with dataset_lock(store, command, shard=shard):  # one writer per dataset (per shard): a second stops here (exit 2)
            store.ensure()
            if shard is None:
                check_output(store, recipe, overwrite)
                with stage(None, "plan_write"):
                    write_plan(plan, store)
            else:
                with stage(None, "plan_write"):
                    share_plan(store, recipe, plan)
            build_summary = build(store.location, plan=plan, workers=workers, scheduler=scheduler, progress=progress,
                                  shard=shard)
            if shard is not None:
                write_timings(timings, command, rec, build_summary.processing)
                return {"recipe": recipe.name, "shard": list(shard), "units_total": len(plan.units),
                        "build": build_summary.as_dict()}
            summary = finalize(store.location)
            figures = write_timings(timings, command, rec, build_summary.processing)
    except EochipsError:
        if created and not any(p.is_file() for p in store.root.rglob("*")):
            import shutil

            shutil.rmtree(store.root, ignore_errors=True)
        raise
    summary["build"] = build_summary.as_dict()
    summary["stages"] = figures["stages"]
    return summary
