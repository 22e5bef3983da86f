"""The game file of the game backends: reading and checking it (:func:`load_game`), and the
recipe's game keys (:func:`check`). ``game.py`` holds the policy and the backends and re-exports these."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo.maths import games
from sppo_nemo.schema.config import GAME_BACKENDS, GAME_POLICY, Recipe, resolve_path
from sppo_nemo.schema.errors import UserError

POLICY_FILE = "policy.json"
GAME_KEYS = ("matrix", "responses", "init")  # of a .json game file; only "matrix" is required
HINT = " ".join(f"{k}={v}" for k, v in GAME_BACKENDS.items())


class GameError(UserError):
    """A game file or game policy directory that cannot be used; one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Game:
    matrix: np.ndarray  # P[i, j] = P(y_i ≻ y_j | x)
    responses: tuple[str, ...]
    init: np.ndarray  # π_1, probabilities

    @property
    def n(self) -> int:
        return len(self.responses)

    def __post_init__(self):
        object.__setattr__(self, "_index", {r: i for i, r in enumerate(self.responses)})

    def index(self, response: str) -> int:
        try:
            return self._index[response]
        except KeyError:
            raise ValueError(f"{response!r} is not a response of this game ({', '.join(self.responses)})") from None

    def identity(self) -> dict:
        """What a stage fingerprint records of the game: its content, not the file it came from."""
        digest = hashlib.sha256(json.dumps(self.matrix.tolist()).encode()).hexdigest()[:16]
        return {"matrix": digest, "responses": list(self.responses), "init": [float(x) for x in self.init]}


def _read_game_file(path: Path) -> dict:
    """The raw content of a game file as {"matrix": ..., "responses": ..., "init": ...}."""
    where = f"game: {path}"
    if not path.is_file():
        raise GameError([f"{where} does not exist (or is not a file); give a game file (.json with "
                         f"\"matrix\", or .npy)"])
    if path.suffix == ".npy":
        try:
            return {"matrix": np.load(path, allow_pickle=False).tolist()}
        except (ValueError, OSError) as exc:
            raise GameError([f"{where} is not a readable .npy array ({exc}); save it with numpy.save"]) from None
    if path.suffix != ".json":
        raise GameError([f"{where}: unknown format {path.suffix!r}; use .json (matrix, responses, init) "
                         f"or .npy (the matrix alone)"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GameError([f"{where} is not valid JSON ({exc}); fix the file"]) from None
    if not isinstance(data, dict) or "matrix" not in data:
        got = f"keys {sorted(data)}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise GameError([f"{where} must hold an object with 'matrix' (and optionally 'responses', 'init'); "
                         f"got {got}"])
    unknown = sorted(set(data) - set(GAME_KEYS))
    if unknown:
        raise GameError([f"{where}: unknown key(s) {unknown}; a game file holds only {', '.join(GAME_KEYS)}"])
    return data


def _names_problem(names, n: int) -> str | None:
    if not (isinstance(names, list) and all(isinstance(x, str) and x.strip() for x in names)):
        return "\"responses\" must be a list of non-empty names"
    if len(names) != n:
        return f"\"responses\" has {len(names)} names for a {n}×{n} matrix; give one name per row"
    if len(set(names)) != n:
        return f"\"responses\": names must be unique, got {names}"
    return None


def _init_problem(init, n: int) -> str | None:
    try:
        pi = np.asarray(init, dtype=np.float64)
    except (TypeError, ValueError):
        return "\"init\" must be a list of probabilities, one per response"
    if pi.shape != (n,):
        return f"\"init\" has {pi.size} probabilities for {n} responses; give one per response"
    if not np.all(pi > 0):
        return "\"init\": probabilities must be > 0 (the policy is a softmax; a zero can never grow)"
    if abs(pi.sum() - 1) > 1e-6:
        return f"\"init\": probabilities sum to {pi.sum():.6g}; they must sum to 1"
    return None


def load_game(path: str | Path) -> Game:
    """The game of a game file (a recipe's ``game:``); GameError lists every problem, each 'game: …'.

    ``.json``: ``{"matrix": [[...]], "responses": [...] (default y0 … y{n-1}), "init": [...]
    (π_1, default uniform)}``; ``.npy``: the matrix alone.
    """
    path = Path(path)
    data = _read_game_file(path)
    bad = games.matrix_problems(data["matrix"])
    if bad:
        raise GameError([f"game: {path}: matrix {b}" for b in bad])
    matrix = np.asarray(data["matrix"], dtype=np.float64)
    n = len(matrix)
    names = data.get("responses")
    names = [f"y{i}" for i in range(n)] if names is None else names
    init = data.get("init")
    problems = [p for p in (_names_problem(names, n), None if init is None else _init_problem(init, n)) if p]
    if problems:
        raise GameError([f"game: {path}: {p}" for p in problems])
    pi = games.uniform(n) if init is None else np.asarray(init, dtype=np.float64)
    return Game(matrix, tuple(names), pi / pi.sum())


def check(r: Recipe, chosen: list[str], base_dir: Path) -> list[str]:
    """The recipe's game keys: all three game backends together, a valid game file, policy.model."""
    p = [f"{dotted}: {getattr(getattr(r, dotted.split('.')[0]), dotted.split('.')[1])!r} does not work "
         f"with the game backends {', '.join(chosen)}; set {HINT}"
         for dotted in GAME_BACKENDS if dotted not in chosen]
    if r.game is None:
        p.append("game: not set; the game backends need a game file, e.g. game: rps.json (a .json with "
                 "\"matrix\" P[i][j] = P(y_i ≻ y_j), optional \"responses\" and \"init\"; or a .npy matrix)")
    else:
        try:
            load_game(resolve_path(r.game, base_dir))
        except GameError as exc:
            p += exc.problems
    if r.evaluation.prompts is not None:
        p.append("evaluation.prompts: the game backends play a finite game, whose prompts are its own; "
                 "set evaluation.prompts=null")
    if r.evaluation.lm_eval.enabled:
        p.append("evaluation.lm_eval.enabled: the game backends' policies are distributions over a finite set of "
                 "responses, not language models lm-eval can score; set evaluation.lm_eval.enabled=false")
    if r.evaluation.alpaca_eval.enabled:
        p.append("evaluation.alpaca_eval.enabled: the game backends' responses are names in a finite game, with its "
                 "own exact evaluation; set evaluation.alpaca_eval.enabled=false")
    model = r.policy.model
    if model != GAME_POLICY and not (resolve_path(model, base_dir) / POLICY_FILE).is_file():
        p.append(f"policy.model: {model!r} is not a game policy directory (with {POLICY_FILE}); with the game "
                 f"backends use policy.model={GAME_POLICY} (π_1 = the game file's init) or a policy/ folder "
                 f"of a game run")
    return p
