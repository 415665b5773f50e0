"""No silent empty datasets: checks that turn a suspect plan or dataset into a clear exit.

==========================  ==========================================================  ======
check                       when it fires                                               exit
==========================  ==========================================================  ======
:func:`check_plan`          the split would give 0 training units (``int(f * n) == 0``)   2
                            whatever the build keeps (too few units planned); the
                            bigearthnet finalizer's files do not read (countries, s2v1);
                            a spatial-blocks split on a geographic or rotated grid, or
                            with blocks that are not whole multiples of the units
                            (:func:`eochips.dataset.splits.check_blocks`)
:func:`check_built`         ``eochips finalize`` on a folder whose plan was never built   2
:func:`dataset_problems`    after finalisation: units were kept but the split gave 0      3
                            training units (so the statistics would be over 0 units;
                            a spatial-blocks buffer may exclude every train unit),
                            or more than ``dataset.max_drop_fraction`` (default 0.9) of
                            the built units were dropped for ONE setup reason
==========================  ==========================================================  ======

Setup reasons (:data:`SETUP_REASONS`) are the drop codes that, when they hit nearly every
unit, point at the recipe or the inputs rather than at the data: ``nodata`` and ``nan`` (the
imagery does not cover the units: a wrong AOI, grid CRS or footprint), ``value`` (every unit
holds the excluded value), ``label-fraction`` (the labels do not cover the units) and
``selection`` (no acceptable scene: dates, area, coverage thresholds). Clouds
(``fmask-bad-pct``, ``mask-fraction``) are data, and ``sampling`` is chosen: neither counts,
and units dropped by sampling are not in the denominator.

The problems go to the dataset summary (``summary["problems"]``, also in ``summary.json``);
the CLI prints each as one ``error:`` line and exits 3 (like an empty dataset).
"""

from __future__ import annotations

from typing import Any

from ..errors import OutputError, RecipeError

SETUP_REASONS: dict[str, str] = {
    "nodata": "fill pixels: the imagery does not cover the units (check the AOI, the grid CRS and the scenes' CRS "
              "and footprints)",
    "nan": "NaN pixels: the imagery does not cover the units (check the AOI, the grid CRS and the scenes)",
    "value": "the excluded value is everywhere (check the filter's band and value)",
    "label-fraction": "the labels do not cover the units (check the label file's extent and CRS, and the filter's classes)",
    "selection": "no acceptable scene (check the search dates and area, and the coverage thresholds)",
}
"""Drop reason code -> the likely cause, for the codes that point at the setup."""


def _split_cfg(recipe) -> tuple[bool, float | None]:
    """(the dataset uses the train part, the random split's train_fraction; None for a split by position)."""
    fin = recipe.dataset.finalizers
    uses_train = "split" in fin or ("stats" in fin and recipe.dataset.stats_on == "train")
    split = recipe.dataset.split
    return uses_train, split.train_fraction if split.kind == "random" else None


def check_plan(plan) -> None:
    """Refuse a plan whose split gives 0 training units however many units the build keeps.

    Raises
    ------
    RecipeError
        Naming ``dataset.split.train_fraction``, the planned count and what would work; a
        spatial-blocks split the grid cannot hold (:func:`eochips.dataset.splits.check_blocks`).
    OutputError
        A file of ``dataset.metadata`` does not read (:func:`eochips.dataset.bigearthnet.check_inputs`).
    """
    if "bigearthnet" in plan.recipe.dataset.finalizers:  # its input files, before anything is built
        from .bigearthnet import check_inputs

        check_inputs(plan.recipe.dataset.metadata)
    if plan.recipe.dataset.split.kind == "spatial-blocks":
        from .splits import check_blocks

        check_blocks(plan.recipe.dataset.split, plan, [u.id for u in plan.units if u.status == "planned"])
    uses_train, f = _split_cfg(plan.recipe)
    n = sum(1 for u in plan.units if u.status == "planned")
    if uses_train and f is not None and n and int(f * n) == 0:
        need = int(-(-1 // f)) if f > 0 else 0
        raise RecipeError(f"recipe field 'dataset.split.train_fraction': {n} unit(s) planned and train_fraction {f:g} gives "
                          f"int({f:g} x {n}) = 0 training units (and statistics over 0 units); enlarge the AOI to at least "
                          f"{need} units or raise train_fraction")


def check_built(store, has_state: bool) -> None:
    """Refuse to finalise a dataset folder whose plan was never built.

    Raises
    ------
    OutputError
        No state and no completion marker: ``eochips build`` never ran there.
    """
    from ..engine import MARKERS

    if has_state:
        return
    if any(rel.startswith(MARKERS + "/") for rel in store.list_files()):
        return
    raise OutputError(f"nothing was built in {store.location!r} (it holds only a plan): run `eochips build {store.location}` "
                      f"first, then `eochips finalize {store.location}`")


def dataset_problems(summary: dict[str, Any], recipe) -> list[str]:
    """The problems of a finalised dataset (module docstring), one message each; ``[]`` when fine."""
    out: list[str] = []
    kept = summary["kept"]
    uses_train, f = _split_cfg(recipe)
    split = recipe.dataset.split
    if uses_train and kept and summary["train"] == 0 and split.kind == "spatial-blocks":
        excluded = kept - summary["validation"] - summary.get("test", 0)
        out.append(f"split: 0 training units of {kept} kept (spatial-blocks of {split.block_size_m:g} m: "
                   f"{excluded} unit(s) within dataset.split.buffer_m ({split.buffer_m:g} m) of another part's block, "
                   f"{summary['validation']} validation, {summary.get('test', 0)} test); the statistics are over 0 "
                   f"units; enlarge the AOI, lower buffer_m, or raise block_size_m or train_fraction")
    elif uses_train and kept and summary["train"] == 0 and f is None:
        out.append(f"split: 0 training units of {kept} kept ({recipe.dataset.split.kind}: no kept unit lies in a train part; "
                   f"{summary['validation']} validation, {summary.get('test', 0)} test); the statistics are over 0 units; "
                   f"cover more of the tiles or set dataset.stats_on: all")
    elif uses_train and kept and summary["train"] == 0:
        out.append(f"split: 0 training units of {kept} kept (train_fraction {f:g}: int({f:g} x {kept}) = 0; "
                   f"{summary['validation']} validation); the statistics are over 0 units; enlarge the AOI or raise "
                   f"dataset.split.train_fraction")
    dropped = summary["dropped"]
    base = summary["units_total"] - dropped.get("sampling", 0)
    limit = recipe.dataset.max_drop_fraction
    if base > 0 and limit < 1:
        for code, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            if code in SETUP_REASONS and n / base > limit:
                out.append(f"{n} of {base} units ({100.0 * n / base:.0f} %) were dropped for {code!r}, more than "
                           f"dataset.max_drop_fraction ({limit:g}): likely a setup problem, {SETUP_REASONS[code]}; "
                           f"set dataset.max_drop_fraction: 1 to accept it")
    return out


__all__ = ["SETUP_REASONS", "check_plan", "check_built", "dataset_problems"]
