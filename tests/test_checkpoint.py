"""Checkpoint pieces: the configuration hash, atomic writes, safe loading, the RNG state."""

import stat

import pytest
import torch

from nbutils import checkpoint


def test_config_hash_ignores_key_order_and_sees_values():
    assert checkpoint.config_hash({"a": 1, "b": [2, 3]}) == checkpoint.config_hash(
        {"b": [2, 3], "a": 1}
    )
    assert checkpoint.config_hash({"a": 1}) != checkpoint.config_hash({"a": 2})


def test_atomic_write_replaces_the_file_whole_and_readable(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    checkpoint.atomic_write(path, lambda f: f.write(b"first"))
    checkpoint.atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"good")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, broken)
    assert path.read_bytes() == b"good" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_save_and_load_round_trip_and_foreign_files_are_refused(tmp_path):
    state = {"format": checkpoint.FORMAT, "w": torch.arange(3)}
    checkpoint.save_checkpoint(state, tmp_path / "c.pt")
    assert torch.equal(checkpoint.load_checkpoint(tmp_path / "c.pt")["w"], torch.arange(3))
    torch.save({"format": 999}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointMismatch, match="not a checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(checkpoint.CheckpointMismatch, match="could not be read"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt")


def test_rng_state_round_trip():
    saved = checkpoint.rng_state()
    first = torch.rand(3)
    checkpoint.set_rng_state(saved)
    assert torch.equal(torch.rand(3), first)


def test_descriptions_see_defaults_closed_over_classes_and_plain_attributes():
    from nbutils.paths import VPSchedule

    def loss_a(m, batch, scale=1.0):
        return scale

    def loss_b(m, batch, scale=2.0):
        return scale

    assert checkpoint.describe_callable(loss_a) != checkpoint.describe_callable(loss_b)

    def closing_over(cls):
        def loss(m, batch):
            return cls

        return loss

    relu, tanh = closing_over(torch.nn.ReLU), closing_over(torch.nn.Tanh)
    assert checkpoint.describe_callable(relu) != checkpoint.describe_callable(tanh)
    assert checkpoint.describe_value(VPSchedule(0.1, 20)) != checkpoint.describe_value(
        VPSchedule(0.1, 10)
    )

    class Scaled:
        def __init__(self, k):
            self.k = k

        def __call__(self, m, batch):
            return self.k

    assert checkpoint.describe_callable(Scaled(1)) != checkpoint.describe_callable(Scaled(2))


def _notebook(source: str) -> dict:
    """Run ``source`` as a notebook cell runs: in a namespace whose module is __main__."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def test_a_notebook_function_is_described_with_the_globals_it_reads():
    cell = _notebook(
        "import torch\n"
        "def u_shaped(n):\n    return torch.rand(n)\n"
        "sigma = 0.5\n"
        "teacher = torch.nn.Linear(2, 2)\n"
        "loss = lambda m, b: (m(b) - teacher(b)).pow(2).mean() * sigma + u_shaped(1)\n"
    )
    describe = checkpoint.describe_callable
    first = describe(cell["loss"])
    assert describe(cell["loss"]) == first  # stable
    exec("def u_shaped(n):\n    return torch.rand(n) ** 2\n", cell)  # another time sampler
    second = describe(cell["loss"])
    assert second != first
    with torch.no_grad():
        cell["teacher"].weight.add_(1.0)  # another teacher
    third = describe(cell["loss"])
    assert third != second
    cell["sigma"] = 1.0  # another number in a notebook variable
    assert describe(cell["loss"]) != third
    cell["sigma"] = 0.5
    assert describe(cell["loss"]) == third  # the description is of the values, not of time


def test_globals_of_nested_functions_count_and_package_functions_keep_their_form():
    from nbutils.rectified import flow_matching_loss

    cell = _notebook(
        "def outer(m, b):\n    inner = lambda: scale\n    return inner()\n"
        "def rec(n):\n    return rec(n - 1) if n else 0\n"
        "scale = 2.0\n"
    )
    before = checkpoint.describe_callable(cell["outer"])
    cell["scale"] = 3.0
    assert checkpoint.describe_callable(cell["outer"]) != before
    assert "rec=" not in checkpoint.describe_callable(cell["rec"])  # no self-description
    assert "=module" not in checkpoint.describe_callable(flow_matching_loss)  # not __main__


def test_descriptions_ignore_docstrings_and_the_hash_seed(tmp_path):
    import subprocess
    import sys

    def documented(m, batch):
        """One docstring."""
        return m in {"a", "b", "c"}

    def redocumented(m, batch):
        """Another docstring."""
        return m in {"a", "b", "c"}

    describe = checkpoint.describe_callable
    assert describe(documented).split(":")[1] == describe(redocumented).split(":")[1]
    script = tmp_path / "f.py"
    script.write_text(
        "from nbutils.checkpoint import describe_callable\n"
        "def f(m, batch):\n    return m in {'alpha', 'beta', 'gamma', 'delta'}\n"
        "print(describe_callable(f))\n"
    )
    seen = {
        subprocess.run(
            [sys.executable, str(script)],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1, seen
