"""The game backends (sppo_nemo/backends/game.py) and the recipe's `game` section: validation of
malformed games, the judge, sampling, exact log-probabilities, the trainer (which, given exact
win rates and the exact log Z, reproduces the multiplicative-weight update 3.1), exact metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sppo_nemo import games
from sppo_nemo import recipe as recipe_mod
from sppo_nemo.backends.game import (GameGenerator, GamePolicy, GameTrainer, MatrixJudge, load_game,
                                     load_policy, sampling_probs)
from sppo_nemo.protocols import PairRow, PointRow, Prompt, Sample, SamplingParams
from sppo_nemo.recipe import GameConfig, RecipeError, TrainerConfig

ROOT = Path(__file__).resolve().parents[2]
GAMES = ROOT / "recipes" / "games"
SHIPPED_LM = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"
RPS = [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
PLAY = Prompt("x0", "play")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def game_recipe(tmp: Path, body: str, base: Path = GAMES / "rps_sppo.yaml") -> Path:
    return write(tmp / "game.yaml", f"base: {base}\nname: game\n{body}")


def problems(path: Path, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path, list(overrides))
    return info.value.problems


def one(problem_list: list[str], prefix: str, *words: str) -> str:
    hits = [p for p in problem_list if p.startswith(prefix)]
    assert hits, f"no problem starts with {prefix!r}: {problem_list}"
    for w in words:
        assert w.lower() in hits[0].lower(), (w, hits[0])
    return hits[0]


# ------------------------------------------------------------------------- the recipe


def test_a_game_recipe_loads_with_policy_model_game(tmp_path):
    r = recipe_mod.load(game_recipe(tmp_path, ""))
    assert r.policy.model == "game"  # not anchored as a path
    assert r.game.matrix == RPS and r.game.responses == ["rock", "paper", "scissors"]
    assert recipe_mod.check(r, base_dir=GAMES) == []


def test_the_game_backends_go_together(tmp_path):
    p = problems(game_recipe(tmp_path, "judge:\n  backend: offline\n"))
    one(p, "judge.backend:", "'offline'", "judge.backend=matrix", "generation.backend=game")
    p = problems(SHIPPED_LM, ["generation.backend=game"])
    one(p, "judge.backend:", "judge.backend=matrix")
    one(p, "trainer.backend:", "trainer.backend=game")
    one(p, "game.matrix:", "preference matrix")


def test_a_game_section_without_the_game_backends_is_refused():
    p = problems(SHIPPED_LM, ["game.matrix=[[0.5,1],[0,0.5]]"])
    one(p, "game.matrix:", "set, but", "generation.backend=game")


def test_policy_model_game_needs_the_game_backends():
    one(problems(SHIPPED_LM, ["policy.model=game"]), "policy.model:", "not a directory")


@pytest.mark.parametrize("override, prefix, words", [
    ("game.matrix=[[0.5,1,0],[0,0.5,1]]", "game.matrix:", ("square",)),
    ("game.matrix=[[0.5,0.7,0],[0.4,0.5,1],[1,0,0.5]]", "game.matrix:", ("P + Pᵀ", "P[0][1] + P[1][0] = 1.1")),
    ("game.matrix=[[0.5,1.5,0],[-0.5,0.5,1],[1,0,0.5]]", "game.matrix:", ("[0, 1]",)),
    ("game.matrix=[[0.5,x,0],[1,0.5,1],[1,0,0.5]]", "game.matrix:", ("item 0", "float")),
    ("game.matrix=3", "game.matrix:", ("list of lists of floats",)),
    ("game.responses=[rock,paper]", "game.responses:", ("2 names", "3×3")),
    ("game.responses=[rock,rock,paper]", "game.responses:", ("unique",)),
    ("game.init=[0.5,0.5]", "game.init:", ("2 probabilities", "3 responses")),
    ("game.init=[0.5,0.5,0.0]", "game.init:", ("> 0",)),
    ("game.init=[0.5,0.3,0.3]", "game.init:", ("sum to 1.1",)),
    ("game.matrix_file=nowhere.json", "game.matrix_file:", ("not both",)),
    ("game.matrix=null", "game.matrix:", ("give game.matrix",)),
    ("policy.model=/nonexistent/policy", "policy.model:", ("policy.json", "policy.model=game")),
])
def test_malformed_games_are_named(tmp_path, override, prefix, words):
    one(problems(game_recipe(tmp_path, ""), [override]), prefix, *words)


def test_every_game_problem_is_reported_at_once(tmp_path):
    p = problems(game_recipe(tmp_path, ""), ["game.responses=[a,a,b]", "game.init=[1,0,0]", "judge.backend=offline"])
    assert {q.split(":")[0] for q in p} >= {"game.responses", "game.init", "judge.backend"}


def test_matrix_files_json_npy_and_their_problems(tmp_path, monkeypatch):
    np.save(tmp_path / "rps.npy", np.array(RPS))
    write(tmp_path / "named.json", json.dumps({"matrix": RPS, "responses": ["r", "p", "s"]}))
    write(tmp_path / "bad.json", "{not json")
    write(tmp_path / "keys.json", json.dumps({"P": RPS}))
    body = "game:\n  matrix: null\n  responses: null\n  matrix_file: {}\n"
    r = recipe_mod.load(game_recipe(tmp_path, body.format("rps.npy")))  # relative to the recipe file
    assert r.game.matrix_file == str(tmp_path / "rps.npy")
    assert load_game(r.game).responses == ("y0", "y1", "y2")
    assert load_game(recipe_mod.load(game_recipe(tmp_path, body.format("named.json"))).game).responses == ("r", "p", "s")
    one(problems(game_recipe(tmp_path, body.format("bad.json"))), "game.matrix_file:", "not valid JSON")
    one(problems(game_recipe(tmp_path, body.format("keys.json"))), "game.matrix_file:", "'matrix'")
    one(problems(game_recipe(tmp_path, body.format("missing.json"))), "game.matrix_file:", "does not exist")
    one(problems(game_recipe(tmp_path, body.format("named.json")), ["game.responses=[a,b,c]"]),
        "game.responses:", "differs")
    monkeypatch.chdir(tmp_path)  # an override is relative to the working directory
    r = recipe_mod.load(GAMES / "intransitive_sppo.yaml", ["game.matrix_file=rps.npy"])
    assert r.game.matrix_file == str(tmp_path / "rps.npy")


def test_a_game_policy_directory_can_start_a_run(tmp_path):
    game = load_game(GameConfig(matrix=RPS))
    GamePolicy.initial(game).save(tmp_path / "pi")
    r = recipe_mod.load(game_recipe(tmp_path, "game:\n  responses: null\n"), [f"policy.model={tmp_path / 'pi'}"])
    assert r.policy.model == str(tmp_path / "pi")


# ------------------------------------------------------------------------- the backends


def rps_game(init=(0.5, 0.3, 0.2)) -> "object":
    return load_game(GameConfig(matrix=RPS, responses=["rock", "paper", "scissors"], init=list(init)))


def test_judge_reads_the_matrix():
    judge = MatrixJudge(rps_game())
    m = judge.preference_matrix(PLAY, ["rock", "paper", "rock"])
    assert m.tolist() == [[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]]
    assert judge.compare([PLAY, PLAY], ["paper", "rock"], ["rock", "scissors"]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="not a response"):
        judge.compare([PLAY], ["lizard"], ["rock"])


def test_sampling_probabilities_temperature_and_top_p():
    logits = np.log([0.5, 0.3, 0.2])
    assert sampling_probs(logits, 1.0, 1.0) == pytest.approx([0.5, 0.3, 0.2])
    t2 = np.sqrt([0.5, 0.3, 0.2])
    assert sampling_probs(logits, 2.0, 1.0) == pytest.approx(t2 / t2.sum())  # softmax(θ/2)
    assert sampling_probs(logits, 1.0, 0.7) == pytest.approx([0.625, 0.375, 0.0])  # 0.5 + 0.3 ≥ 0.7
    assert sampling_probs(logits, 1.0, 0.5) == pytest.approx([1.0, 0.0, 0.0])


def test_generator_is_seeded_samples_pi_and_scores_exactly():
    gen = GameGenerator(rps_game(), "game")
    params = SamplingParams(1.0, 1.0, 1, seed=3, batch_size=8)
    a = gen.generate([PLAY], 4000, params)
    assert a == gen.generate([PLAY], 4000, params)  # deterministic for a seed
    texts = [s.text for s in a[0]]
    freq = np.array([texts.count(r) for r in ("rock", "paper", "scissors")]) / 4000
    assert freq == pytest.approx([0.5, 0.3, 0.2], abs=0.03)
    assert all(s.num_tokens == 1 and s.finished for s in a[0])
    lp = gen.sequence_logprobs([PLAY, PLAY], [Sample("x0", 0, "paper", 1, True), Sample("x0", 1, "scissors", 1, True)])
    assert lp == pytest.approx([math.log(0.3), math.log(0.2)])


def test_policies_are_per_context_with_a_default(tmp_path):
    game = rps_game()
    pi = GamePolicy.initial(game)
    pi.logits["other"] = np.log([0.2, 0.2, 0.6])
    pi.save(tmp_path / "p")
    back = load_policy(tmp_path / "p", game)
    assert back.probs("play") == pytest.approx([0.5, 0.3, 0.2])  # never trained: π_1
    assert back.probs("other") == pytest.approx([0.2, 0.2, 0.6])
    with pytest.raises(Exception, match="responses"):
        load_policy(tmp_path / "p", load_game(GameConfig(matrix=RPS)))  # y0..y2, not rock..


def trainer(loss_type: str, eta: float, epochs: int = 300, lr: float = 0.05) -> GameTrainer:
    cfg = TrainerConfig(backend="game", lr=lr, schedule="linear", warmup_ratio=0.0, batch_size=1024,
                        epochs=epochs, max_grad_norm=100.0)
    return GameTrainer(rps_game(), cfg, loss_type, eta, seed=0)


def test_square_loss_with_exact_win_rates_and_log_z_is_the_exact_update(tmp_path):
    """Rows y ~ π_t in proportion (π_t = [½, ¼, ¼]: 2 rock, 1 paper, 1 scissors) with the exact
    P(y ≻ π_t) and log Z_{π_t}: eq. (3.4) is realizable and its minimiser is eq. (3.1)."""
    game, eta = rps_game((0.5, 0.25, 0.25)), 0.8
    pi_t = game.init
    p = games.win_rates(game.matrix, pi_t)
    log_z = math.log(float(pi_t @ np.exp(eta * p)))
    rows = [PointRow("x", "play", r, True, float(p[i]), log_z)
            for i, r in [(0, "rock"), (0, "rock"), (1, "paper"), (2, "scissors")]]
    t = trainer("sppo", eta)
    t.game = game
    result = t.train(Path("game"), rows, tmp_path / "next")
    got = load_policy(tmp_path / "next", game).probs("play")
    assert got == pytest.approx(games.mwu_step(game.matrix, pi_t, eta), abs=1e-4)
    assert result.summary["last_loss"] < 1e-8 and result.summary["steps"] == 300


def test_square_loss_constant_log_z_is_the_update_up_to_normalisation(tmp_path):
    # with η/2 in place of log Z (eq. 3.6) the targets are not exactly realizable; for η = 0.5 the
    # fit is the exact update within 2e-3 in total variation (measured 6e-4)
    game, eta = rps_game((0.5, 0.25, 0.25)), 0.5
    p = games.win_rates(game.matrix, game.init)
    rows = [PointRow("x", "play", r, True, float(p[i])) for i, r in [(0, "rock"), (0, "rock"), (1, "paper"), (2, "scissors")]]
    t = trainer("sppo", eta)
    t.game = game
    t.train(Path("game"), rows, tmp_path / "next")
    got = load_policy(tmp_path / "next", game).probs("play")
    assert games.total_variation(got, games.mwu_step(game.matrix, game.init, eta)) < 2e-3


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "sppo_pair"])
def test_pair_losses_move_the_winner_up_and_the_loser_down(tmp_path, loss_type):
    eta = 0.5
    rows = [PairRow("x", "play", "paper", "rock", True, True, 1.0)]
    result = trainer(loss_type, eta, epochs=100).train(Path("game"), rows, tmp_path / "next")
    game = rps_game()
    after = load_policy(tmp_path / "next", game).probs("play")
    ratio = np.log(after / game.init)
    assert ratio[1] > ratio[2] > ratio[0]  # paper up, rock down most, scissors in between
    if loss_type == "ipo":  # eq. B.3 fits the β-scaled margin (β = 1/η) to 1 exactly
        assert (ratio[1] - ratio[0]) / eta == pytest.approx(1.0, abs=1e-3)
    if loss_type == "sppo_pair":  # eq. B.1, p = 1: winner log-ratio +η/2, loser −η/2, realizable here
        assert ratio[1] == pytest.approx(eta / 2, abs=5e-3) and ratio[0] == pytest.approx(-eta / 2, abs=5e-3)
    assert result.summary["last_loss"] < result.summary["first_loss"]


def test_training_touches_only_the_contexts_it_sees(tmp_path):
    game = rps_game()
    start = GamePolicy.initial(game)
    start.logits["other"] = np.log([0.1, 0.1, 0.8])
    start.save(tmp_path / "pi_t")
    rows = [PointRow("x", "play", "paper", True, 0.9)]
    trainer("sppo", 1.0, epochs=20).train(tmp_path / "pi_t", rows, tmp_path / "next")
    after = load_policy(tmp_path / "next", game)
    assert after.probs("other") == pytest.approx([0.1, 0.1, 0.8])
    assert after.probs("never seen") == pytest.approx([0.5, 0.3, 0.2])
    assert after.probs("play")[1] > 0.3


def test_exact_metrics_of_the_current_and_the_average_policy(tmp_path):
    game = rps_game()
    vertex = GamePolicy.initial(game)
    vertex.logits["play"] = np.log([1e-12, 1 - 2e-12, 1e-12])  # (almost) pure paper
    vertex.save(tmp_path / "paper")
    gen = GameGenerator(game, tmp_path / "paper")
    m = gen.exact_metrics([PLAY], ["game", tmp_path / "paper"])
    # current: pure paper, scissors beat it surely: gap 1, TV to uniform ⅔
    assert m["duality_gap"] == pytest.approx(1.0, abs=1e-9)
    assert m["nash_tv"] == pytest.approx(2 / 3, abs=1e-7)
    # average of [½, 0.3, 0.2] and [0, 1, 0] = [¼, 0.65, 0.1]: P(scissors ≻ π̄) = ¼·0 + 0.65 + ½·0.1 = 0.7
    assert m["game"]["policy_avg"]["play"] == pytest.approx([0.25, 0.65, 0.1])
    assert m["duality_gap_avg"] == pytest.approx(2 * 0.7 - 1)
    assert m["nash_tv_avg"] == pytest.approx(0.5 * (abs(0.25 - 1 / 3) + abs(0.65 - 1 / 3) + abs(0.1 - 1 / 3)))
    assert m["game"]["nash"] == pytest.approx([1 / 3] * 3) and m["game"]["policies_averaged"] == 2
