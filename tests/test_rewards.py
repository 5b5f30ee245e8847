"""GRPO rewards (genrec.rewards): hand-computed values, registry, picklability, TRL's calling convention."""

import doctest
import math
import pickle

import numpy as np
import pytest

import genrec.rewards
from genrec.rewards import (
    REWARDS,
    completion_codes,
    get_interest_reward,
    get_prefix_reward,
    get_reward,
    get_valid_reward,
    group_ranks,
    hit_reward,
    interest_reward_from_interests,
    rank_reward,
    sid_rewards,
)
from genrec.rewards import interest as interest_module

T = "<a_1><b_2><c_3>"  # the target of most cases


def call(reward, completions, targets=None, prompts=None, **columns):
    """Call a reward exactly as TRL 1.16 does (grpo_trainer.py:1626): keywords only, extra columns and the
    trainer extras included."""
    n = len(completions)
    prompts = prompts if prompts is not None else ["p"] * n
    if targets is not None:
        columns["target_sid"] = targets if isinstance(targets, list) else [targets] * n
    return reward(prompts=prompts, completions=completions, completion_ids=[[0]] * n, trainer_state=object(),
                  log_extra=lambda *a: None, log_metric=lambda *a: None, some_column=["x"] * n, **columns)


@pytest.mark.parametrize("text, codes", [
    ("<a_1><b_2><c_3>", [1, 2, 3]),  # plain SID
    ("<a_1><b_2><c_3>[SEP]", [1, 2, 3]),  # trailing EOS text
    ("<a_1><b_2><c_3>[SEP][PAD][PAD]", [1, 2, 3]),  # EOS then pads
    ("  <a_1> <b_2> <c_3>\n", [1, 2, 3]),  # spaces a decoder may put between added tokens
    ("<a_1><b_2><c_3><a_4><b_5>", [1, 2, 3]),  # ran on into a second SID: keep the first
    ("<a_1><b_2>junk<c_3>", [1, 2]),  # the leading run only
    ("<a_1><c_3>", [1]),  # level b missing: stops before c
    ("<b_2><c_3>", None),  # does not start at level a
    ("hello", None),  # no SID at all
    ("", None),  # empty completion
    ([{"role": "assistant", "content": "<a_7>[SEP]"}], [7]),  # conversational completion
])
def test_completion_codes(text, codes):
    assert completion_codes(text) == codes


@pytest.mark.parametrize("completion, expected", [
    (T, 1.0),  # exact hit
    (T + "[SEP]", 1.0),  # hit followed by EOS text
    ("<a_1><b_2><c_4>", 0.0),  # last level wrong
    ("<a_1><b_2>", 0.0),  # a prefix of the target is not the target
    ("<a_1><b_2><c_3><d_0>", 0.0),  # a longer SID that extends the target is another item
    ("garbage", 0.0),  # not a SID
])
def test_hit(completion, expected):
    assert call(hit_reward, [completion], T) == [expected]


# a_i = 1/log2(i+2): a_0 = 1, a_1 = 0.63093, a_2 = 0.5, a_3 = 0.43068; sum over 4 ranks = 2.56161
A = [1 / math.log2(i + 2) for i in range(4)]
S4 = sum(A)


@pytest.mark.parametrize("completions, columns, expected", [
    # group of 4, hit at rank 2: wrong items get -a_i / 2.56161 = -0.39038, -0.24630, (hit 0), -0.16813
    (["<a_0>", "<a_1>", T, "<a_3>"], {}, [-A[0] / S4, -A[1] / S4, 0.0, -A[3] / S4]),
    # no hit in the group: 0 everywhere
    (["<a_0>", "<a_1>", "<a_2>", "<a_3>"], {}, [0.0] * 4),
    # hit at rank 0: the three others are penalised by their own ranks
    ([T, "<a_1>", "<a_2>", "<a_3>"], {}, [0.0, -A[1] / S4, -A[2] / S4, -A[3] / S4]),
    # explicit beam_rank overrides position: the list is in reverse rank order, hit at rank 2 (position 1)
    (["<a_3>", T, "<a_1>", "<a_0>"], {"beam_rank": [3, 2, 1, 0]}, None),
    # two groups of 2 with different prompts: sum over 2 ranks = 1.63093; group 2 has no hit
    ([T, "<a_9>", "<a_8>", "<a_9>"], {"prompts": ["p", "p", "q", "q"]}, [0.0, -A[1] / (A[0] + A[1]), 0.0, 0.0]),
])
def test_rank(completions, columns, expected):
    got = call(rank_reward, completions, T, **columns)
    if expected is None:  # the beam_rank case: same values as the first case, listed by position
        expected = [-A[3] / S4, 0.0, -A[1] / S4, -A[0] / S4]
    assert got == pytest.approx(expected)


def test_rank_hand_values():
    # the group of 4 with the hit at rank 2, as plain numbers
    got = call(rank_reward, ["<a_0>", "<a_1>", T, "<a_3>"], T)
    assert got == pytest.approx([-0.390380, -0.246302, 0.0, -0.168128], abs=1e-6)


def test_rank_same_prompt_back_to_back_split_by_beam_rank():
    # two groups with the same prompt, told apart by beam_rank restarting at 0; only the first has a hit
    got = call(rank_reward, [T, "<a_1>", "<a_2>", "<a_3>"], T, beam_rank=[0, 1, 0, 1])
    assert got == pytest.approx([0.0, -A[1] / (A[0] + A[1]), 0.0, 0.0])


@pytest.mark.parametrize("prompts, beam_rank, groups", [
    (["p", "p", "q", "q"], None, [[(0, 0), (1, 1)], [(2, 0), (3, 1)]]),  # two prompts, positional ranks
    (["p", "p", "p"], [1, 0, 1], [[(0, 1), (1, 0)], [(2, 1)]]),  # any order; a repeated rank starts a new group
    (["p", "p", "p", "p"], [0, 1, 0, 1], [[(0, 0), (1, 1)], [(2, 0), (3, 1)]]),  # same prompt twice in a row
    (["p", "p"], [0, 2], [[(0, 0), (1, 2)]]),  # ranks may skip (a beam dropped)
    ([[{"role": "user", "content": "h"}]] * 2, None, [[(0, 0), (1, 1)]]),  # conversational prompts compare equal
])
def test_group_ranks(prompts, beam_rank, groups):
    assert group_ranks(prompts, beam_rank) == groups


@pytest.mark.parametrize("curve, hit_credit, completion, expected", [
    ("linear", 1.0, T, 1.0),  # hit: hit_credit
    ("linear", 1.0, "<a_1><b_2><c_9>", 2 / 3),  # 2 of 3 levels
    ("linear", 1.0, "<a_1><b_9><c_3>", 1 / 3),  # only the leading run counts: c matches but b does not
    ("linear", 1.0, "<a_9><b_2><c_3>", 0.0),  # first level wrong: nothing
    ("linear", 1.0, "<a_1><b_2><c_3><d_0>", 2 / 3),  # extends the target: capped at L-1 = 2 levels, below a hit
    ("linear", 1.0, "nonsense", 0.0),  # not a SID
    ("sqrt", 1.0, "<a_1><b_9><c_9>", 0.5),  # sqrt(1/4)
    ("sqrt", 1.0, "<a_1><b_2><c_9>", math.sqrt(0.5)),  # sqrt(2/4) = 0.7071
    ("sqrt", 1.0, T, 1.0),  # hit: 1.0 (sqrt(3/4) = 0.866 would be the curve's own value)
    ("sqrt", 0.0, T, 0.0),  # hit_credit 0: shapes wrong items only
    ("sqrt", 0.0, "<a_1><b_2><c_9>", math.sqrt(0.5)),  # ... and wrong items keep their credit
    ([0.1, 0.4], 1.0, "<a_1><b_9><c_9>", 0.1),  # explicit credits: 1 level
    ([0.1, 0.4], 1.0, "<a_1><b_2><c_9>", 0.4),  # explicit credits: 2 levels
    ([0.1], 1.0, "<a_1><b_2><c_9>", 0.1),  # past the list's end: its last entry
])
def test_prefix(curve, hit_credit, completion, expected):
    f = get_prefix_reward(curve, hit_credit=hit_credit)
    assert call(f, [completion], T) == [pytest.approx(expected)]


def test_prefix_sqrt_table():
    # GREAM's table for L = 3: .5 / .707 / .866 for 1 / 2 / 3 matched levels
    f = get_prefix_reward("sqrt")
    assert [round(f.credit(m, 3), 3) for m in (0, 1, 2, 3)] == [0.0, 0.5, 0.707, 0.866]


@pytest.mark.parametrize("kwargs, match", [
    ({"curve": "cubic"}, "unknown; use one of"),  # unknown curve name
    ({"curve": []}, "non-empty list"),  # empty credit list
    ({"curve": [0.5, 0.2]}, "decreases"),  # credits must not decrease
    ({"curve": ["a"]}, "non-empty list of numbers"),  # not numbers
    ({"hit_credit": "1"}, "hit_credit should be a number"),  # bad hit credit
])
def test_prefix_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_prefix_reward(**kwargs)


VECS = {
    "<a_1>": np.array([1.0, 0.0]),  # the target's interests
    "<a_2>": np.array([0.6, 0.8]),  # cos 0.6 with the target
    "<a_3>": np.array([-1.0, 0.0]),  # cos -1: opposite interests
    "<a_4>": np.array([3.0, 4.0]),  # not normalised: same direction as <a_2>, so cos 0.6 too
}
QUALITY = {"<a_1>": 0.8}


@pytest.mark.parametrize("kwargs, completion, expected", [
    ({}, "<a_1>", 0.4),  # hit: hit_bonus 0.5 * q 0.8
    ({}, "<a_2>", 0.6),  # wrong: cos 0.6
    ({}, "<a_4>", 0.6),  # vectors are normalised on the way in
    ({}, "<a_3>", 0.0),  # negative cosine clipped to 0
    ({}, "<a_5>", 0.0),  # generated item has no interests vector
    ({}, "junk", 0.0),  # not a SID
    ({"floor": 0.5}, "<a_2>", 0.2),  # (0.6 - 0.5) / (1 - 0.5)
    ({"floor": 0.7}, "<a_2>", 0.0),  # below the floor
    ({"weight": 2.0, "floor": 0.5}, "<a_2>", 0.4),  # 2 * 0.2
    ({"hit_bonus": 1.0}, "<a_1>", 0.8),  # 1.0 * 0.8
])
def test_interest(kwargs, completion, expected):
    f = get_interest_reward(VECS, QUALITY, **kwargs)
    assert call(f, [completion], "<a_1>") == [pytest.approx(expected)]


def test_interest_target_without_vector_or_quality():
    f = get_interest_reward(VECS, QUALITY)
    # target <a_9> has no vector: a wrong item gets 0; a hit on it has no quality: 0
    assert call(f, ["<a_2>", "<a_9>"], "<a_9>") == [0.0, 0.0]


@pytest.mark.parametrize("args, match", [
    (({"<a_1>": np.zeros(2)}, {}), "zero or not finite"),  # a zero vector
    (({"<a_1>": np.ones(2), "<a_2>": np.ones(3)}, {}), "different lengths"),  # mixed dimensions
    (({"item7": np.ones(2)}, {}), "keys must be SID strings"),  # keyed by item id instead of SID
    (({}, {"<a_1>": 1.5}), r"must lie in \[0, 1\]"),  # quality out of range
])
def test_interest_bad_data(args, match):
    with pytest.raises(ValueError, match=match):
        get_interest_reward(*args)


def test_interest_bad_floor():
    with pytest.raises(ValueError, match=r"floor in \[0, 1\)"):
        get_interest_reward(VECS, QUALITY, floor=1.0)


def test_interest_reward_from_interests():
    records = {
        "i1": {"interests": [{"text": "hiking", "label": 1, "score": 0.9}, {"text": "spam", "label": 0}],
               "quality": 0.8},
        "i2": {"interests": [{"text": "hiking", "label": 1}, {"text": "camping", "label": 1}], "quality": 0.5},
        "i3": {"interests": [{"text": "spam", "label": 0}], "quality": 0.1},  # no positive interest: no vector
        "gone": {"interests": [{"text": "x", "label": 1}], "quality": 1.0},  # not in the SID map: skipped
    }
    sids = {"i1": [1], "i2": [2], "i3": "<a_3>"}
    table = {"hiking": [1.0, 0.0], "camping": [0.0, 1.0], "spam": [0.0, 0.0]}
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([table[t] for t in texts])

    f = interest_reward_from_interests(records, sids, encode, hit_bonus=1.0)
    assert calls == [["camping", "hiking"]]  # positives only, each text once, one call
    assert sorted(f.vectors) == ["<a_1>", "<a_2>"]
    # i2 = mean(hiking, camping) normalised = (.7071, .7071): cos with i1 = 0.7071; a hit on i1 = 1.0 * 0.8
    assert call(f, ["<a_2>", "<a_1>", "<a_3>"], "<a_1>") == pytest.approx([math.sqrt(0.5), 0.8, 0.0])
    assert f.quality == {"<a_1>": 0.8, "<a_2>": 0.5, "<a_3>": 0.1}


def test_interest_encoder_shape_checked():
    records = {"i1": {"interests": [{"text": "a", "label": 1}], "quality": 0.5}}
    with pytest.raises(ValueError, match="one row per text"):
        interest_reward_from_interests(records, {"i1": [1]}, lambda texts: np.ones(4))


@pytest.mark.parametrize("completion, expected", [
    (T, 0.0),  # catalog SID
    (T + "[SEP][PAD]", 0.0),  # catalog SID with EOS and pads
    ("<a_1><b_2><c_4>", -1.0),  # well-formed but not in the catalog
    ("<a_1><b_2>", -1.0),  # a prefix of a catalog SID is not an item
    ("no sid here", -1.0),  # not a SID at all
])
def test_valid(completion, expected):
    f = get_valid_reward({T, "<a_5><b_6><c_7>"})
    assert call(f, [completion]) == [expected]


def test_valid_custom_penalty_and_bad_catalog():
    assert call(get_valid_reward([T], penalty=-0.5), ["x"]) == [-0.5]  # any iterable; custom penalty
    with pytest.raises(ValueError, match="non-empty set of SID strings"):
        get_valid_reward(set())
    with pytest.raises(ValueError, match="pass SID strings"):
        get_valid_reward({"item42"})


@pytest.mark.parametrize("reward", [hit_reward, rank_reward, get_prefix_reward(), get_interest_reward({}, {})])
def test_missing_target_column_says_what_to_add(reward):
    with pytest.raises(ValueError, match="needs a `target_sid` dataset column"):
        reward(prompts=["p"], completions=[T])


def test_bad_target_and_beam_rank_columns():
    with pytest.raises(ValueError, match="SID strings like"):
        call(hit_reward, [T], "item42")  # an item id where a SID is expected
    with pytest.raises(ValueError, match="one SID string per completion"):
        hit_reward(prompts=["p", "p"], completions=[T, T], target_sid=T)  # not a column
    with pytest.raises(ValueError, match="one non-negative int per completion"):
        call(rank_reward, [T, T], T, beam_rank=[0])


@pytest.mark.parametrize("name, params, expected", [
    ("hit", {}, hit_reward),  # plain function by name
    ("rank", {}, rank_reward),
    ("genrec.rewards:rank_reward", {}, rank_reward),  # dotted path with colon
    ("genrec.rewards.sid_rewards.hit_reward", {}, hit_reward),  # dotted path with dots only
])
def test_get_reward_functions(name, params, expected):
    assert get_reward(name, **params) is expected


@pytest.mark.parametrize("name, params, cls, log_name", [
    ("prefix", {"curve": "sqrt"}, sid_rewards.PrefixReward, "prefix_reward"),  # factory by name
    ("valid", {"catalog_sids": {T}}, sid_rewards.ValidReward, "valid_reward"),
    ("interest", {"item_vectors": VECS, "quality": QUALITY}, interest_module.InterestReward, "interest_reward"),
    ("genrec.rewards:get_prefix_reward", {}, sid_rewards.PrefixReward, "prefix_reward"),  # factory by dotted path
])
def test_get_reward_factories(name, params, cls, log_name):
    f = get_reward(name, **params)
    assert isinstance(f, cls)
    assert f.__name__ == log_name  # TRL logs rewards by __name__


@pytest.mark.parametrize("name, params, match", [
    ("nope", {}, r"unknown reward 'nope'; choose one of \['hit', 'interest', 'prefix', 'rank', 'valid'\]"),
    ("genrec.rewards:nope", {}, "unknown reward"),  # module exists, function does not
    ("no_such_pkg.mod:f", {}, "unknown reward"),  # module does not exist
    ("hit", {"weight": 2}, "takes no parameters"),  # a plain reward given parameters
    ("prefix", {"curvature": "sqrt"}, "its parameters are"),  # a factory given a wrong parameter
    ("valid", {}, "catalog_sids"),  # a factory missing a required parameter
    ("genrec.rewards:REWARDS", {}, "not a reward function"),  # a dotted path to something else
])
def test_get_reward_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_reward(name, **params)


def test_registry_holds_every_reward():
    assert sorted(REWARDS) == ["hit", "interest", "prefix", "rank", "valid"]


@pytest.mark.parametrize("reward", [
    get_prefix_reward("sqrt", hit_credit=0.0),
    get_prefix_reward([0.2, 0.5]),
    get_valid_reward({T}, penalty=-2.0),
    get_interest_reward(VECS, QUALITY, floor=0.5),
    hit_reward,
    rank_reward,
])
def test_rewards_pickle(reward):
    clone = pickle.loads(pickle.dumps(reward))
    completions = [T, "<a_1><b_2><c_9>", "<a_1>", "<a_2>"]
    assert clone.__name__ == reward.__name__
    assert call(clone, completions, T) == call(reward, completions, T)


def test_trl_convention_batch():
    # a TRL batch of 2 prompts x 2 generations: columns repeated per completion, extras passed, unknown ones ignored
    completions = [T + "[SEP]", "<a_1><b_2><c_9>[SEP]", "<a_5><b_6><c_7>", "<a_5><b_6><c_8>"]
    targets = [T, T, "<a_5><b_6><c_7>", "<a_5><b_6><c_7>"]
    prompts = ["u1", "u1", "u2", "u2"]
    assert call(hit_reward, completions, targets, prompts) == [1.0, 0.0, 1.0, 0.0]
    # each group: the hit at rank 0, the miss at rank 1 gets -a_1 / (a_0 + a_1) = -0.38685
    r = -A[1] / (A[0] + A[1])
    assert call(rank_reward, completions, targets, prompts) == pytest.approx([0.0, r, 0.0, r])
    assert call(get_prefix_reward(), completions, targets, prompts) == pytest.approx([1.0, 2 / 3, 1.0, 2 / 3])


def test_docstring_examples():
    for module in (genrec.rewards, sid_rewards, interest_module):
        result = doctest.testmod(module, extraglobs={"np": np})
        assert result.failed == 0, module.__name__
