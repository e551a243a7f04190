"""The default update schedule (config.minibatches / inner_epochs / chunk_size): pure functions of the config."""
import pytest

from diffrl.config import (chunk_size, inner_epochs, load_config, minibatches, sampling_chunk_size,
                           validate)
from diffrl.errors import DiffrlError


@pytest.mark.parametrize("k, prompts, expected", [
    (4, 64, 16),  # the defaults: 256 samples, 16 updates of 16
    (2, 2, 1),    # 4 samples: fewer than 16, one update
    (4, 10, 2),   # 40 samples: 40 // 16 = 2 divides
    (4, 12, 3),   # 48 samples: 3 updates of 16
    (5, 7, 1),    # 35 samples: 35 // 16 = 2 does not divide 35; the largest count below that does is 1
    (3, 20, 3),   # 60 samples: 60 // 16 = 3 divides
])
def test_clipped_estimators_take_one_update_per_16_samples_in_one_pass(k, prompts, expected):
    config = load_config(overrides={"sample.k": k, "sample.prompts_per_batch": prompts})
    assert (minibatches(config), inner_epochs(config)) == (expected, 1)


def test_on_policy_estimators_take_one_update_and_explicit_values_win():
    assert minibatches(load_config(overrides={"train.algo": "reinforce"})) == 1
    config = load_config(overrides={"train.minibatches": 4, "train.inner_epochs": 2})
    assert (minibatches(config), inner_epochs(config)) == (4, 2)


def test_chunk_size_default_is_one_call_on_cpu_up_to_256_pairs_and_8_on_a_gpu_and_explicit_values_win():
    default = load_config()
    assert chunk_size(default, 144, cuda=False) == 144  # every pair of the minibatch at once
    assert chunk_size(default, 2048, cuda=False) == 256  # up to the CPU cap (a REINFORCE epoch's one minibatch)
    assert chunk_size(default, 0, cuda=False) == 1  # an empty minibatch still splits into valid chunks
    assert chunk_size(default, 144, cuda=True) == 8
    explicit = load_config(overrides={"train.chunk_size": 32})
    assert chunk_size(explicit, 144, cuda=False) == chunk_size(explicit, 144, cuda=True) == 32
    with pytest.raises(DiffrlError, match="train.chunk_size must be >= 1"):
        validate(load_config(overrides={"train.chunk_size": 0}))


def test_sampling_chunk_size_default_is_64_images_on_cpu_the_whole_batch_on_a_gpu_and_explicit_values_win():
    default = load_config().sample
    assert sampling_chunk_size(default, cuda=False) == 64  # the spatial preset's 1,024 images: 16 calls per step
    assert sampling_chunk_size(default, cuda=True) is None
    explicit = load_config(overrides={"sample.chunk_size": 100}).sample
    assert sampling_chunk_size(explicit, cuda=False) == sampling_chunk_size(explicit, cuda=True) == 100
    with pytest.raises(DiffrlError, match="sample.chunk_size must be >= 1"):
        validate(load_config(overrides={"sample.chunk_size": 0}))
