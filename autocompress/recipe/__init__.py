"""Recipes: one trial's compression as a versioned, hashed YAML file that can be applied anywhere.

A recipe names the original model (workload reference plus a sha256 of the baseline's
weights), the target and hardware its latency was measured on, every step with all its
settings, what each decided, in the order the pipeline applies them, the metrics the study
measured, a content hash over all of that, and optionally an HMAC signature. Loading uses
``yaml.safe_load`` only, accepts only known methods and settings, never imports anything, and
refuses an unknown ``format_version`` or a hash mismatch (:class:`RecipeError`).

The document and its YAML live in ``_document``; building a trial's recipe and saving it as
an artifact in ``_export``; choosing which trial to export in ``_selection``.
"""

from autocompress.recipe._document import (
    FORMAT_VERSION,
    Recipe,
    content_hash,
    current_versions,
    dumps,
    environment_warnings,
    load_recipe,
    loads,
    save_recipe,
    weights_sha256,
)
from autocompress.recipe._export import RecipeArtifacts, build_recipe, recipe_for
from autocompress.recipe._selection import OPTIMIZE, Selection, export_warnings, select_trial

__all__ = [
    "FORMAT_VERSION",
    "OPTIMIZE",
    "Recipe",
    "RecipeArtifacts",
    "Selection",
    "build_recipe",
    "content_hash",
    "current_versions",
    "dumps",
    "environment_warnings",
    "export_warnings",
    "load_recipe",
    "loads",
    "recipe_for",
    "save_recipe",
    "select_trial",
    "weights_sha256",
]
