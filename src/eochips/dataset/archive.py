"""The ``archive`` finalizer: the dataset packed as one reproducible ``.tar.zst``.

Runs after ``manifest`` (the config allows only it there: :class:`eochips.config.models.DatasetConfig`)
and packs what the manifest lists plus the manifest (:mod:`eochips.writers.archive`), with
``dataset.archive`` (:class:`eochips.config.models.ArchiveConfig`): ``level`` (zstandard, default
6 like BigEarthNet v2), ``name`` (default ``{recipe}.tar.zst``), ``mtime`` (default 0).

Where: ``archive/{name}`` inside the dataset, beside ``archive/{name}.sha256`` and
``archive/manifest.sha256``. Inside, because the :class:`~eochips.writers.OutputStore` is the one
place that writes the output (a sibling of an ``s3://bucket/prefix`` dataset is another prefix
the run may not own) and the dataset stays one self-contained folder; the manifest leaves
``archive/`` out, so the archive never holds itself, and a rerun (``eochips finalize`` again)
writes the same bytes over it. ``eochips archive DATASET --output PATH`` writes elsewhere.

``summary.json`` is written before the manifest, so it cannot hold the archive's hash; the
archive's sha256, size and the manifest's sha256 go to the two ``.sha256`` files and to the
summary :func:`eochips.dataset.finalize` returns (``summary["archive"]``, printed by the CLI).
"""

from __future__ import annotations

from ..writers.archive import ArchiveError, ArchiveInfo, write_archive
from ..writers.store import safe_name
from . import Context, register


def archive_name(template: str, recipe: str) -> str:
    """The archive's file name from ``dataset.archive.name`` (field ``{recipe}``, made file-name safe)."""
    return template.format(recipe=safe_name(recipe))


@register("archive")
def _archive(ctx: Context) -> None:
    cfg = ctx.plan.recipe.dataset.archive
    info = write_archive(ctx.store, archive_name(cfg.name, ctx.plan.recipe.name), level=cfg.level, mtime=cfg.mtime)
    ctx.summary["archive"] = info.as_dict()


def archive_dataset(location: str, level: int | None = None, output: str | None = None, mtime: int | None = None) -> ArchiveInfo:
    """``eochips archive``: archive the finalised dataset at ``location`` (a folder or URL) as the
    ``archive`` finalizer does, with the recipe's ``dataset.archive`` settings unless ``level``
    / ``mtime`` are given; to ``output`` (a local file path) instead of ``archive/{name}`` when
    given. Holds the dataset's lock (:func:`eochips.lock.dataset_lock`) while it reads.

    Raises
    ------
    ArchiveError
        ``location`` holds no plan (not an eochips dataset) or no ``checksums.sha256`` (not
        finalised); its files differ from the manifest; a bad level or name.
    OutputError
        Another process writes the dataset; the archive cannot be written.
    """
    import json

    from ..config.models import ArchiveConfig
    from ..lock import dataset_lock
    from ..plan import PLAN_DIR
    from ..writers import OutputStore
    from ..writers.archive import MANIFEST

    store = OutputStore(location)
    with dataset_lock(store, "archive", create=False):
        if not store.exists(f"{PLAN_DIR}/plan.json"):
            raise ArchiveError(f"{store.location!r} is not an eochips dataset (no {PLAN_DIR}/plan.json); give the folder "
                               f"of 'eochips run RECIPE --output FOLDER'")
        if not store.exists(MANIFEST):
            raise ArchiveError(f"{store.location!r} is not finalised (no {MANIFEST}); run 'eochips finalize {store.location}' "
                               f"(with 'manifest' in dataset.finalizers) first")
        try:
            recipe = json.loads(store.read_bytes(f"{PLAN_DIR}/plan.json"))["recipe"]
            cfg = ArchiveConfig(**((recipe.get("dataset") or {}).get("archive") or {}))
            name = archive_name(cfg.name, recipe["name"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"{store.location!r}: its plan/plan.json does not hold a readable recipe "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        return write_archive(store, name, level=cfg.level if level is None else level,
                             mtime=cfg.mtime if mtime is None else mtime, output=output)
