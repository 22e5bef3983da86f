"""YAML as a recipe author means it (PyYAML's SafeLoader with three YAML 1.1 surprises removed):
a key given twice in one mapping is an error (PyYAML keeps the last silently); `1e-6` is a float
(YAML 1.1 wants `1.0e-6`); `1:00:00` is the text a Slurm time limit means, not the base-60 integer
3600 (YAML 1.2 dropped base 60). Overrides on the command line go through OmegaConf, whose
parser keeps base 60: ``SEXAGESIMAL`` tells the recipe loader to keep such a value as written."""

from __future__ import annotations

import re

import yaml


class RecipeLoader(yaml.SafeLoader):
    """YAML as a recipe author means it: a key given twice in one mapping is an error (PyYAML keeps
    the last silently), and `1e-6` is a float as in YAML 1.2 (YAML 1.1 wants `1.0e-6`)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                    f"keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads `1:00:00` as the base-60 integer 3600; a recipe means a Slurm time limit (YAML
# 1.2 dropped base 60). Integers here are decimal (and 0x / 0o), as in YAML 1.2.
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789"))
SEXAGESIMAL = re.compile(r"^\d+(?::\d+)+$")
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)
