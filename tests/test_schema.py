"""The committed recipe JSON Schemas are the ones the code produces (regenerate with
`eochips schema > src/eochips/schema/recipe-v2.json` after changing the recipe model), every
built-in recipe validates as version 2, and every tagged variant of the config has its
registered function (and the other way round)."""

from __future__ import annotations

import json
import typing
from importlib import resources

import pytest

from eochips.config import builtin_recipes, load_recipe, recipe_schema
from eochips.config import models as m


def test_committed_v2_schema_is_current():
    committed = json.loads((resources.files("eochips") / "schema" / "recipe-v2.json").read_text())
    assert committed == json.loads(json.dumps(recipe_schema())), "run: eochips schema > src/eochips/schema/recipe-v2.json"


def test_committed_v1_schema_is_current():
    from eochips.config.v1 import RecipeV1

    committed = json.loads((resources.files("eochips") / "schema" / "recipe-v1.json").read_text())
    assert committed == json.loads(json.dumps(RecipeV1.model_json_schema()))


@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipes_validate_as_v2(name):
    r = load_recipe(name)
    assert r.name == name and r.version == 2


def _kinds(tagged) -> set[str]:
    """The ``kind`` tags of an ``Annotated[Union[...], Field(discriminator="kind")]`` (or of one model)."""
    inner = typing.get_args(tagged)[0]
    members = typing.get_args(inner) if typing.get_origin(inner) is typing.Union else (inner,)
    return {typing.get_args(cls.model_fields["kind"].annotation)[0] for cls in members}


def test_every_kind_has_its_registered_function():
    from eochips.composite import COMPOSITES
    from eochips.dataset import FINALIZERS, SPLITS
    from eochips.filters import FILTERS
    from eochips.qa import MASK_KINDS
    from eochips.sampling import SAMPLERS
    from eochips.selection import STRATEGIES
    from eochips.writers.layouts import LAYOUTS

    assert _kinds(m.Selection) == set(STRATEGIES)
    assert _kinds(m.Sampling) == set(SAMPLERS)
    assert _kinds(m.MaskSource) == set(MASK_KINDS)
    assert _kinds(m.Filter) == set(FILTERS)
    assert _kinds(m.Layout) == set(LAYOUTS)
    assert _kinds(m.Split) == set(SPLITS)
    assert set(typing.get_args(m.CompositeConfig.model_fields["kind"].annotation)) == set(COMPOSITES)
    assert set(m.FINALIZERS) == set(FINALIZERS)


def test_readme_recipe_example_validates():
    """The version-2 recipe shown in README.md is a valid recipe."""
    import re
    from pathlib import Path

    import yaml

    from eochips.config import parse_recipe

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Recipes \(version 2\).*?```yaml\n(.*?)```", text, re.S).group(1)
    r = parse_recipe(yaml.safe_load(block))
    assert r.version == 2 and list(r.sources) == ["s2"] and [f.kind for f in r.filters] == ["nodata", "mask-fraction"]
