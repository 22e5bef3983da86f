"""The one user-facing error type: every problem a user can cause ends in its message and an exit
code (cli.main), never a traceback. Raise a subclass with a message that names what is wrong and
how to fix it; the finished work on disk is never touched on the way out."""

from __future__ import annotations


class UserError(Exception):
    """A run-time problem the user can fix (missing model, bad data, a failed job): exit 1."""

    exit_code = 1


class UsageError(UserError):
    """A bad command line (an unknown --stage label, say): exit 2."""

    exit_code = 2


class RecipeError(UserError):
    """Every problem found in a recipe, each as 'dotted.path: what is wrong; the fix': exit 2."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the recipe:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


class StaleStageError(UserError):
    """A finished stage was made from a different recipe or different inputs: exit 3."""

    exit_code = 3
