"""The benchmark compares like with like: its bare loop and fit() reach the same weights from
the same start, and the whole command runs and writes its table."""

import json

import torch

from nbutils import bench
from nbutils.autoregressive import nll_nats_per_image
from nbutils.data import Batches
from nbutils.made import MADE
from nbutils.train import fit


def _setup():
    torch.manual_seed(0)
    model = MADE(6, hidden=(16,), num_masks=2)
    images = torch.randint(0, 256, (64, 6), dtype=torch.uint8)
    batches = Batches(images.float().round().clamp(0, 1), batch_size=8, seed=3)
    return model, batches


def test_the_bare_loop_and_fit_reach_the_same_weights(one_thread):
    model_a, batches_a = _setup()
    model_b, batches_b = _setup()
    bench.bare_loop(model_a, nll_nats_per_image, batches_a, steps=12, lr=3e-3)
    fit(model_b, nll_nats_per_image, batches_b, steps=12, lr=3e-3)
    pairs = zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True)
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    moved = _setup()[0].state_dict()["layers.0.weight"]
    assert not torch.equal(model_a.state_dict()["layers.0.weight"], moved), "nothing trained"


def test_the_tiny_benchmark_runs_and_writes_its_table(tmp_path, monkeypatch, one_thread):
    small = [bench.Case("MADE", "01", lambda: MADE(6, hidden=(16,)), nll_nats_per_image,
                        lambda device: Batches(torch.zeros(64, 6), batch_size=8, device=device),
                        8)]  # fmt: skip
    monkeypatch.setattr(bench, "cases", lambda profile: small)
    assert bench.main(["--profile", "tiny", "--repeats", "2", "--steps", "3", "--out",
                       str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "bench-cpu-tiny.json").read_text())
    (row,) = report["rows"]
    assert row["family"] == "MADE" and row["repeats"] == 2
    lo, hi = row["fit ms/step spread"]
    assert lo <= row["fit ms/step"] <= hi
    assert abs(row["overhead (fit / bare)"] - row["fit ms/step"] / row["bare ms/step"]) < 1e-9
    assert "| MADE | fp32 | 01 | 8 |" in (tmp_path / "bench-cpu-tiny.md").read_text()


def test_every_profile_lists_every_family():
    names = {p: [c.name for c in bench.cases(p)] for p in ("cpu", "gpu", "tiny")}
    assert names["cpu"] == names["gpu"] == names["tiny"]
    assert {"MADE", "PixelCNN", "NICE", "rectified flow U-Net"} <= set(names["cpu"])


def test_the_gpu_variants_run_anywhere_and_unknown_ones_are_refused(one_thread):
    import pytest

    from nbutils.pixelcnn import PixelCNN

    case = bench.Case("PixelCNN", "01", lambda: PixelCNN(4, 4, channels=4, layers=1),
                      nll_nats_per_image,
                      lambda device: Batches(torch.zeros(16, 1, 4, 4), batch_size=4,
                                             device=device), 4, conv=True)  # fmt: skip
    row = bench.measure(case, steps=2, repeats=1, device=torch.device("cpu"),
                        variant="bf16+channels_last")  # fmt: skip
    assert row["variant"] == "bf16+channels_last" and row["fit ms/step"] > 0
    with pytest.raises(ValueError, match="variant must be one of"):
        bench.measure(case, steps=2, repeats=1, device=torch.device("cpu"), variant="fp8")


def test_the_subnormal_timing_reports_both_ends_of_a_run(capsys, one_thread):
    import pytest

    assert bench.main(["--profile", "tiny", "--subnormal-child", "flushed", "--steps", "201"]) == 0
    first, last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert first > 0 and last > 0
    with pytest.raises(ValueError, match="at least 200 steps, got 50"):
        bench.subnormal_slowdown("tiny", steps=50)
    torch.set_flush_denormal(False)  # the process default


def test_a_gpu_without_native_bf16_is_measured_in_fp32_only(monkeypatch):
    """On a T4, fit() falls back to float32 while a bare loop would emulate bf16: no fair ratio."""
    import pytest

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert bench.default_variants(torch.device("cuda")) == ["fp32"]
    assert bench.default_variants(torch.device("cpu")) == ["fp32"]
    case = bench.cases("tiny")[0]
    with pytest.raises(ValueError, match="needs native bfloat16"):
        bench.measure(case, steps=2, repeats=1, device=torch.device("cuda"), variant="bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert bench.default_variants(torch.device("cuda")) == list(bench.VARIANTS)


def test_refused_variants_stop_the_command_before_anything_is_measured(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setattr(bench, "measure", lambda *a, **k: pytest.fail("measured before checking"))
    with pytest.raises(SystemExit, match=r"\['fp8'\] cannot run"):
        bench.main(["--profile", "tiny", "--variants", "fp32,fp8", "--out", str(tmp_path)])
