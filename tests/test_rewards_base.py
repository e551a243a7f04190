import numpy as np
import pytest

from diffrl.errors import DiffrlError
from diffrl.rewards import get_reward, parse_reward_spec, reward_names
from diffrl.rewards.simple import jpeg_size_kb


def test_reward_spec_weights_user_functions_and_remote_ports():
    parts = lambda spec: [(n, w) for n, w, _ in parse_reward_spec(spec).parts]  # noqa: E731
    assert parts("brightness:2,jpeg_compressibility") == [("brightness", 2.0), ("jpeg_compressibility", 1.0)]
    assert parts("tests.helpers:half_nan_reward") == [("tests.helpers:half_nan_reward", 1.0)]
    assert parts("tests.helpers:half_nan_reward:0.5") == [("tests.helpers:half_nan_reward", 0.5)]
    assert parts("remote:http://127.0.0.1:8000") == [("remote:http://127.0.0.1:8000", 1.0)]
    assert parts("remote:http://127.0.0.1:8000:0.5") == [("remote:http://127.0.0.1:8000", 0.5)]


def test_weighted_sum_and_components():
    images = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    combined = parse_reward_spec("brightness:2,jpeg_incompressibility:0")
    np.testing.assert_allclose(combined(images, ["a", "b"], [{}, {}]), [0.0, 2.0])
    assert set(combined.last_components) == {"brightness", "jpeg_incompressibility"}


def test_jpeg_rewards_follow_ddpo_definition():
    rng = np.random.default_rng(0)
    flat, noisy = np.full((1, 32, 32, 3), 128, np.uint8), rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert jpeg_size_kb(noisy)[0] > jpeg_size_kb(flat)[0]
    comp = get_reward("jpeg_compressibility")
    assert comp(noisy, [""], [{}])[0] == -jpeg_size_kb(noisy)[0]
    assert get_reward("jpeg_incompressibility")(noisy, [""], [{}])[0] == jpeg_size_kb(noisy)[0]


def test_unknown_and_broken_rewards_are_one_line_errors():
    with pytest.raises(DiffrlError, match="unknown reward"):
        get_reward("nope")
    with pytest.raises(DiffrlError, match="cannot import"):
        get_reward("no_such_module_xyz:fn")
    with pytest.raises(DiffrlError, match="no callable"):
        get_reward("tests.helpers:missing")
    assert {"brightness", "jpeg_compressibility", "shapes"} <= set(reward_names())


def test_held_out_reward_names_drop_weights_like_training_does():
    from diffrl.config import Config
    from diffrl.trainer import eval_reward_names

    config = Config()
    config.run.reward = "tests.helpers:half_nan_reward:0.5,brightness:2,remote:http://h:8000"
    assert eval_reward_names(config, None) == ["tests.helpers:half_nan_reward", "brightness", "remote:http://h:8000"]


def test_remote_specs_dispatch_through_a_registered_scheme_without_an_import_cycle():
    import ast
    from pathlib import Path

    import diffrl.rewards.base as base
    from diffrl.rewards.remote import RemoteReward

    reward = get_reward("remote:http://127.0.0.1:9")  # no request is made until it is called
    assert isinstance(reward, RemoteReward) and reward.url == "http://127.0.0.1:9"
    tree = ast.parse(Path(base.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("diffrl.rewards.") for m in imported), imported  # the registry imports no provider

    calls = []
    base.register_reward_scheme("echo-test")(lambda arg: calls.append(arg) or (lambda images, prompts, metadata: 0))
    try:
        get_reward("echo-test:some:arg")
        assert calls == ["some:arg"]
    finally:
        base._SCHEMES.pop("echo-test")
