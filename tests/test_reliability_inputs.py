"""Bad input through the real CLI (one line on stderr, exit 2, no traceback, nothing written), resume
compatibility, checkpoint-directory safety, and property-based tests of the validators (docs/reliability.md).
Nothing here loads a pipeline except the corrupt-model and unreadable-checkpoint cases (which fail fast).
"""
import errno
import json
import os
import string

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffrl.checkpoint as ckpt
from diffrl.cli import main
from diffrl.config import Config, RESUMABLE_KEYS, apply_mapping, describe_fields, load_config, read_config_file, \
    resume_conflicts, validate, with_resolved_defaults
from diffrl.errors import DiffrlError, RunHalted
from diffrl.prompts import read_prompt_file
from diffrl.runlog import RunLogger
from diffrl.trainer import write_config

FAST = ["--reward", "brightness", "--k", "2", "--epochs", "1", "--set", "sample.num_steps=2", "--set", "train.min_noise_std=0",
        "--set", "sample.prompts_per_batch=2", "--set", "run.eval_prompts=none", "--set", "run.progress=false"]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("diffrl: error: ") and "Traceback" not in err, err
    assert message in err, err


# ---------------------------------------------------------------- config files

CONFIG_FILES = [  # (file name, content, what the one line must say)
    ("unknown_key.toml", "[train]\nnope = 1\n", "unknown config key 'train.nope'"),
    ("unknown_section.toml", "[trian]\nalgo = 'ppo'\n", "unknown config section 'trian'"),
    ("no_section.toml", "algo = 'ppo'\n", "not inside a section"),
    ("section_value.toml", "train = 3\n", "config section 'train' must be a table"),
    ("wrong_type_int.toml", "[sample]\nk = 'four'\n", "config key 'sample.k': expected int"),
    ("wrong_type_bool.toml", "[run]\ntensorboard = 'yes'\n", "config key 'run.tensorboard': expected true/false"),
    ("wrong_type_list.toml", "[model]\nlora_target_modules = 'to_q'\n", "config key 'model.lora_target_modules'"),
    ("huge_float.toml", f"[train]\nlearning_rate = {10**400}\n", "config key 'train.learning_rate'"),
    ("range_steps.toml", "[sample]\nnum_steps = 0\n", "sample.num_steps must be >= 1"),
    ("range_fraction.toml", "[train]\ntimestep_fraction = 1.5\n", "train.timestep_fraction must be in (0, 1]"),
    ("range_eta.toml", "[sample]\neta = nan\n", "sample.eta must be > 0"),
    ("range_skips.toml", "[train]\nmax_consecutive_skips = 0\n", "train.max_consecutive_skips must be >= 1"),
    ("early_stop.toml", "[run]\nearly_stop_drop = 0.1\neval_prompts = 'none'\n", "run.early_stop_drop needs held-out"),
    ("syntax.toml", "[train\nalgo = \n", "cannot parse config file"),
    ("syntax.yaml", "train: [unclosed\n", "cannot parse config file"),
    ("list.yaml", "- train\n- sample\n", "must hold a table of sections"),
    ("number_key.yaml", "train:\n  1: 2\n", "config key 1 in section 'train' must be a string"),
    ("latin1.toml", "[run]\nprompts = 'caf\xe9'\n".encode("latin-1"), "cannot parse config file"),
]


@pytest.mark.parametrize("name, content, message", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_malformed_config_file_names_the_problem(name, content, message, tiny_pipeline_dir, prompt_file, tmp_path,
                                                 capsys):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "run"
    code, err = run_cli(["train", "--config", str(path), "--model", str(tiny_pipeline_dir), "--prompts",
                         str(prompt_file), "--out", str(out)], capsys)
    assert_one_line(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--config", "/no/such/file.toml"], "config file not found"),
    (["--set", "train.algo"], "--set expects section.key=value"),
    (["--set", "run.early_stop_drop=-1"], "run.early_stop_drop must be > 0"),
    (["--set", "sample.eta=0"], "sample.eta must be > 0 (eta = 0 is deterministic and has no log-probability)"),
    (["--set", "train.minibatches=3"], "does not divide"),
])
def test_bad_config_on_the_command_line(argv, message, tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file), "--out", str(out),
                         *argv], capsys)
    assert_one_line(code, err, message)
    assert not out.exists()


# ---------------------------------------------------------------- model, prompts, output directory


def test_model_directory_problems(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    no_index = tmp_path / "no_index"
    no_index.mkdir()
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"not a pipeline")
    broken = tmp_path / "broken"  # model_index.json present, components missing or unreadable
    broken.mkdir()
    (broken / "model_index.json").write_text((tiny_pipeline_dir / "model_index.json").read_text())
    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text("{ not json")
    for model, message in [(no_index, "no model_index.json"), (a_file, "model directory not found"),
                           (broken, "cannot load pipeline")]:
        out = tmp_path / f"run_{model.name}"
        code, err = run_cli(["train", "--model", str(model), "--prompts", str(prompt_file), "--out", str(out), *FAST],
                            capsys)
        assert_one_line(code, err, message)
        assert not out.exists(), model  # the run directory is created only once the pipeline has loaded


def test_prompt_file_problems(tiny_pipeline_dir, tmp_path, capsys):
    cases = {"comments_only.txt": (b"# nothing\n   \n\t\n", "has no prompts"),
             "latin1.txt": ("a caf\xe9 on a table\n".encode("latin-1"), "is not UTF-8 text"),
             "binary.txt": (bytes(range(256)), "is not UTF-8 text")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "a_directory").mkdir()
    cases["a_directory"] = (None, "prompt file not found")
    for name, (_, message) in cases.items():
        out = tmp_path / f"run_{name}"
        code, err = run_cli(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(tmp_path / name),
                             "--out", str(out), *FAST], capsys)
        assert_one_line(code, err, message)
        assert not out.exists()


def test_blank_lines_and_comments_in_a_prompt_file_are_skipped(tmp_path):
    # The shared prompt_file fixture (used by every run in the suite) also has a blank line and a comment.
    path = tmp_path / "p.txt"
    path.write_bytes("\n  a red circle  \r\n\n# a comment\n\ta blue square\n\n".encode())
    assert read_prompt_file(path) == [("a red circle", {}), ("a blue square", {})]


def test_output_directory_under_a_regular_file(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = run_cli(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
                         "--out", str(blocker / "run"), *FAST], capsys)
    assert_one_line(code, err, "is not writable")
    assert blocker.read_text() == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (covered by the regular-file case)")
def test_output_directory_without_write_permission(tiny_pipeline_dir, prompt_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, err = run_cli(["train", "--model", str(tiny_pipeline_dir), "--prompts", str(prompt_file),
                         "--out", str(locked / "run"), *FAST], capsys)
    assert_one_line(code, err, "is not writable")


# ---------------------------------------------------------------- resume compatibility


@pytest.fixture
def saved_run(tiny_pipeline_dir, prompt_file, tmp_path):
    """A run directory as a run leaves it (config.yaml, metrics, one checkpoint); no pipeline needed."""
    out = tmp_path / "run"
    config = load_config(None, {"model.pretrained": str(tiny_pipeline_dir), "run.prompts": str(prompt_file),
                                "run.reward": "brightness", "sample.k": "2", "run.out": str(out)})
    write_config(out, config)
    (out / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    ckpt.save_checkpoint(out, 1, {"w": torch.ones(2)}, {}, {"counters": {"epoch": 1}, "torch_rng": {}}, keep=2)
    return out


def snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, key", [
    (["--algo", "ppo"], "train.algo"),
    (["--k", "4"], "sample.k"),
    (["--seed", "1"], "run.seed"),
    (["--reward", "brightness:2"], "run.reward"),
    (["--set", "sample.num_steps=5"], "sample.num_steps"),
    (["--set", "sample.eta=0.5"], "sample.eta"),
    (["--set", "sample.guidance_scale=7"], "sample.guidance_scale"),
    (["--set", "model.lora_rank=8"], "model.lora_rank"),
    (["--set", "train.learning_rate=1e-5"], "train.learning_rate"),
    (["--b2"], "b2.enabled"),
])
def test_resume_with_settings_that_change_the_math_is_refused(argv, key, saved_run, capsys):
    before = snapshot(saved_run)
    code, err = run_cli(["train", "--resume", str(saved_run), *argv], capsys)
    assert_one_line(code, err, f"cannot resume {saved_run} with different settings: {key} (")
    assert snapshot(saved_run) == before


def test_resume_names_every_differing_key_and_refuses_other_models_and_prompts(saved_run, tmp_path, prompt_file,
                                                                                tiny_pipeline_dir, capsys):
    other_prompts = tmp_path / "other.txt"
    other_prompts.write_text("a dog\n")
    other_model = tmp_path / "same_model_other_path"
    other_model.symlink_to(tiny_pipeline_dir)
    code, err = run_cli(["train", "--resume", str(saved_run), "--prompts", str(other_prompts), "--model",
                         str(other_model), "--set", "run.epochs=50"], capsys)
    assert_one_line(code, err, "model.pretrained")
    assert "run.prompts" in err and "run.epochs" not in err.split("(only")[0]


def test_resume_conflicts_allows_exactly_the_whitelist():
    base = with_resolved_defaults(Config())  # as a run directory records it
    for key, default, _ in describe_fields():
        section, name = key.split(".")
        changed = with_resolved_defaults(Config())
        value = getattr(getattr(changed, section), name)
        new = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + "x",
               list: lambda v: v + ["x"], type(None): lambda v: "x" if key != "run.threads" else 2}[type(value)](value)
        setattr(getattr(changed, section), name, new)
        conflicts = resume_conflicts(base, changed)
        assert (conflicts == []) == (key in RESUMABLE_KEYS), (key, conflicts)


def test_resume_when_every_checkpoint_is_unreadable(saved_run, capsys):
    (ckpt.list_checkpoints(saved_run)[-1] / "trainable.safetensors").write_bytes(b"garbage")
    code, err = run_cli(["train", "--resume", str(saved_run)], capsys)
    assert code == 2 and "no checkpoint of" in err and "can be read" in err and "Traceback" not in err
    assert err.splitlines()[-1].startswith("diffrl: error: ")  # after one warning line per damaged checkpoint


# ---------------------------------------------------------------- checkpoint directory


def fake_state(epoch):
    return {"counters": {"epoch": epoch}, "torch_rng": {"train": torch.zeros(3)}}


def test_keep_newest_n_and_ignore_leftovers(tmp_path):
    for epoch in range(1, 5):
        ckpt.save_checkpoint(tmp_path, epoch, {"w": torch.full((2,), float(epoch))}, {}, fake_state(epoch), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch_00003", "epoch_00004"]
    root = tmp_path / "checkpoints"
    (root / "epoch_00009.tmp").mkdir()  # a killed save
    (root / "epoch_00009.tmp" / "state.json").write_text("{}")
    (root / "epoch_00008").mkdir()  # a directory without its state.json is not complete
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch_00003", "epoch_00004"]
    ckpt.save_checkpoint(tmp_path, 5, {"w": torch.ones(2)}, {}, fake_state(5), keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["epoch_00005", "epoch_00008"]  # leftovers gone, newest kept
    weights, _, state = ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path)[-1])
    assert state["counters"] == {"epoch": 5} and torch.equal(weights["w"], torch.ones(2))


@pytest.mark.parametrize("target", ["save_file", "torch.save", "state.json"])
def test_full_disk_at_each_file_keeps_the_previous_checkpoint(target, tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(2)}, {}, fake_state(1), keep=1)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "save_file":
        monkeypatch.setattr(ckpt, "save_file", no_space)
    elif target == "torch.save":
        monkeypatch.setattr(ckpt.torch, "save", no_space)
    else:
        monkeypatch.setattr(ckpt.Path, "write_text", no_space)
    with pytest.raises(RunHalted, match="No space left on device; newest valid checkpoint: .*epoch_00001"):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(2)}, {}, fake_state(2), keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch_00001"]
    assert torch.equal(ckpt.load_checkpoint(ckpt.list_checkpoints(tmp_path)[-1])[0]["w"], torch.ones(2))


def test_load_latest_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    assert ckpt.load_latest(tmp_path) is None
    for epoch in (1, 2):
        ckpt.save_checkpoint(tmp_path, epoch, {"w": torch.full((1,), float(epoch))}, {}, fake_state(epoch), keep=2)
    (ckpt.checkpoint_path(tmp_path, 2) / "rng.pt").write_bytes(b"\0" * 10)
    path, (weights, _, _) = ckpt.load_latest(tmp_path)
    assert path.name == "epoch_00001" and float(weights["w"]) == 1.0
    assert "epoch_00002 is unreadable" in capsys.readouterr().err


def test_export_replacement_failure_keeps_the_old_export(tmp_path):
    def write(directory):
        directory.mkdir()
        (directory / "weights").write_text("v1")

    ckpt.replace_dir(tmp_path / "lora", write)

    def fail(directory):
        directory.mkdir()
        (directory / "weights").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunHalted, match="No space left"):
        ckpt.replace_dir(tmp_path / "lora", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["lora"] and (tmp_path / "lora" / "weights").read_text() == "v1"


def test_metrics_line_torn_by_a_kill_is_dropped_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "rew')
    RunLogger(tmp_path, tensorboard=False, resume_step=2).close()
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


# ---------------------------------------------------------------- property-based: validators never crash

KEYS = [key for key, _, _ in describe_fields()]
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
junk_keys = st.one_of(st.sampled_from(SECTIONS + ["train.", ".algo", "a.b.c", "train.algo.x", "", "."]),
                      st.text(string.ascii_letters + "._", max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**400, max_value=10**400),
                    st.floats(), st.text(max_size=16),
                    st.sampled_from(["none", "null", "true", "0", "1e-3", "nan", "-inf", "ppo", "loop", "3", "2.5"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
flat_mappings = st.dictionaries(st.one_of(st.sampled_from(KEYS), junk_keys), values, max_size=8)
nested_mappings = st.dictionaries(st.one_of(st.sampled_from(SECTIONS), junk_keys),
                                  st.one_of(st.dictionaries(st.one_of(st.sampled_from([k.split(".")[1] for k in KEYS]),
                                                                      junk_keys), values, max_size=5), values),
                                  max_size=4)


def accepts_or_refuses(action) -> None:
    try:
        action()
    except DiffrlError:
        pass


@settings(max_examples=200, deadline=None)
@given(mapping=st.one_of(flat_mappings, nested_mappings), from_string=st.booleans())
def test_random_config_mappings_are_accepted_or_refused_with_diffrl_error(mapping, from_string):
    def apply():
        validate(apply_mapping(Config(), mapping, from_string=from_string))

    accepts_or_refuses(apply)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), nested_mappings.map(lambda m: yaml.safe_dump(m).encode())),
       suffix=st.sampled_from([".toml", ".yaml", ".yml", ".cfg"]))
def test_random_config_files_are_accepted_or_refused_with_diffrl_error(data, suffix, tmp_path):
    path = tmp_path / f"config{suffix}"
    path.write_bytes(data)
    accepts_or_refuses(lambda: validate(apply_mapping(Config(), read_config_file(path))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_random_prompt_files_are_accepted_or_refused_with_diffrl_error(data, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    try:
        prompts = read_prompt_file(path)
    except DiffrlError:
        return
    assert prompts and all(text and text == text.strip() and not text.startswith("#") and meta == {}
                           for text, meta in prompts)
