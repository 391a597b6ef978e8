"""docs/serving.md's LLaMA-Factory serving keys are the recipes' own: LLaMA-Factory's adapter folder keeps neither
the template nor the pixel limits, so a stale row would serve images on another grid than training's."""
import fnmatch
import re

from custom_modules.forgery.settings import MODES, SEED_TASKS
from tests.recipes.recipe_cases import RECIPES
from tools.recipes_table import REPO_ROOT

DOC = REPO_ROOT / "docs" / "serving.md"
LLAMAFACTORY_DEFAULT_MIN_PIXELS = 32 * 32  # ProcessorArguments.image_min_pixels in LLaMA-Factory 0.9.5


def documented_keys() -> list[tuple[str, tuple[str, int, int]]]:
    text = DOC.read_text(encoding="utf-8")
    table = re.search(r"<!-- llamafactory serving keys.*?-->\n(.*?)<!-- end of llamafactory serving keys -->",
                      text, re.S).group(1)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    return [(pattern, (template, int(high), int(low))) for pattern, template, high, low in rows]


def served_by_llamafactory(recipe) -> bool:
    """A LLaMA-Factory training recipe whose output llamafactory-cli serves: not the custom encoder, no forgery head."""
    if recipe.trainer != "llamafactory" or recipe.is_export or "vision_encoder" in (recipe.custom or {}):
        return False
    mode = (recipe.custom or {}).get("forgery", {}).get("mode")
    return mode is None or not MODES[SEED_TASKS.get(mode, mode)].head


def test_documented_keys_are_the_recipes():
    rows = documented_keys()
    served = [r for r in RECIPES if served_by_llamafactory(r)]
    for recipe in served:
        name = recipe.rel.removeprefix("recipes/").removesuffix(".yaml")
        matching = [keys for pattern, keys in rows if fnmatch.fnmatch(name, pattern)]
        config = recipe.config
        own = (config["template"], config["image_max_pixels"],
               config.get("image_min_pixels", LLAMAFACTORY_DEFAULT_MIN_PIXELS))
        assert matching == [own], f"{DOC}: {name} needs one row {own}, found {matching}"
    for pattern, _ in rows:
        assert any(fnmatch.fnmatch(r.rel.removeprefix("recipes/").removesuffix(".yaml"), pattern) for r in served), \
            f"{DOC}: row {pattern} names no recipe llamafactory-cli serves"
