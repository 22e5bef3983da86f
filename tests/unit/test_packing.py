"""Shared-prompt packing's layout (sppo_nemo/maths/packing.py) and the plan that keeps a prompt's rows
together (training.plan_steps with groups), with hand-worked cases."""

from __future__ import annotations

import pytest

from sppo_nemo.maths.packing import allowed, group, pack
from sppo_nemo.schema.protocols import PointRow
from sppo_nemo.maths.training import plan_steps, prompt_groups

pytestmark = pytest.mark.unit


def test_pack_hand_worked():
    p = pack([5, 6], [[7, 8], [9]])
    assert p.ids == [5, 6, 7, 8, 9]
    assert p.positions == [0, 1, 2, 3, 2]
    assert p.segment == [0, 0, 1, 1, 2]
    assert p.predictors == [1, 2, 1] and p.targets == [7, 8, 9] and p.response_of == [0, 0, 1]
    assert p.n_responses == 2


def test_pack_refuses_empty_parts():
    with pytest.raises(ValueError):
        pack([], [[1]])
    with pytest.raises(ValueError):
        pack([1], [[2], []])


def test_allowed_mask_hand_worked():
    m = allowed([0, 0, 1, 2])
    assert m.tolist() == [[True, False, False, False],
                          [True, True, False, False],
                          [True, True, True, False],
                          [True, True, False, True]]


def test_each_response_token_sees_what_it_sees_unpacked():
    """For every response token: the packed keys it may see are the prompt and its own response's
    earlier tokens, with the same tokens and positions as in the unpacked sequence."""
    prompt, responses = [11, 12, 13], [[21, 22, 23], [31], [41, 42]]
    p = pack(prompt, responses)
    m = allowed(p.segment)
    for q in range(len(p.ids)):
        seen = [(p.ids[k], p.positions[k]) for k in range(len(p.ids)) if m[q, k]]
        if p.segment[q] == 0:
            unpacked = prompt[:q + 1]
        else:
            j = p.segment[q] - 1
            t = p.positions[q] - len(prompt)
            unpacked = prompt + responses[j][:t + 1]
        assert seen == [(tok, pos) for pos, tok in enumerate(unpacked)]
    # the predictor of each response token is the packed index holding its unpacked predecessor
    for i, (pred, tgt, j) in enumerate(zip(p.predictors, p.targets, p.response_of)):
        full = prompt + responses[j]
        t = full.index(tgt, len(prompt))
        assert (p.ids[pred], p.positions[pred]) == (full[t - 1], t - 1)


def test_group_packs_only_neighbours():
    a, b = [1, 2], [3]
    assert group([a, a, b, a]) == [[0, 1], [2], [3]]
    assert group([]) == []


def rows(ids):
    return [PointRow(pid, "x", f"y{i}", True, 0.5) for i, pid in enumerate(ids)]


def test_prompt_groups_hand_worked():
    assert prompt_groups(rows(["a", "b", "a", "c"])) == [[0, 2], [1], [3]]


def test_grouped_plan_keeps_a_prompts_rows_in_one_micro_batch():
    r = rows(["a", "a", "b", "b", "c", "c", "d", "d"])
    steps = plan_steps(len(r), 2, 1, 1, 3, seed=7, groups=prompt_groups(r))
    for slots in steps:
        for slot in slots:
            assert len({r[i].prompt_id for i in slot.rows}) == 1
    seen = sorted(i for slots in steps for slot in slots for i in slot.rows)
    assert seen == sorted(list(range(8)) * 3)  # every row once per epoch


def test_singleton_groups_give_exactly_the_row_shuffle():
    n = 11
    plain = plan_steps(n, 3, 2, 1, 2, seed=3)
    grouped = plan_steps(n, 3, 2, 1, 2, seed=3, groups=[[i] for i in range(n)])
    assert plain == grouped
