"""The game backends (sppo_nemo/backends/game.py) and the recipe's `game:` file: every problem of a
game file named, the judge, sampling, exact log-probabilities, the trainer (which, given exact win
rates and the exact log Z, reproduces the multiplicative-weight update 3.1, and whose steps are
torch.optim.AdamW's with clip_grad_norm_), exact metrics."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sppo_nemo.maths import games
from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.backends.game_file import Game, GameError, load_game
from sppo_nemo.backends.game import GameGenerator, GamePolicy, GameTrainer, MatrixJudge, load_policy, sampling_probs
from sppo_nemo.schema.config import LossType, TrainerConfig, choices
from sppo_nemo.schema.errors import RecipeError, UserError
from sppo_nemo.schema.protocols import PairRow, PointRow, Prompt, Sample, SamplingParams
from sppo_nemo.formats.rows import write_rows
from sppo_nemo.maths.training import lr_factor

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GAMES = ROOT / "recipes" / "games"
SHIPPED_LM = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"
RPS = [[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]]
NAMES = ("rock", "paper", "scissors")
PLAY = Prompt("x0", "play")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def game_recipe(tmp: Path, body: str = "", base: Path = GAMES / "rps_sppo.yaml") -> Path:
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
    r = recipe_mod.load(game_recipe(tmp_path))
    assert r.policy.model == "game"  # not anchored as a path
    assert r.game == str(GAMES / "rps.json")  # relative to the recipe that writes it, made absolute
    game = load_game(r.game)
    assert game.matrix.tolist() == RPS and game.responses == NAMES and game.init == pytest.approx([0.5, 0.3, 0.2])
    assert recipe_mod.check(r, base_dir=GAMES) == []


def test_a_child_replaces_the_game_with_one_key():
    r = recipe_mod.load(GAMES / "transitive_sppo.yaml")
    assert r.game == str(GAMES / "transitive.json")
    game = load_game(r.game)
    assert game.responses == ("worst", "poor", "good", "best") and game.init == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert "game:" in (GAMES / "transitive_sppo.yaml").read_text()
    assert "null" not in (GAMES / "transitive_sppo.yaml").read_text()  # nothing of the base's game to undo


def test_shipped_game_recipes_follow_one_naming_pattern_and_load():
    """recipes/games/<game>_<loss>.yaml, each game in <game>.json with its names and π_1 inside."""
    losses = set(choices(LossType))
    recipes = sorted(GAMES.glob("*.yaml"))
    assert len(recipes) == 9
    for path in recipes:
        game, _, loss = path.stem.rpartition("_")
        assert loss in losses, path.name
        r = recipe_mod.load(path)
        assert r.name == path.stem and r.loss.type == loss
        assert r.game == str(GAMES / f"{game}.json"), path.name
        data = json.loads((GAMES / f"{game}.json").read_text())
        assert set(data) == {"matrix", "responses", "init"}, game
        assert load_game(r.game).responses == tuple(data["responses"])


def test_the_game_backends_go_together(tmp_path):
    p = problems(game_recipe(tmp_path, "judge:\n  backend: offline\n"))
    one(p, "judge.backend:", "'offline'", "judge.backend=matrix", "generation.backend=game")
    p = problems(SHIPPED_LM, ["generation.backend=game"])
    one(p, "judge.backend:", "judge.backend=matrix")
    one(p, "trainer.backend:", "trainer.backend=game")
    one(p, "game:", "not set", "game file")


def test_a_game_file_without_the_game_backends_is_refused():
    p = problems(SHIPPED_LM, [f"game={GAMES / 'rps.json'}"])
    one(p, "game:", "set, but", "generation.backend=game")


def test_policy_model_game_needs_the_game_backends():
    one(problems(SHIPPED_LM, ["policy.model=game"]), "policy.model:", "not a directory")


def rps_with(**changes) -> str:
    return json.dumps({"matrix": RPS, "responses": list(NAMES), "init": [0.5, 0.3, 0.2], **changes})


@pytest.mark.parametrize("name, content, words", [
    ("square.json", rps_with(matrix=[[0.5, 1, 0], [0, 0.5, 1]]), ("matrix", "square")),
    ("scalar.json", rps_with(matrix=3), ("matrix", "square")),
    ("sum.json", rps_with(matrix=[[0.5, 0.7, 0], [0.4, 0.5, 1], [1, 0, 0.5]]), ("P + Pᵀ", "P[0][1] + P[1][0] = 1.1")),
    ("range.json", rps_with(matrix=[[0.5, 1.5, 0], [-0.5, 0.5, 1], [1, 0, 0.5]]), ("[0, 1]",)),
    ("text.json", rps_with(matrix=[[0.5, "x", 0], [1, 0.5, 1], [1, 0, 0.5]]), ("numbers",)),
    ("count.json", rps_with(responses=["rock", "paper"]), ("\"responses\"", "2 names", "3×3")),
    ("twice.json", rps_with(responses=["rock", "rock", "paper"]), ("\"responses\"", "unique")),
    ("empty.json", rps_with(responses=["rock", "", "paper"]), ("\"responses\"", "non-empty names")),
    ("short.json", rps_with(init=[0.5, 0.5]), ("\"init\"", "2 probabilities", "3 responses")),
    ("zero.json", rps_with(init=[0.5, 0.5, 0.0]), ("\"init\"", "> 0")),
    ("over.json", rps_with(init=[0.5, 0.3, 0.3]), ("\"init\"", "sum to 1.1")),
    ("word.json", rps_with(init=["a", "b", "c"]), ("\"init\"", "list of probabilities")),
    ("nomatrix.json", json.dumps({"P": RPS}), ("'matrix'", "['P']")),
    ("extra.json", rps_with(names=["a", "b", "c"]), ("unknown key", "['names']", "matrix, responses, init")),
    ("list.json", json.dumps(RPS), ("must hold an object", "a list")),
    ("broken.json", "{not json", ("not valid JSON",)),
    ("game.txt", rps_with(), ("unknown format", "'.txt'", ".npy")),
    ("garbage.npy", "not an array", ("not a readable .npy",)),
])
def test_every_problem_of_a_game_file_is_named(tmp_path, name, content, words):
    path = write(tmp_path / name, content)
    msg = one(problems(game_recipe(tmp_path), [f"game={path}"]), "game:", name, *words)
    with pytest.raises(GameError) as info:  # the same message from the loader, a user error
        load_game(path)
    assert isinstance(info.value, UserError) and msg in info.value.problems


def test_a_missing_game_file_and_an_unset_one_are_named(tmp_path):
    one(problems(game_recipe(tmp_path), ["game=nowhere.json"]), "game:", "nowhere.json", "does not exist")
    one(problems(game_recipe(tmp_path), ["game=null"]), "game:", "not set", ".json")
    one(problems(game_recipe(tmp_path), ["policy.model=/nonexistent/policy"]), "policy.model:", "policy.json",
        "policy.model=game")


def test_every_game_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path / "bad.json", rps_with(responses=["a", "a", "b"], init=[1, 0, 0]))
    p = problems(game_recipe(tmp_path), [f"game={path}", "judge.backend=offline"])
    one(p, "game:", "unique")
    assert len([q for q in p if q.startswith("game:")]) == 2 and any(q.startswith("judge.backend:") for q in p)


def test_game_files_json_npy_and_where_relative_paths_point(tmp_path, monkeypatch):
    np.save(tmp_path / "rps.npy", np.array(RPS))
    r = recipe_mod.load(game_recipe(tmp_path, "game: rps.npy\n"))  # relative to the recipe file
    assert r.game == str(tmp_path / "rps.npy")
    game = load_game(r.game)  # a .npy holds the matrix alone: names y0.., uniform π_1
    assert game.responses == ("y0", "y1", "y2") and game.init == pytest.approx([1 / 3] * 3)
    write(tmp_path / "matrix_only.json", json.dumps({"matrix": RPS, "responses": None}))
    assert load_game(tmp_path / "matrix_only.json").responses == ("y0", "y1", "y2")
    monkeypatch.chdir(tmp_path)  # an override is relative to the working directory
    r = recipe_mod.load(GAMES / "intransitive_sppo.yaml", ["game=rps.npy"])
    assert r.game == str(tmp_path / "rps.npy")


def test_a_game_policy_directory_can_start_a_run(tmp_path):
    GamePolicy.initial(load_game(GAMES / "rps.json")).save(tmp_path / "pi")
    r = recipe_mod.load(game_recipe(tmp_path), [f"policy.model={tmp_path / 'pi'}"])
    assert r.policy.model == str(tmp_path / "pi")


def test_the_identity_is_the_content_not_the_file(tmp_path):
    copy = write(tmp_path / "copy.json", (GAMES / "rps.json").read_text())
    assert load_game(copy).identity() == load_game(GAMES / "rps.json").identity()
    other = write(tmp_path / "other.json", rps_with(init=[0.4, 0.4, 0.2]))
    assert load_game(other).identity()["init"] == pytest.approx([0.4, 0.4, 0.2])


# ------------------------------------------------------------------------- the backends


def rps_game(init=(0.5, 0.3, 0.2), names=NAMES) -> Game:
    return Game(np.array(RPS), tuple(names), np.array(init, dtype=np.float64))


def test_judge_reads_the_matrix():
    judge = MatrixJudge(rps_game())
    seen = []
    m = judge.preference_matrices([PLAY, PLAY], [["rock", "paper", "rock"], ["scissors", "paper"]], seen.append)
    assert [x.tolist() for x in m] == [[[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]], [[0.5, 1.0], [0.0, 0.5]]]
    assert seen == [2] and judge.name == "matrix"
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
    freq = np.array([texts.count(r) for r in NAMES]) / 4000
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
    with pytest.raises(GameError, match="responses"):
        load_policy(tmp_path / "p", rps_game(names=("y0", "y1", "y2")))
    with pytest.raises(GameError, match="cannot read the game policy"):
        load_policy(tmp_path / "nowhere", game)


def trainer(loss_type: str, eta: float, epochs: int = 300, lr: float = 0.05, game: Game | None = None) -> GameTrainer:
    cfg = TrainerConfig(backend="game", lr=lr, schedule="linear", warmup_ratio=0.0, batch_size=1024,
                        epochs=epochs, max_grad_norm=100.0)
    return GameTrainer(game or rps_game(), cfg, loss_type, eta, seed=0)


def rows_file(tmp: Path, rows) -> Path:
    write_rows(tmp / "rows.jsonl", rows)
    return tmp / "rows.jsonl"


def test_square_loss_with_exact_win_rates_and_log_z_is_the_exact_update(tmp_path):
    """Rows y ~ π_t in proportion (π_t = [½, ¼, ¼]: 2 rock, 1 paper, 1 scissors) with the exact
    P(y ≻ π_t) and log Z_{π_t}: eq. (3.4) is realizable and its minimiser is eq. (3.1)."""
    game, eta = rps_game((0.5, 0.25, 0.25)), 0.8
    pi_t = game.init
    p = games.win_rates(game.matrix, pi_t)
    log_z = math.log(float(pi_t @ np.exp(eta * p)))
    rows = [PointRow("x", "play", r, True, float(p[i]), log_z)
            for i, r in [(0, "rock"), (0, "rock"), (1, "paper"), (2, "scissors")]]
    result = trainer("sppo", eta, game=game).train(Path("game"), rows_file(tmp_path, rows), tmp_path / "next")
    got = load_policy(tmp_path / "next", game).probs("play")
    assert got == pytest.approx(games.mwu_step(game.matrix, pi_t, eta), abs=1e-4)
    assert result.summary["last_loss"] < 1e-8 and result.summary["steps"] == 300
    assert result.summary["rows"] == 4 and result.summary["contexts"] == 1


def test_square_loss_constant_log_z_is_the_update_up_to_normalisation(tmp_path):
    # with η/2 in place of log Z (eq. 3.6) the targets are not exactly realizable; for η = 0.5 the
    # fit is the exact update within 2e-3 in total variation (measured 6e-4)
    game, eta = rps_game((0.5, 0.25, 0.25)), 0.5
    p = games.win_rates(game.matrix, game.init)
    rows = [PointRow("x", "play", r, True, float(p[i]))
            for i, r in [(0, "rock"), (0, "rock"), (1, "paper"), (2, "scissors")]]
    trainer("sppo", eta, game=game).train(Path("game"), rows_file(tmp_path, rows), tmp_path / "next")
    got = load_policy(tmp_path / "next", game).probs("play")
    assert games.total_variation(got, games.mwu_step(game.matrix, game.init, eta)) < 2e-3


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "sppo_pair"])
def test_pair_losses_move_the_winner_up_and_the_loser_down(tmp_path, loss_type):
    eta = 0.5
    rows = [PairRow("x", "play", "paper", "rock", True, True, 1.0)]
    result = trainer(loss_type, eta, epochs=100).train(Path("game"), rows_file(tmp_path, rows), tmp_path / "next")
    game = rps_game()
    after = load_policy(tmp_path / "next", game).probs("play")
    ratio = np.log(after / game.init)
    assert ratio[1] > ratio[2] > ratio[0]  # paper up, rock down most, scissors in between
    if loss_type == "ipo":  # eq. B.3 fits the β-scaled margin (β = 1/η) to 1 exactly
        assert (ratio[1] - ratio[0]) / eta == pytest.approx(1.0, abs=1e-3)
    if loss_type == "sppo_pair":  # eq. B.1, p = 1: winner log-ratio +η/2, loser −η/2, realizable here
        assert ratio[1] == pytest.approx(eta / 2, abs=5e-3) and ratio[0] == pytest.approx(-eta / 2, abs=5e-3)
    assert result.summary["last_loss"] < result.summary["first_loss"]


def test_a_single_diverging_step_of_the_game_trainer_commits_nothing(tmp_path):
    from sppo_nemo.maths.training import TrainingDiverged

    rows = [PointRow("x", "play", "paper", True, 0.9), PointRow("x", "play", "rock", True, 0.1)]
    t = trainer("sppo", 1.0, epochs=1, lr=1e300)  # one step: logits ±1e300, the loss after it is inf
    with pytest.raises(TrainingDiverged, match=r"^training diverged at optimizer step 0 of 1: after its update the "
                                               r"loss on the 2 fixed probe rows is inf"):
        t.train(Path("game"), rows_file(tmp_path, rows), tmp_path / "next")
    assert not (tmp_path / "next").exists()


def test_training_touches_only_the_contexts_it_sees(tmp_path):
    game = rps_game()
    start = GamePolicy.initial(game)
    start.logits["other"] = np.log([0.1, 0.1, 0.8])
    start.save(tmp_path / "pi_t")
    rows = [PointRow("x", "play", "paper", True, 0.9)]
    trainer("sppo", 1.0, epochs=20).train(tmp_path / "pi_t", rows_file(tmp_path, rows), tmp_path / "next")
    after = load_policy(tmp_path / "next", game)
    assert after.probs("other") == pytest.approx([0.1, 0.1, 0.8])
    assert after.probs("never seen") == pytest.approx([0.5, 0.3, 0.2])
    assert after.probs("play")[1] > 0.3


def test_the_trainer_steps_are_torch_adamw_and_clip_grad_norm(tmp_path):
    """The game trainer against a plain loop written here: each epoch a random.Random(seed) shuffle
    cut into micro-batches of 2, three micro-batches a step (the last step short), eq. (3.7) on the
    float64 logits of two contexts, clip_grad_norm_ (engaged: max norm 0.05), torch.optim.AdamW
    with weight decay, cosine schedule after warm-up. Steps, learning rates, gradient norms, losses
    and the trained logits agree to 1e-12."""
    rng = random.Random(3)
    rows = [PointRow(f"x{i}", rng.choice("ab"), rng.choice(NAMES), True, rng.random()) for i in range(11)]
    cfg = TrainerConfig(backend="game", lr=0.2, schedule="cosine", warmup_ratio=0.25, batch_size=2, grad_accum=3,
                        epochs=3, max_grad_norm=0.05, weight_decay=0.1)
    game, eta, seed = rps_game(), 0.7, 5
    result = GameTrainer(game, cfg, "sppo", eta, seed).train(Path("game"), rows_file(tmp_path, rows), tmp_path / "next")

    contexts = ["a", "b"]
    theta = torch.nn.Parameter(torch.tensor(np.log([game.init, game.init]), dtype=torch.float64))

    def logp(i: int) -> torch.Tensor:
        return torch.log_softmax(theta[contexts.index(rows[i].prompt)], dim=-1)[game.index(rows[i].response)]

    with torch.no_grad():
        reference = [logp(i) for i in range(len(rows))]
    order_rng, micro = random.Random(seed), []
    for _ in range(cfg.epochs):
        order = list(range(len(rows)))
        order_rng.shuffle(order)
        micro += [order[b:b + 2] for b in range(0, len(rows), 2)]
    steps = [micro[s:s + 3] for s in range(0, len(micro), 3)]  # 18 micro-batches → 6 steps
    warmup = round(0.25 * len(steps))
    opt = torch.optim.AdamW([theta], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    expected = []
    for k, step in enumerate(steps):
        lr = cfg.lr * lr_factor(k, len(steps), warmup, "cosine")
        opt.param_groups[0]["lr"] = lr
        seen = []
        for mb in step:
            pol = torch.stack([logp(i) for i in mb]) - torch.stack([reference[i] for i in mb])
            p = torch.tensor([rows[i].win_prob for i in mb], dtype=torch.float64)
            loss = (pol - eta * (p - 0.5)) ** 2  # eq. (3.7), log Z = η/2
            (loss.mean() / 3).backward()
            seen.append(loss.detach())
        norm = float(torch.nn.utils.clip_grad_norm_([theta], cfg.max_grad_norm))
        opt.step()
        opt.zero_grad()
        expected.append({"lr": lr, "grad_norm": norm, "loss": float(torch.cat(seen).mean())})

    assert len(result.metrics) == len(expected) == 6
    assert sum(e["grad_norm"] > cfg.max_grad_norm for e in expected) >= 3  # the clip matters
    for got, want in zip(result.metrics, expected):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    trained = load_policy(tmp_path / "next", game).logits
    for i, ctx in enumerate(contexts):
        assert trained[ctx] == pytest.approx(theta.detach()[i].numpy(), rel=1e-12, abs=1e-15)


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
