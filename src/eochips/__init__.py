"""eochips: from one recipe file to an ML-ready dataset of satellite imagery.

The pipeline, each stage a function and a CLI verb::

    recipe = load_recipe("hls-crop-classification")     # config
    plan = make_plan(recipe); write_plan(plan, out)     # eochips plan
    build(out)                                          # eochips build
    finalize(out)                                       # eochips finalize

:func:`run` does all three.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Recipe, load_recipe
from .errors import EochipsError

__version__ = "0.2.0"
__all__ = ["Recipe", "load_recipe", "run", "EochipsError", "__version__"]


def run(recipe: Recipe, out: str | os.PathLike, *, workers: int | None = None, scheduler: str | None = None,
        progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Plan, build and finalise ``recipe`` into ``out`` (a folder or an fsspec URL such as
    ``s3://bucket/prefix``); return the dataset summary.

    A folder that already holds a dataset of the same recipe is resumed (finished units are
    kept); one built from a different recipe is refused unless ``overwrite``.

    Raises
    ------
    EochipsError
        Bad input (recipe, AOI, catalog, assets, labels, output location, a folder of another
        recipe), before anything is written; a write failure (disk full) removes what this call
        created.
    KeyboardInterrupt
        Ctrl-C / SIGTERM during the build, after the workers are stopped (rerun to resume).
    """
    from .dataset import finalize
    from .engine import build, check_output, check_scheduler
    from .lock import dataset_lock
    from .plan import make_plan, write_plan
    from .writers import OutputStore

    store = OutputStore(out)
    if scheduler or recipe.engine.scheduler:
        check_scheduler(scheduler or recipe.engine.scheduler)  # before anything is searched or written
    plan = make_plan(recipe)
    created = store.is_local and not store.root.exists()
    try:
        with dataset_lock(store, "run"):  # one writer per dataset: a second run stops here (exit 2)
            store.ensure()
            check_output(store, recipe, overwrite)
            write_plan(plan, store)
            build_summary = build(store.location, plan=plan, workers=workers, scheduler=scheduler, progress=progress)
            summary = finalize(store.location)
    except EochipsError:
        if created and not any(p.is_file() for p in store.root.rglob("*")):
            import shutil

            shutil.rmtree(store.root, ignore_errors=True)
        raise
    summary["build"] = build_summary.as_dict()
    return summary
