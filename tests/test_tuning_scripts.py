"""The study scripts under docs/tuning: their pure helpers."""
from pathlib import Path

import numpy as np

from tests.conftest import TUNING, load_script


def run_study_script(name: str, *args: str, bin_first: Path | None = None, output=None):
    """bash TUNING/name ARGS, with this interpreter's bin first on PATH (as if its environment were activated: the
    scripts call `python` and `diffrl`), and `bin_first` before it (stub commands). Its output is captured, or written
    to the open file `output` (a script that leaves a child running, such as a progress reporter's sleep, would hold
    a capturing pipe open until that child ends)."""
    import os
    import subprocess
    import sys

    path = [str(bin_first)] if bin_first is not None else []
    env = {**os.environ, "PATH": os.pathsep.join([*path, str(Path(sys.executable).parent), os.environ["PATH"]])}
    streams = dict(capture_output=True, text=True) if output is None else dict(stdout=output, stderr=subprocess.STDOUT)
    return subprocess.run(["bash", str(TUNING / name), *map(str, args)], timeout=120, env=env, **streams)


def test_base_level_groups_split_at_0_15_and_0_85():
    seeds = load_script(TUNING / "seeds.py")
    base = np.array([0.0, 0.14, 0.15, 0.5, 0.84, 0.85, 1.0])
    assert seeds.base_level_groups(base) == {
        "base rare (< 0.15)": [0, 1],
        "base middle": [2, 3, 4],
        "base near-solved (>= 0.85)": [5, 6],
    }


def test_spatial_unseen_twice_and_seen_draws_the_unseen_pairs_twice_as_often():
    prompts = load_script(TUNING / "tuning_prompts.py")
    union = [text for text, _ in prompts.spatial_unseen_and_seen()]
    twice = [text for text, _ in prompts.spatial_unseen_twice_and_seen()]
    unseen = {text for text, _ in prompts._as_prompts(prompts.prompt_set("spatial", "unseen-train-all"))}
    assert sorted(set(twice)) == sorted(set(union))
    assert all(twice.count(text) == 2 for text in unseen)
    share = sum(text in unseen for text in twice) / len(twice)
    assert share == 2 * 216 / (2 * 216 + 520)  # 0.45, against 216 / 736 = 0.29 in the union


def test_the_45_percent_union_is_the_library_spec_joined_with_plus():
    """Section 33's documented command names the set with `+` (no docs/tuning on the path): the same list in the
    same order, so the same seed draws the same prompts."""
    from diffrl.prompts import load_prompts

    prompts = load_script(TUNING / "tuning_prompts.py")
    spec = "shapes:spatial_unseen-train-all+shapes:spatial_unseen-train-all+shapes:spatial_train"
    assert load_prompts(spec).all() == prompts.spatial_unseen_twice_and_seen()


def test_seen_similar_vertical_is_88_vertical_similar_hue_training_prompts_and_no_held_out_pair():
    """Section 48's emphasis: similar hues (orange, red, yellow among themselves; purple and blue) above or below each
    other, taken from the pairs pretraining drew, so no spatial_unseen-val pair can be among them."""
    prompts = load_script(TUNING / "tuning_prompts.py")
    chosen = prompts.spatial_seen_similar_vertical()
    assert len(chosen) == 88
    held_out = {frozenset(spec.objects) for spec in prompts.prompt_set("spatial", "unseen-val")}
    for text, meta in chosen:
        assert meta["relation"] in ("above", "below"), text
        assert {o["color"] for o in meta["objects"]} in prompts.SIMILAR_HUES, text
    seen = {spec.text: spec for spec in prompts.prompt_set("spatial", "train")}
    assert all(frozenset(seen[text].objects) not in held_out for text, _ in chosen)
    similar = [spec for spec in seen.values() if {o.color for o in spec.objects} in prompts.SIMILAR_HUES]
    assert len(similar) == 176  # the left/right half stays out
    assert "a red triangle above an orange square" in dict(chosen)


def test_hue_drift_measures_the_fills_of_successful_images_only():
    from tests.test_shapes_scorer import red_circle_above_blue_square

    hue_drift = load_script(TUNING / "hue_drift.py")
    prompt, images = red_circle_above_blue_square()
    success, fidelity, distances = hue_drift.drift(images, [prompt.text] * 3, [prompt.to_metadata()] * 3)
    assert success == 2 / 3
    assert np.isclose(fidelity, np.mean([1.0, (np.exp(-625 / 5000) + 1.0) / 2]))
    assert distances == {"red": [0.0, 25.0], "blue": [0.0, 0.0]}


def test_soup_compute_averages_each_members_paired_change(tmp_path, monkeypatch):
    import json

    monkeypatch.syspath_prepend(str(TUNING))  # as `python docs/tuning/soup_compute.py` has it: it imports seeds.py

    def results(name, scores):
        out = tmp_path / name
        out.mkdir()
        rows = [{"prompt": p, "scores": {"shapes_success": s}} for p, s in zip(["a", "b"], scores)]
        (out / "results.json").write_text(json.dumps({"per_prompt": rows}))
        return out

    soup_compute = load_script(TUNING / "soup_compute.py")
    base = results("base", [0.5, 0.25])
    one, two = results("one", [0.75, 0.25]), results("two", [0.5, 0.75])
    label, units, changes = soup_compute.group_changes(base / "results.json", f"soup of 2|2|{one},{two}",
                                                       "shapes_success")
    assert (label, units, changes) == ("soup of 2", 2.0, [0.125, 0.25])
    other_base = results("other_base", [0.75, 0.75])
    assert soup_compute.group_changes(base / "results.json", f"one|1|{one}|{other_base}", "shapes_success")[2] == [-0.25]


def test_trajectory_average_weights_checkpoints_uniformly_or_exponentially():
    average = load_script(TUNING / "trajectory_average.py")
    assert average.snapshot_weights([1, 2, 3, 4], from_epoch=3) == [0, 0, 0.5, 0.5]
    # ema_1 = w1, ema_2 = 0.5 ema_1 + 0.5 w2, ema_3 = 0.5 ema_2 + 0.5 w3 = w1 / 4 + w2 / 4 + w3 / 2
    assert average.snapshot_weights([1, 2, 3], ema=0.5) == [0.25, 0.25, 0.5]
    assert average.lora_key("down.attn1.to_k.lora_A.default.weight") == "unet.down.attn1.to_k.lora_A.weight"
    assert (average.lora_key("text_encoder.layers.0.q_proj.lora_B.default.weight")
            == "text_encoder.layers.0.q_proj.lora_B.weight")


def test_lora_geometry_row_space_share_against_hand_computed_values():
    import torch
    geometry = load_script(TUNING / "lora_geometry.py")  # imports trajectory_average, a sibling script
    a1 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)  # rank 1 of 3 inputs: the first axis
    change = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    assert geometry.row_space_share(a1, change) == (9.0, 25.0)
    # the second run's change B2 @ A2 = [[3, 4, 0]]: 9 / 25 of it in the first run's row space, 1 / 3 by chance
    a2, b2 = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64), torch.tensor([[5.0]], dtype=torch.float64)
    first, second = {"m.lora_A": (a1, torch.ones(1, 1))}, {"m.lora_A": (a2, b2)}
    report = geometry.subspace_report(first, second, first, {"m.lora_A": (a1, b2)})
    assert report["share_in_first_row_space"] == 9 / 25
    assert abs(report["random_subspace_share"] - 1 / 3) < 1e-12
    assert report["first_A_cosine_with_start"] == 1.0
    assert abs(report["second_A_cosine_with_start"] - 0.6) < 1e-12


def test_the_study_shell_scripts_parse():
    import subprocess
    for script in sorted(TUNING.glob("*.sh")):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def test_pair_soups_jackknife_over_seeds_against_hand_computed_values():
    import pytest
    pair_soups = load_script(TUNING / "pair_soups.py")
    # seed 3 adds 0.3 to every pair it is in: the all-pairs mean is 0.9 / 6 = 0.15; leaving seed 0, 1 or 2 out gives
    # 0.6 / 3 = 0.2, leaving seed 3 out gives 0, so the variance is 3/4 * (3 * 0.05^2 + 0.15^2) = 0.0225, se 0.15
    values = {(i, j): 0.3 * (j == 3) for i in range(4) for j in range(i + 1, 4)}
    jk = pair_soups.pair_mean_jackknife(values, 4, level=0.8)
    assert jk["mean"] == pytest.approx(0.15) and jk["se"] == pytest.approx(0.15) and jk["n_pairs"] == 6
    assert jk["high"] - jk["mean"] == pytest.approx(1.637744 * 0.15, abs=1e-6)  # t_{0.9, 3} = 1.637744
    three = pair_soups.pair_mean_jackknife({(0, 1): 0.1, (0, 2): 0.2, (1, 2): 0.3}, 3)
    assert three["se"] == pytest.approx((2 / 3 * 0.02) ** 0.5)  # leave-one-out means 0.3, 0.2, 0.1
    with pytest.raises(ValueError):
        pair_soups.pair_mean_jackknife({(0, 1): 0.1, (0, 2): 0.2}, 3)  # pair (1, 2) missing


def test_pair_soups_keeps_the_two_best_scored_seeds_of_every_triple():
    pair_soups = load_script(TUNING / "pair_soups.py")
    values = {(0, 1): 0.1, (0, 2): 0.2, (0, 3): 0.3, (1, 2): 0.4, (1, 3): 0.5, (2, 3): 0.6}
    # scores rank the seeds 3 > 1 > 0 > 2, so the triples keep
    # (0,1,2) -> (0,1), (0,1,3) -> (1,3), (0,2,3) -> (0,3), (1,2,3) -> (1,3)
    assert pair_soups.best_two_of_three(values, [0.5, 0.7, 0.1, 0.9]) == [0.1, 0.5, 0.3, 0.5]


def test_lora_parts_splits_an_adapter_into_its_components_with_the_scale_folded_in(tmp_path):
    """Each part holds exactly its component's keys, B carrying alpha / rank (here 8 / 4 = 2), so that the two parts
    at scale 1 add up to the run's change; a scaled variant multiplies only its component's change."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    lora_parts = load_script(TUNING / "lora_parts.py")
    a, b = torch.randn(4, 6), torch.randn(5, 4)
    adapter = {"unet.q.lora_A.weight": a, "unet.q.lora_B.weight": b,
               "text_encoder.k.lora_A.weight": a + 1, "text_encoder.k.lora_B.weight": b - 1}
    config = {"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.r": 4, "text_encoder.lora_alpha": 8}
    (tmp_path / "run").mkdir()
    save_file(adapter, str(tmp_path / "run" / "pytorch_lora_weights.safetensors"),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    half_text = lora_parts.parse_scales("text_encoder=0.5")
    made = lora_parts.variants(tmp_path / "run", tmp_path / "parts", [*lora_parts.PARTS, half_text], [], False)
    assert sorted(made) == ["text_encoder", "unet", "unet1_text_encoder0.5"]
    unet = load_file(str(made["unet"] / "pytorch_lora_weights.safetensors"))
    text = load_file(str(made["text_encoder"] / "pytorch_lora_weights.safetensors"))
    assert sorted(unet) == ["unet.q.lora_A.weight", "unet.q.lora_B.weight"]
    assert sorted(text) == ["text_encoder.k.lora_A.weight", "text_encoder.k.lora_B.weight"]
    torch.testing.assert_close(unet["unet.q.lora_B.weight"] @ unet["unet.q.lora_A.weight"], 2 * b @ a)
    torch.testing.assert_close(text["text_encoder.k.lora_B.weight"] @ text["text_encoder.k.lora_A.weight"],
                               2 * (b - 1) @ (a + 1))
    half = load_file(str(made["unet1_text_encoder0.5"] / "pytorch_lora_weights.safetensors"))
    torch.testing.assert_close(half["unet.q.lora_B.weight"] @ half["unet.q.lora_A.weight"], 2 * b @ a)
    torch.testing.assert_close(half["text_encoder.k.lora_B.weight"] @ half["text_encoder.k.lora_A.weight"],
                               (b - 1) @ (a + 1))


def test_lora_parts_truncates_a_change_to_its_top_singular_directions():
    """diag(3, 2, 1) as B @ A of rank 3: rank 2 keeps diag(3, 2, 0); a module already of the rank stays as it is."""
    import torch

    lora_parts = load_script(TUNING / "lora_parts.py")
    a, b = torch.eye(3), torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    kept = lora_parts.truncated({"unet.q.lora_A.weight": a, "unet.q.lora_B.weight": b}, 2)
    assert kept["unet.q.lora_A.weight"].shape == (2, 3)
    torch.testing.assert_close(kept["unet.q.lora_B.weight"] @ kept["unet.q.lora_A.weight"],
                               torch.diag(torch.tensor([3.0, 2.0, 0.0])))
    same = lora_parts.truncated({"unet.q.lora_A.weight": a, "unet.q.lora_B.weight": b}, 3)
    assert same["unet.q.lora_A.weight"] is a


def test_lora_parts_shrinks_a_soup_by_where_its_members_disagree():
    """Members' changes 1 and 3 (times one matrix): mean 2, squared standard error ((1-2)^2 + (3-2)^2) / 2 = 1 per
    element, so the factor is 1 - 1 / 4 = 0.75; members that agree leave the soup as it is."""
    import torch

    lora_parts = load_script(TUNING / "lora_parts.py")
    a = torch.tensor([[1.0, 0.0]])
    member = lambda scale: {"unet.q.lora_A.weight": a, "unet.q.lora_B.weight": torch.tensor([[scale]])}  # noqa: E731
    soup = {"unet.q.lora_A.weight": torch.cat([a, a]), "unet.q.lora_B.weight": torch.tensor([[0.5, 1.5]])}
    shrunk = lora_parts.shrunk(soup, [member(1.0), member(3.0)])
    torch.testing.assert_close(shrunk["unet.q.lora_B.weight"] @ shrunk["unet.q.lora_A.weight"],
                               torch.tensor([[1.5, 0.0]]))
    agreed = lora_parts.shrunk(soup, [member(2.0), member(2.0)])
    torch.testing.assert_close(agreed["unet.q.lora_B.weight"], soup["unet.q.lora_B.weight"])


def test_average_checkpoints_means_weights_and_adam_moments_and_keeps_each_runs_own(tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file

    from diffrl.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
    average = load_script(TUNING / "average_checkpoints.py")
    runs = []
    for i, (weight, moment) in enumerate([(1.0, 2.0), (3.0, 6.0)]):
        run = tmp_path / f"run{i}"
        for epoch in (20, 30):  # an older checkpoint, which the average must leave in place
            save_checkpoint(run, epoch, {"m.lora_A": torch.full((2, 3), weight)},
                            {"param_groups": [{"lr": 1e-3, "params": [0]}],
                             "state": {0: {"step": torch.tensor(480.0), "exp_avg": torch.full((2, 3), moment),
                                           "exp_avg_sq": torch.full((2, 3), moment ** 2)}}},
                            {"torch_rng": torch.get_rng_state(), "counters": {"epoch": epoch, "run": i}}, keep=2)
        runs.append(run)
    average.main([str(r) for r in runs] + ["--epoch", "30"])
    for i, run in enumerate(runs):
        ckpt = checkpoint_path(run, 30)
        assert [p.name for p in list_checkpoints(run)] == ["epoch_00020", "epoch_00030"]
        assert load_checkpoint(ckpt)[2]["counters"] == {"epoch": 30, "run": i}  # each run's own loop state
        assert torch.equal(load_file(ckpt / "trainable.safetensors")["m.lora_A"], torch.full((2, 3), 2.0))
        slot = torch.load(ckpt / "optimizer.pt", weights_only=False)["state"][0]
        assert torch.equal(slot["exp_avg"], torch.full((2, 3), 4.0))
        assert torch.equal(slot["exp_avg_sq"], torch.full((2, 3), (4.0 + 36.0) / 2))
        assert float(slot["step"]) == 480.0
        own = load_file(run / "own_epoch_30" / "trainable.safetensors")["m.lora_A"]
        assert torch.equal(own, torch.full((2, 3), [1.0, 3.0][i]))
    with pytest.raises(SystemExit, match="different numbers of steps"):
        average.mean_optimizer([{"param_groups": [], "state": {0: {"step": torch.tensor(1.0)}}},
                                {"param_groups": [], "state": {0: {"step": torch.tensor(2.0)}}}])


def test_room_finds_a_contrast_unshown_when_either_object_never_meets_the_others_color():
    room = load_script(TUNING / "room.py")

    def pair(text, first, second):  # a spatial prompt with the metadata ShapesWorld's prompt sets carry
        return text, {"objects": [dict(zip(("color", "shape"), first)), dict(zip(("color", "shape"), second))]}

    below = pair("an orange triangle below a red square", ("orange", "triangle"), ("red", "square"))
    assert room.objects(below[1]) == [("orange", "triangle"), ("red", "square")]
    shown = room.shown_pairs([pair("a red square above an orange circle", ("red", "square"), ("orange", "circle")),
                              pair("an orange triangle above a green circle", ("orange", "triangle"),
                                   ("green", "circle"))])
    assert (("red", "square"), "orange") in shown and (("orange", "triangle"), "green") in shown
    # the red square has met orange, the orange triangle never red: unshown
    assert room.unshown_contrast(below, shown)
    both_shown = shown | {(("green", "circle"), "orange")}
    assert not room.unshown_contrast(pair("a green circle below an orange triangle", ("green", "circle"),
                                          ("orange", "triangle")), both_shown)
    # the spatial command's union leaves exactly the orange triangle beside red or yellow unshown
    held_out = room.load_prompts("shapes:spatial_unseen-val").all()
    union = room.shown_pairs(room.load_prompts(room.SPATIAL_UNION).all())
    unshown = [text for text, meta in held_out if room.unshown_contrast((text, meta), union)]
    assert len(unshown) == 6
    assert all("orange triangle" in p and ("red" in p or "yellow" in p) for p in unshown)


def test_with_settings_writes_a_branchs_settings_and_refuses_an_unknown_key(tmp_path):
    import pytest
    import yaml

    from diffrl.config import load_config, resume_conflicts
    from diffrl.errors import DiffrlError

    module = load_script(TUNING / "with_settings.py")
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  step_weight_power: 1.0\n  learning_rate: 0.002\nrun:\n  epochs: 60\n")
    before = load_config(path)
    module.with_settings(path, ["train.step_weight_power=0.5", "sample.k=6"])
    assert sorted(resume_conflicts(before, load_config(path))) == [
        "sample.k (4 -> 6)", "train.step_weight_power (1.0 -> 0.5)"]
    assert yaml.safe_load(path.read_text())["train"] == {"step_weight_power": 0.5, "learning_rate": 0.002}
    text = path.read_text()
    with pytest.raises(DiffrlError, match="unknown config key"):
        module.with_settings(path, ["train.no_such_key=1"])
    assert path.read_text() == text


def test_te_token_parts_moves_only_the_named_words_back_toward_the_base():
    import torch

    module = load_script(TUNING / "te_token_parts.py")
    words = [["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]]
    assert [module.token_kind(w, "<|startoftext|>") for w in words[0]] == [
        "start", "other words", "color", "shape", "end / padding"]
    base = torch.zeros(1, 5, 2)
    lora = torch.arange(10.0).reshape(1, 5, 2)
    mixed = module.mix_at_words(lora, base, words, {"red", "<|endoftext|>"}, keep=0.25)
    expected = lora.clone()
    expected[0, 2], expected[0, 4] = 0.25 * lora[0, 2], 0.25 * lora[0, 4]
    assert torch.equal(mixed, expected)
    assert torch.equal(module.mix_at_words(lora, base, words, {"red"}, keep=1.0), lora)


def test_spatial_sync_pair_checks_its_after_sync_settings_before_anything_runs(tmp_path):
    """A bad --after-sync key stops the script before it makes OUT or starts a run (not after the first phase)."""
    out = tmp_path / "pair"
    result = run_study_script("spatial_sync_pair.sh", out, 0, 1, 30, "--after-sync", "train.no_such_key=1")
    assert result.returncode != 0 and "unknown config key 'train.no_such_key'" in result.stderr
    assert not out.exists()


def test_spatial_hour_passes_its_settings_and_the_users_to_the_synchronized_pair(tmp_path):
    """The hour's command checks its own last-phase settings with the user's: a bad key of the user's is the one
    reported (so the command's own settings load), before OUT is made or a run starts."""
    out = tmp_path / "pair"
    result = run_study_script("spatial_hour.sh", out, 0, 1, "--after-sync", "train.no_such_key=1")
    assert result.returncode != 0 and "unknown config key 'train.no_such_key'" in result.stderr
    assert not out.exists()


def test_spatial_sync_pair_resumed_in_its_last_phase_skips_the_average_and_continues_the_pair(tmp_path):
    """Both members past the last SYNC_EPOCH (stopped in the last phase): the same command resumes both from their
    checkpoints and soups them, without averaging again (`diffrl` stubbed: the calls it gets are recorded)."""
    import yaml

    from diffrl.config import load_config
    from diffrl.run_state import write_config

    out, bin_dir, calls = tmp_path / "pair", tmp_path / "bin", tmp_path / "calls"
    for seed in (0, 1):
        run = out / f"seed{seed}"
        run.mkdir(parents=True)
        write_config(run, load_config("shapes_spatial"))
        (run / "metrics.jsonl").write_text('{"epoch": 1, "sample_s": 1.0}\n' * 45)
    bin_dir.mkdir()
    (bin_dir / "diffrl").write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    (bin_dir / "diffrl").chmod(0o755)
    with open(tmp_path / "output", "w") as output:
        result = run_study_script("spatial_sync_pair.sh", out, 0, 1, 30, "--after-sync", "train.step_weight_power=0.5",
                                  bin_first=bin_dir, output=output)
    assert result.returncode == 0, (tmp_path / "output").read_text()
    assert sorted(calls.read_text().splitlines()) == [
        f"soup {out}/seed0 {out}/seed1 --out {out}/soup", f"train --resume {out}/seed0", f"train --resume {out}/seed1"]
    for seed in (0, 1):
        assert yaml.safe_load((out / f"seed{seed}" / "config.yaml").read_text())["train"]["step_weight_power"] == 0.5


def test_spatial_sync_pair_wants_a_seed_for_each_extra_member(tmp_path):
    """`--extra-member` without an integer seed stops the script before it makes OUT or starts a run."""
    out = tmp_path / "pair"
    for bad in (["--extra-member"], ["--extra-member", "train.lr=1"]):
        result = run_study_script("spatial_sync_pair.sh", out, 0, 1, 30, *bad)
        assert result.returncode == 2 and "--extra-member needs a seed" in result.stdout
    assert not out.exists()


def test_branch_pair_copy_makes_the_copies_at_the_epoch_and_runs_nothing(tmp_path):
    """Mode copy: each run's own checkpoint at EPOCH copied, its config pointed at the copy, its metrics cut at EPOCH
    (a script counting the copy's epochs must not see the source's later ones), and no training started."""
    import json

    src, dst = tmp_path / "src", tmp_path / "dst"
    for seed in (3, 4):
        run = src / f"seed{seed}"
        (run / "own_epoch_30").mkdir(parents=True)
        (run / "own_epoch_30" / "state.pt").write_text(f"weights of {seed}")
        (run / "config.yaml").write_text(f"run:\n  out: {run}\n  seed: {seed}\n")
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "sample_s": 1.0}) + "\n" for e in range(1, 41)))
    result = run_study_script("branch_pair.sh", src, dst, 30, "copy")
    assert result.returncode == 0, result.stderr
    for seed in (3, 4):
        copy = dst / f"seed{seed}"
        assert (copy / "checkpoints" / "epoch_00030" / "state.pt").read_text() == f"weights of {seed}"
        assert f"  out: {copy}\n" in (copy / "config.yaml").read_text()
        epochs = [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 31))
        assert len((src / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()) == 40  # the source untouched
    assert not (dst / "soup").exists() and not list(dst.glob("*.log"))


def test_reseed_checkpoint_gives_a_checkpoint_a_new_runs_streams_and_keeps_the_rest(tmp_path):
    import torch

    from diffrl.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from diffrl.run_state import seeded_generators

    reseed = load_script(TUNING / "reseed_checkpoint.py")
    old = seeded_generators(12, rank=0)
    torch.randn(5, generator=old["noise_gen"])  # the copied run's streams, advanced as a run's are
    torch.rand(2, generator=old["train_gen"])
    old["prompt_rng"].random(3)
    weights = {"unet.q.lora_A.weight": torch.arange(6.0).reshape(2, 3)}
    state = {"counters": {"epoch": 30}, "prompt_rng": [old["prompt_rng"].bit_generator.state],
             "torch_rng": {"noise": [old["noise_gen"].get_state()], "train": old["train_gen"].get_state()}}
    save_checkpoint(tmp_path, 30, weights, {"state": {}, "param_groups": []}, state, keep=2)

    reseed.reseed(tmp_path, 30, 14)

    trainable, optimizer_state, new_state = load_checkpoint(checkpoint_path(tmp_path, 30))
    rng, fresh = new_state["torch_rng"], seeded_generators(14, rank=0)
    assert torch.equal(trainable["unet.q.lora_A.weight"], weights["unet.q.lora_A.weight"])
    assert optimizer_state == {"state": {}, "param_groups": []} and new_state["counters"] == {"epoch": 30}
    assert new_state["prompt_rng"] == [fresh["prompt_rng"].bit_generator.state]
    assert torch.equal(rng["noise"][0], fresh["noise_gen"].get_state())
    assert torch.equal(rng["train"], fresh["train_gen"].get_state())
    assert not torch.equal(rng["noise"][0], old["noise_gen"].get_state())
    assert not torch.equal(rng["train"], old["train_gen"].get_state())


def test_average_at_refuses_a_pair_without_its_own_weights_at_that_epoch(tmp_path):
    """average_at.sh exports the weights from before an average (own_epoch_E); a run without them stops it, with
    nothing written."""
    import subprocess

    for seed in (0, 1):
        (tmp_path / "pair" / f"seed{seed}").mkdir(parents=True)
        (tmp_path / "pair" / f"seed{seed}" / "config.yaml").write_text("run:\n  seed: 0\n")
    (tmp_path / "pair" / "seed0" / "own_epoch_30").mkdir()  # the first run has them: still nothing is written
    out = tmp_path / "at30"
    result = subprocess.run(["bash", str(TUNING / "average_at.sh"), str(tmp_path / "pair"), "30", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "seed1 has no own_epoch_30" in result.stdout
    assert not out.exists()


def test_section_59s_diagnostic_sets_are_the_held_out_pairs_and_only_they():
    """The diagnostics train on held-out pairs on purpose: every phrasing of the 27 spatial_unseen-val pairs (each
    held-out prompt among them), the 48 of the six that put the orange triangle beside red or yellow, and none of
    them a training prompt of the command."""
    prompts = load_script(TUNING / "tuning_prompts.py")
    held_out = prompts.prompt_set("spatial", "unseen-val")
    pairs = {frozenset(spec.objects) for spec in held_out}
    every = prompts.spatial_held_out_pairs_all()
    unshown = prompts.spatial_unshown_pairs_all()
    assert (len(every), len(unshown)) == (216, 48)
    assert {spec.text for spec in held_out} <= {text for text, _ in every}
    assert {text for text, _ in unshown} <= {text for text, _ in every}
    for text, meta in unshown:
        objects = {(o["color"], o["shape"]) for o in meta["objects"]}
        assert ("orange", "triangle") in objects and {c for c, _ in objects} & {"red", "yellow"}, text
    training = {text for text, _ in prompts.spatial_unseen_twice_and_seen()}
    assert not training & {text for text, _ in every}
    for _, meta in every:
        assert frozenset(prompts.ShapeObject(o["color"], o["shape"]) for o in meta["objects"]) in pairs


def test_unseen_combos_alone_are_the_four_unseen_combinations_in_single_and_counting_prompts():
    prompts = load_script(TUNING / "tuning_prompts.py")
    alone = prompts.unseen_combos_alone()
    assert len(alone) == 12
    named = {(o["color"], o["shape"]) for _, meta in alone for o in meta["objects"]}
    assert named == set(prompts.UNSEEN_COMBOS)
    assert sorted(meta["category"] for _, meta in alone) == ["counting"] * 8 + ["single"] * 4
