"""Pure parts of the inference path: sampling rule, stop-string hold-back, params validation, echo."""

from __future__ import annotations

import itertools

import pytest
import torch

from actors.llm.echo import echo_stream
from actors.llm.generate import Chunk, Completion, SamplingParams, _held_back, next_token
from actors.llm.loader import ECHO_MODEL, resolve_source
from cluster.exceptions import InputError


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert next_token(logits, SamplingParams(), None) == 1


@pytest.mark.parametrize("temperature", [1e-40, 1e-38, 9.9e-6])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    gen = torch.Generator().manual_seed(0)
    assert SamplingParams(temperature=temperature).greedy
    assert next_token(logits, SamplingParams(temperature=temperature), gen) == 1
    assert not SamplingParams(temperature=1e-5).greedy


def _nucleus_bruteforce(probs: list[float], top_p: float) -> set[int]:
    """Smallest prefix of the descending order whose mass reaches top_p (by enumeration)."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    for k in range(1, len(order) + 1):
        if sum(probs[i] for i in order[:k]) >= top_p - 1e-12:
            return set(order[:k])
    return set(order)


@pytest.mark.parametrize("seed", range(5))
def test_top_p_samples_only_from_the_nucleus(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(12, generator=g) * 2
    for top_p in (0.3, 0.6, 0.9):
        params = SamplingParams(temperature=0.7, top_p=top_p, seed=seed)
        probs = torch.softmax(logits / 0.7, dim=-1).tolist()
        allowed = _nucleus_bruteforce(probs, top_p)
        gen = torch.Generator().manual_seed(seed)
        drawn = {next_token(logits, params, gen) for _ in range(300)}
        assert drawn <= allowed
        assert max(allowed, key=lambda i: probs[i]) in drawn  # the top token is drawn


def test_sampling_is_reproducible_with_a_seed():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=7)
    a = [next_token(logits, p, g) for g in itertools.repeat(torch.Generator().manual_seed(7), 20)]
    b = [next_token(logits, p, g) for g in itertools.repeat(torch.Generator().manual_seed(7), 20)]
    assert a == b


@pytest.mark.parametrize("text, stops, hold", [
    ("The answer is Pa", ("Paris",), 2),
    ("The answer is P", ("Paris",), 1),
    ("The answer is", ("Paris",), 0),
    ("abc\ufffd", (), 1),
    ("x END", ("END!", "ND"), 3),
    ("x ENDX", ("END!",), 0),
    ("x EN", ("END!", "ND"), 2),
])
def test_held_back_tail(text, stops, hold):
    assert _held_back(text, stops) == hold


@pytest.mark.parametrize("kwargs, field", [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 5000}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"seed": -1}, "seed"),
    ({"stop": ("",)}, "stop"), ({"stop": ("x",) * 9}, "stop"), ({"stop": ("y" * 65,)}, "stop"),
])
def test_sampling_params_errors_name_the_field(kwargs, field):
    with pytest.raises(InputError, match=rf"^{field}"):
        SamplingParams(**kwargs)


def test_echo_stream_words_max_tokens_and_stop():
    events = list(echo_stream("one two three four", SamplingParams(max_tokens=3)))
    chunks = [e.text for e in events if isinstance(e, Chunk)]
    final = events[-1]
    assert chunks == ["one", " two", " three"]
    assert isinstance(final, Completion) and final.text == "one two three" and final.finish_reason == "length"
    final = list(echo_stream("one two three four", SamplingParams(stop=("ree",))))[-1]
    assert final.text == "one two th" and final.finish_reason == "stop"
    final = list(echo_stream("a b", SamplingParams()))[-1]
    assert final.text == "a b" and final.finish_reason == "stop" and final.completion_tokens == 2


def test_resolve_source_names():
    assert resolve_source("echo").kind == "echo" and resolve_source("ECHO").name == ECHO_MODEL
    assert resolve_source(None).kind == "bundled"
    with pytest.raises(InputError, match=r"model: unknown model 'smollm2-13m'.*did you mean 'smollm2-135m'"):
        resolve_source("smollm2-13m")


def test_resolve_source_local_dir(tmp_path):
    with pytest.raises(InputError, match="without config.json"):
        resolve_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    src = resolve_source(str(tmp_path))
    assert src.kind == "local" and src.path == str(tmp_path.resolve())
