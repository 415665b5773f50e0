"""The recipe: one YAML file that says everything eochips needs to build a dataset.

- :mod:`eochips.config.models`: version 2, the models every stage reads;
- :mod:`eochips.config.loading`: YAML, ``${VAR}``, ``--set``, path fields, error lines;
- :mod:`eochips.config.v1` and :mod:`eochips.config.upgrade`: version-1 files, upgraded on load.

The JSON Schema of the models is printed by ``eochips schema`` and committed as
``schema/recipe-v2.json`` (``schema/recipe-v1.json`` for version 1).
"""

from .loading import (RecipeUpgradeWarning, builtin_recipes, canonical, load_recipe, parse_recipe, read_yaml,
                      recipe_schema, recipe_text, set_dotted)
from .models import (RECIPE_VERSION, AOIConfig, BandConfig, CloudCover, CompositeConfig, DatasetConfig, LabelsConfig, MasksConfig, OutputConfig,
                     ProfileConfig, QALayerConfig, ReadingConfig, Recipe, SearchConfig, SourceConfig, is_nan)

__all__ = [
    "Recipe", "CloudCover", "load_recipe", "parse_recipe", "read_yaml", "recipe_schema", "recipe_text", "builtin_recipes", "set_dotted",
    "canonical", "RecipeUpgradeWarning", "RECIPE_VERSION", "AOIConfig", "BandConfig", "CompositeConfig", "DatasetConfig",
    "LabelsConfig", "MasksConfig", "OutputConfig", "ProfileConfig", "QALayerConfig", "ReadingConfig", "SearchConfig", "SourceConfig",
    "is_nan",
]
