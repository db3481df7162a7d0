import pytest
import torch

from nbutils import runtime


@pytest.mark.parametrize("name", runtime.PROFILES)
def test_pick_follows_the_profile(monkeypatch, name):
    monkeypatch.setenv("NBUTILS_PROFILE", name)
    assert runtime.profile() == name
    assert runtime.pick(smoke="s", cpu="c", gpu="g") == name[0]


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("NBUTILS_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, cpu, gpu") as err:
        runtime.profile()
    assert "'fast'" in str(err.value)


def test_default_profile_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("NBUTILS_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.profile() == "gpu"


def test_pick_needs_every_profile():
    with pytest.raises(TypeError):
        runtime.pick(smoke=1, cpu=2)


def test_seed_everything_makes_draws_repeat():
    g = runtime.seed_everything(3)
    a = torch.randn(4), torch.rand(2, generator=g)
    g = runtime.seed_everything(3)
    b = torch.randn(4), torch.rand(2, generator=g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="non-negative"):
        runtime.seed_everything(-1)


def test_device_override(monkeypatch):
    monkeypatch.setenv("NBUTILS_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_banner_names_profile_and_expected_time(monkeypatch, capsys):
    monkeypatch.setenv("NBUTILS_PROFILE", "smoke")
    text = runtime.banner({"smoke": "30 s"})
    assert "smoke" in text and "30 s" in text
    assert "smoke" in capsys.readouterr().out


def test_cache_and_checkpoint_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NBUTILS_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("NBUTILS_CKPT", raising=False)
    assert runtime.cache_dir() == tmp_path / "data"
    assert runtime.checkpoint_root() == tmp_path / "data" / "checkpoints"
    monkeypatch.setenv("NBUTILS_CKPT", str(tmp_path / "ckpt"))
    assert runtime.checkpoint_root() == tmp_path / "ckpt"
    monkeypatch.delenv("NBUTILS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir() == tmp_path / "xdg" / "nbutils"


def test_timer_measures_the_block_and_timed_returns_the_result():
    import time

    with runtime.Timer("cpu") as timer:
        time.sleep(0.02)
    assert 0.02 <= timer.seconds < 1.0
    out, seconds = runtime.timed(lambda: 41 + 1, "cpu")
    assert out == 42 and 0 <= seconds < 1.0


def test_git_commit_sees_changes_anywhere_in_the_checkout_but_results(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("NBUTILS_COMMIT", raising=False)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    for folder in ("book", "nbutils", "results"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f.txt").write_text("a")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    clean = runtime.git_commit(tmp_path / "book")
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "results" / "f.txt").write_text("b")  # what a results run writes
    assert runtime.git_commit(tmp_path / "book") == clean
    (tmp_path / "nbutils" / "f.txt").write_text("b")  # code outside the notebook's folder
    assert runtime.git_commit(tmp_path / "book") == clean + "+dirty"


def _is_flushed() -> bool:
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a subnormal float32
    return (tiny * 1.0).item() == 0.0


@pytest.fixture
def subnormals_restored():
    yield
    torch.set_flush_denormal(False)  # the process default


def test_seed_everything_flushes_subnormals_unless_told_to_keep_them(
    monkeypatch, subnormals_restored
):
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    torch.set_flush_denormal(False)
    assert not _is_flushed()
    runtime.seed_everything(0)
    assert _is_flushed()
    monkeypatch.setenv("NBUTILS_SUBNORMALS", "keep")
    runtime.seed_everything(0)
    assert not _is_flushed()
    monkeypatch.setenv("NBUTILS_SUBNORMALS", "sometimes")
    with pytest.raises(ValueError, match="'flush' or 'keep', got 'sometimes'"):
        runtime.flush_subnormals()


def test_flushing_subnormals_changes_training_only_at_float32_rounding(subnormals_restored):
    """Weights start subnormal (read as zero when flushed); training ends in the same place."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    from nbutils.autoregressive import nll_nats_per_image
    from nbutils.data import Batches
    from nbutils.made import MADE
    from nbutils.train import fit

    def train(flush):
        runtime.flush_subnormals(flush)
        torch.manual_seed(0)
        model = MADE(8, hidden=(16,), num_masks=2)
        with torch.no_grad():  # put subnormal numbers into play
            model.layers[0].weight[:, :4] = 3e-39
        assert _is_flushed() == flush
        data = torch.bernoulli(torch.full((64, 8), 0.3))
        fit(model, nll_nats_per_image, Batches(data, batch_size=16, seed=1), steps=30, lr=1e-2)
        return model.state_dict()

    torch.manual_seed(5)
    kept = train(False)
    torch.manual_seed(5)
    flushed = train(True)
    for name, value in kept.items():
        torch.testing.assert_close(flushed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_falls_back_to_float32_where_it_is_not_native(monkeypatch):
    """A T4 (compute capability 7.5) has no native bfloat16: faked here, fit trains in float32
    with a warning; where bf16 is native it is used."""
    from nbutils.train import fit

    # a T4 under torch >= 2.4: bf16 only by emulation, which must not count
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert runtime.bf16_supported("cuda") is False and runtime.bf16_supported("cpu") is True

    seen = []

    def loss_fn(model, batch):
        out = model(batch)
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    def batches():
        while True:
            yield torch.ones(4, 3)

    torch.manual_seed(0)
    fit(torch.nn.Linear(3, 2), loss_fn, batches(), steps=2, autocast=torch.bfloat16)
    assert seen == [torch.bfloat16] * 2  # the CPU runs bf16 natively

    monkeypatch.setattr(runtime, "bf16_supported", lambda where: False)  # a T4
    seen.clear()
    with pytest.warns(RuntimeWarning, match="no native bfloat16; training in float32"):
        fit(torch.nn.Linear(3, 2), loss_fn, batches(), steps=2, autocast=torch.bfloat16)
    assert seen == [torch.float32] * 2
    assert runtime.autocast_dtype(None, "cuda") is None


def test_banner_warns_on_a_gpu_without_bf16(monkeypatch, capsys):
    monkeypatch.setenv("NBUTILS_PROFILE", "gpu")
    monkeypatch.setattr(runtime, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(runtime, "bf16_supported", lambda where: False)
    text = runtime.banner({"gpu": "about 5 minutes"})
    assert "about 5 minutes" in text and "no native bfloat16" in text and "not measured" in text
    monkeypatch.setattr(runtime, "bf16_supported", lambda where: True)
    assert "bfloat16" not in runtime.banner({"gpu": "about 5 minutes"})
