"""A recipe from YAML to checked, typed values: the YAML reader (``recipe_yaml``), loading with
``base:`` and overrides (``recipe``), the general and the launch checks (``recipe_checks``,
``launch_checks``), ``precision: auto`` (``precision``) and the cost estimate (``estimate``)."""
