"""The committed recipe JSON Schema is the one the code produces (regenerate with
`eochips schema > src/eochips/schema/recipe-v1.json` after changing the recipe model), and
every built-in recipe validates."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from eochips.config import builtin_recipes, load_recipe, recipe_schema


def test_committed_schema_is_current():
    committed = json.loads((resources.files("eochips") / "schema" / "recipe-v1.json").read_text())
    assert committed == json.loads(json.dumps(recipe_schema())), "run: eochips schema > src/eochips/schema/recipe-v1.json"


@pytest.mark.parametrize("name", builtin_recipes())
def test_builtin_recipes_validate(name):
    r = load_recipe(name)
    assert r.name == name and r.version == 1
