"""scsa-bench plumbing on CPU: shape parsing, the bandwidth model, CSV schema, plots, a tiny run."""
import os
import platform
import re
import time

import pytest
import torch

from fake_backends import install_backend
from scsa_kernels import backends
from scsa_kernels.bench import cli, runner, timing
from scsa_kernels.bench.plots import plot_all, provider_colours
from scsa_kernels.bench import targets
from scsa_kernels.bench.report import E2E_COLUMNS, ENVIRONMENT_COLUMNS, MICRO_COLUMNS, CsvWriter, read_csv
from scsa_kernels.bench import e2e
from scsa_kernels.bench.resnet import ResNet
from scsa_kernels.bench.shapes import FEATURE_MAPS, Shape, feature_map_shapes, parse_dtype, parse_shape
from scsa_kernels.bench.timing import Timing
from scsa_kernels.bench.traffic import floor_bytes
from scsa_kernels.module import SCSA

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY_TIMING = ["--warmup-ms", "1", "--rep-ms", "2"]
# one thread: with other processes on the cores, OpenMP barriers make multi-threaded aten ops crawl
TINY_CPU_RUN = ["--device", "cpu", "--threads", "1", "--compile", "none", "--backend", "fake", *TINY_TIMING]


@pytest.fixture(autouse=True)
def _restore_thread_count():
    """cli.main(["--threads", ...]) sets torch's process-wide thread count; give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("text", ["8,64,56,56", "8x64x56x56", " 8, 64,56 ,56 "])
def test_parse_shape_accepts_comma_or_x(text):
    assert parse_shape(text) == Shape(8, 64, 56, 56)


@pytest.mark.parametrize("text, rule", [("8,64,56", "four"), ("8,64,56,a", "four"), ("0,64,56,56", ">= 1"),
                                        ("8,66,56,56", "multiple of 4")])
def test_parse_shape_names_the_rule(text, rule):
    with pytest.raises(ValueError, match=rule):
        parse_shape(text)


def test_parse_dtype_aliases():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="--dtype"):
        parse_dtype("int8")


def test_feature_maps_are_the_design_list():
    shapes = feature_map_shapes(32)
    assert len(shapes) == sum(map(len, FEATURE_MAPS.values())) == 12
    assert shapes[0] == Shape(32, 64, 56, 56, "resnet50") and str(shapes[0]) == "32x64x56x56"


def test_bandwidth_model_byte_counts():
    numel = 8 * 64 * 56 * 56
    assert floor_bytes("forward", numel, torch.float32) == 2 * 4 * numel == 12_845_056
    assert floor_bytes("backward", numel, torch.float32) == 3 * 4 * numel
    assert floor_bytes("forward+backward", numel, torch.bfloat16) == 5 * 2 * numel
    with pytest.raises(ValueError, match="--mode"):
        floor_bytes("sideways", numel, torch.float32)


def test_timing_quantiles():
    timing = Timing.from_samples([float(v) for v in range(1, 102)])
    assert (timing.p20_ms, timing.median_ms, timing.p80_ms, timing.samples) == (21.0, 51.0, 81.0, 101)


def test_cuda_clock_waits_for_the_cache_flush(monkeypatch):
    """The L2 flush finishes before the timed span starts: the GPU is idle when the start event is
    recorded, so none of a host-bound call's launch time runs while the flush does."""
    calls = []

    class FlushBuffer:
        def zero_(self):
            calls.append("flush")

    clock = timing.CUDAClock.__new__(timing.CUDAClock)  # no GPU here: the flush buffer stands in
    clock.flush_buffer = FlushBuffer()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: calls.append("synchronize"))
    clock.before()
    assert calls == ["flush", "synchronize"]


def test_slow_providers_get_at_least_thirty_samples():
    """A provider slower than its share of rep_ms still runs MIN_ITERATIONS_PER_ROUND iterations in
    each of the rounds: at least 30 samples for its median and quantiles."""
    slow = (lambda: None, lambda state: time.sleep(0.002))
    fast = (lambda: None, lambda state: None)
    result = timing.measure({"slow": slow, "fast": fast}, timing.CPUClock(), warmup_ms=1, rep_ms=5)
    assert result["slow"].samples == timing.ROUNDS * timing.MIN_ITERATIONS_PER_ROUND == 30
    assert result["slow"].median_ms >= 2 and result["fast"].samples >= 30


def test_select_cases_narrows_the_default_suite():
    args = cli.build_parser().parse_args(["--dtype", "bf16", "--mode", "forward"])
    cases = cli.select_cases(args, torch.device("cuda"))
    assert cases and all(c.dtype is torch.bfloat16 and c.modes == ("forward",) for c in cases)
    # 12 maps at batch 64, 12 at batch 1, the 4 ResNet-50 maps at batch 64 and one at batch 1 in channels_last
    assert len({(c.shape, c.layout) for c in cases}) == len(cases) == 29
    assert [str(c) for c in cases if c.layout == "channels_last"] == [
        f"64x{c}x{h}x{h} bfloat16 channels_last" for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))] + [
        "1x64x56x56 bfloat16 channels_last"]


def install_layout_recorder(monkeypatch):
    """A fake backend "fake" (an identity) that records, per call, whether x came in channels_last."""
    seen = []

    def records_layout(x, weights, config, training):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x * 1

    install_backend(monkeypatch, "fake", records_layout)
    return seen


def test_layout_option_hands_channels_last_inputs_to_every_provider(tmp_path, monkeypatch):
    seen = install_layout_recorder(monkeypatch)
    out = str(tmp_path)
    assert cli.main(["--shape", "1,16,14,14", "--layout", "channels_last", "--layout", "nchw", "--mode", "forward",
                     "--out", out, *TINY_CPU_RUN]) == 0
    rows = read_csv(os.path.join(out, "microbench.csv"))
    assert [(r["layout"], r["provider"]) for r in rows] == [
        ("channels_last", "eager"), ("channels_last", "fake"), ("nchw", "eager"), ("nchw", "fake")]
    assert True in seen and False in seen


def test_cuda_suite_puts_resnet50_bf16_training_batch_first():
    cases = cli.select_cases(cli.build_parser().parse_args([]), torch.device("cuda"))
    first = [(str(c.shape), c.dtype, c.modes) for c in cases[:5]]
    assert first == [(f"64x{c}x{h}x{h}", torch.bfloat16, ("forward", "forward+backward"))
                     for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))] + [
        ("1x64x56x56", torch.bfloat16, ("forward",))]
    assert {str(c.shape) for c in cases} >= {str(s) for s in feature_map_shapes(64) + feature_map_shapes(1)}


def test_max_autotune_takes_its_first_measurement_only_by_default():
    from scsa_kernels.bench.providers import make_providers
    from scsa_kernels.config import SCSAConfig

    x = torch.randn(1, 16, 7, 7)
    for limit in (1, None):
        providers = {p.name: p for p in make_providers([], ("compile", "compile-max-autotune"), 60.0, limit)}
        for p in providers.values():
            p.compiles = 1
        assert providers["compile"].why_not(x, SCSAConfig(16), False) is None
        reason = providers["compile-max-autotune"].why_not(x, SCSAConfig(16), False)
        assert (reason is not None and "--autotune-all" in reason) == (limit == 1)


def test_graphed_providers_accompany_max_autotune_on_cuda_runs(monkeypatch):
    """A CUDA run that times compile-max-autotune (CUDA graph replays) also times each fused backend
    under torch.compile(mode="reduce-overhead") as "<name>+cudagraphs": a compile provider (budget
    applies) that still skips what its backend does not support."""
    from scsa_kernels.bench.providers import make_providers
    from scsa_kernels.config import SCSAConfig

    fake = install_backend(monkeypatch, "fake")
    monkeypatch.setattr(fake, "unsupported_reason",
                        lambda x, config, training: "no float64" if x.dtype == torch.float64 else None)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert cli.graphed_providers(cuda, ["fake"], ("compile", "compile-max-autotune")) == ["fake"]
    assert cli.graphed_providers(cuda, ["fake"], ("compile",)) == []
    assert cli.graphed_providers(cpu, ["fake"], ("compile-max-autotune",)) == []
    providers = {p.name: p for p in make_providers(["fake"], (), 60.0, graphed=["fake"])}
    assert list(providers) == ["eager", "fake", "fake+cudagraphs"]
    graphed = providers["fake+cudagraphs"]
    assert graphed.is_compiled and graphed.backend == "fake"
    x = torch.randn(1, 16, 7, 7)
    assert graphed.why_not(x, SCSAConfig(16), False) is None
    assert "no float64" in graphed.why_not(x.double(), SCSAConfig(16), False)
    graphed.compile_s = 61.0
    assert "compile budget" in graphed.why_not(x, SCSAConfig(16), False)


def test_tiny_cpu_run_writes_csv_and_plots(tmp_path, monkeypatch):
    install_backend(monkeypatch, "fake")
    out = str(tmp_path / "results")
    assert cli.main(["--shape", "1,16,14,14", "--out", out, *TINY_CPU_RUN]) == 0
    rows = read_csv(os.path.join(out, "microbench.csv"))
    assert list(rows[0]) == list(MICRO_COLUMNS)
    assert {(r["mode"], r["provider"]) for r in rows} == {
        (m, p) for m in ("forward", "backward", "forward+backward") for p in ("eager", "fake")}
    for row in rows:
        assert row["status"] == "ok"
        assert all(row[c] for c in ("date", "machine", "device", "device_name", "torch", "threads"))
        # CPU runs keep glibc's heap from shrinking (environment.steady_cpu_heap)
        assert row["heap"] == ("steady" if platform.libc_ver()[0] == "glibc" else "default")
        assert float(row["median_ms"]) > 0 and float(row["p20_ms"]) <= float(row["p80_ms"])
        assert int(row["model_bytes"]) == {"forward": 2, "backward": 3, "forward+backward": 5}[row["mode"]] * 4 * 16 * 196
        assert float(row["achieved_gbps"]) > 0 and float(row["copy_gbps"]) > 0
        assert (row["saved_bytes"] != "") == (row["mode"] == "forward+backward")
        assert row["kernel_ms"] == ""  # kernels are timed apart on CUDA only
    assert sorted(os.listdir(out)) == ["microbench.csv", "microbench_memory.png", "microbench_speedup.png"]


def test_kernel_profile_sums_device_time_and_counts_launches_per_iteration():
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    host = lambda key, count: SimpleNamespace(key=key, count=count, device_type=cpu, self_device_time_total=0.0)
    events = [SimpleNamespace(key="pool_kernel", count=4, device_type=cuda, self_device_time_total=300.0),
              SimpleNamespace(key="apply_gates_kernel", count=4, device_type=cuda, self_device_time_total=100.0),
              host("cuLaunchKernelEx", 8), host("cudaLaunchKernel_v7000", 12), host("cudaGraphLaunch", 4),
              host("aten::empty", 40), host("cudaGraphInstantiate", 4)]
    assert timing.kernel_profile_from_events(events, iterations=4) == timing.KernelProfile(0.1, 5.0, 1.0)
    # no kernel seen: no time (not a zero), the launches still counted
    assert timing.kernel_profile_from_events(events[2:], iterations=4) == timing.KernelProfile(None, 5.0, 1.0)
    assert timing.kernel_profile((lambda: None, lambda state: None), torch.device("cpu")) is None


def test_kernel_columns_come_from_the_kernel_timer(tmp_path, monkeypatch):
    """The fused providers' forward and forward+backward rows get kernel_ms, its share of the copy
    bandwidth and the launches per iteration from timing.kernel_profile (a CUDA profiler run; stubbed
    here), the backward rows and the reference's none; a failing profiler leaves the columns empty and
    the row ok."""
    install_backend(monkeypatch, "fake")
    monkeypatch.setattr(runner, "kernel_profile", lambda work, device: timing.KernelProfile(0.5, 5.0, 0.0))
    out = str(tmp_path)
    cli.main(["--shape", "1,16,14,14", "--out", out, *TINY_CPU_RUN])
    kernel_columns = ("kernel_ms", "kernel_pct_of_copy_bw", "launches_per_iter", "graph_launches_per_iter")
    for row in read_csv(os.path.join(out, "microbench.csv")):
        if row["mode"] == "backward" or row["provider"] == "eager":
            assert all(row[c] == "" for c in kernel_columns)
        else:
            assert (float(row["kernel_ms"]), row["launches_per_iter"], row["graph_launches_per_iter"]) == (0.5, "5", "0")
            expected = 100 * int(row["model_bytes"]) / 0.5e-3 / 1e9 / float(row["copy_gbps"])
            assert float(row["kernel_pct_of_copy_bw"]) == pytest.approx(expected, rel=1e-5)

    def broken(work, device):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(runner, "kernel_profile", broken)
    cli.main(["--shape", "1,16,14,14", "--mode", "forward", "--out", out, *TINY_CPU_RUN])
    rows = read_csv(os.path.join(out, "microbench.csv"))
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 for r in rows)
    assert all(r[c] == "" for r in rows for c in kernel_columns)


@requires_cuda
def test_tiny_cuda_run_measures_peak_memory(tmp_path, monkeypatch):
    install_backend(monkeypatch, "fake")
    out = str(tmp_path)
    args = ["--device", "cuda", "--shape", "2,16,14,14", "--out", out, "--compile", "none", "--backend", "fake"]
    assert cli.main(args + TINY_TIMING) == 0
    rows = read_csv(os.path.join(out, "microbench.csv"))
    assert {r["provider"] for r in rows} == {"eager", "fake"} and all(r["status"] == "ok" for r in rows)
    assert all(r["device"] == "cuda" and r["cuda"] for r in rows)
    assert all((r["peak_mem_bytes"] != "") == (r["mode"] == "forward+backward") for r in rows)
    assert all((r["kernel_ms"] != "") == (r["mode"] != "backward" and r["provider"] == "fake") for r in rows)
    # the fake backend launches its reference's kernels one by one, never a CUDA graph
    assert all(float(r["launches_per_iter"]) > 0 and float(r["graph_launches_per_iter"]) == 0
               for r in rows if r["kernel_ms"])


@requires_cuda
def test_graphed_triton_replays_cuda_graphs(monkeypatch):
    """triton+cudagraphs (the fused call under torch.compile(mode="reduce-overhead")) replays a CUDA graph
    in every profiled iteration of the forward rows, two (forward and backward) in the forward+backward
    rows, and Inductor compiles none of their graphs without CUDA graphs: a row without graph launches
    times torch.compile's host path, not CUDA graphs (on an H200 on 2026-11-27, its 64x128x28x28 forward
    took longer than the eager call, and its forward+backward at 64x64x56x56 1.31 ms for 0.33 ms of kernels)."""
    from scsa_kernels.bench.providers import make_providers
    from scsa_kernels.bench.suites import Case

    if backends.unavailable_reason("triton") is not None:
        pytest.skip(backends.unavailable_reason("triton"))
    logged = []
    monkeypatch.setattr(runner, "log", logged.append)
    providers = make_providers(["triton"], (), 600.0, graphed=["triton"])
    settings = runner.Settings(torch.device("cuda"), warmup_ms=5.0, rep_ms=10.0, cache_bytes=64 << 20, copy_gbps=1000.0)
    # two shapes in turn, as the bench compiles one function anew for each case (the 11-27 slow row was its second)
    for shape in (Shape(2, 64, 56, 56), Shape(2, 128, 28, 28)):
        for mode in ("forward", "forward+backward"):
            rows = {r["provider"]: r for r in runner.run_mode(Case(shape, torch.bfloat16, (mode,)), mode, providers,
                                                              settings, {})}
            graphed = rows["triton+cudagraphs"]
            graphs = 1 if mode == "forward" else 2  # the forward's graph, and the backward's
            assert graphed["status"] == "ok" and graphed.get("graph_launches_per_iter", 0) >= graphs, (
                shape, mode, graphed, logged)
            eager = rows["triton"]
            assert eager.get("graph_launches_per_iter") == 0 and eager.get("launches_per_iter", 0) >= 5, (
                shape, mode, eager)
    assert not [line for line in logged if "without CUDA graphs" in line], logged


def _target_row(provider, shape, mode, status="ok", **columns):
    batch, channels, height, width = shape.split("x")
    return dict(provider=provider, shape=shape, mode=mode, dtype="bfloat16", layout="nchw", status=status,
                batch=batch, channels=channels, height=height, width=width, device_name="NVIDIA H100 80GB HBM3",
                date="2026-11-28T00:00:00Z", **columns)


def test_targets_judge_each_row_against_its_goal():
    x_bytes = 64 * 64 * 56 * 56 * 2
    rows = [
        _target_row("eager", "64x64x56x56", "forward", median_ms="1.0"),
        _target_row("compile-max-autotune", "64x64x56x56", "forward", median_ms="0.5"),
        _target_row("triton", "64x64x56x56", "forward", median_ms="0.2", speedup_vs_eager="5",
                    pct_of_copy_bw="36", kernel_pct_of_copy_bw="30"),  # of the floor's 2|x|: 72 %, 60 % of the plan's 4|x|
        _target_row("compile-max-autotune", "64x128x28x28", "forward", status="compile budget spent"),
        _target_row("triton", "64x128x28x28", "forward", median_ms="0.3", speedup_vs_eager="3.9"),
        _target_row("triton", "64x64x56x56", "forward+backward", speedup_vs_eager="3", speedup_vs_compile="1.4",
                    pct_of_copy_bw="", saved_bytes=str(int(x_bytes * 1.11))),
        _target_row("triton", "64x256x14x14", "forward+backward", status="error: RuntimeError"),
        dict(_target_row("triton", "64x64x56x56", "forward", speedup_vs_eager="1"), dtype="float32"),  # not judged
    ]
    lines = {(l["target"], l["shape"]): l for l in targets.judge(rows)}
    assert {l["provider"] for l in lines.values()} == {"triton"}  # no triton+cudagraphs rows: none judged
    verdict = lambda target, shape: (lines[target, shape]["verdict"], lines[target, shape]["measured"])
    assert verdict("forward vs eager", "64x64x56x56") == ("met", "5x")
    assert verdict("forward vs eager", "64x128x28x28") == ("missed", "3.9x")
    assert verdict("forward vs max-autotune", "64x64x56x56") == ("met", "2.5x")  # 0.5 / 0.2, from the same run
    assert lines["forward vs max-autotune", "64x128x28x28"]["why"] == "compile-max-autotune: compile budget spent"
    assert verdict("forward copy bw (4|x|, wall)", "64x64x56x56") == ("met", "72%")
    assert verdict("forward copy bw (4|x|, kernels)", "64x64x56x56") == ("missed", "60%")
    assert verdict("fwd+bwd vs eager", "64x64x56x56") == ("met", "3x")
    assert verdict("fwd+bwd vs compile", "64x64x56x56") == ("missed", "1.4x")
    assert lines["fwd+bwd copy bw (9|x|, wall)", "64x64x56x56"]["why"] == "no pct_of_copy_bw"
    assert lines["fwd+bwd copy bw (9|x|, kernels)", "64x64x56x56"]["why"] == "no kernel_pct_of_copy_bw"
    assert verdict("saved beyond x", "64x64x56x56") == ("missed", "11%")
    assert lines["saved beyond x", "64x256x14x14"]["why"] == "error: RuntimeError"
    assert lines["fwd+bwd vs eager", "64x512x7x7"] == dict(target="fwd+bwd vs eager", provider="triton",
                                                            shape="64x512x7x7", goal=">= 3x", measured="-",
                                                            verdict="not measured", why="no row")
    assert not {t for t, s in lines if "copy bw" in t and s != "64x64x56x56"}


def test_targets_ignore_graphed_rows_that_replayed_no_cuda_graph():
    """A "+cudagraphs" row whose profiled iterations launched no CUDA graph, or that has no record of
    them (rows before 2026-11-28), shows no CUDA graphs: its targets are not measured, and say why; the
    rows that replayed one are judged."""
    rows = [_target_row("triton+cudagraphs", "64x64x56x56", "forward", speedup_vs_eager="8",
                        launches_per_iter="0", graph_launches_per_iter="1"),
            _target_row("triton+cudagraphs", "64x128x28x28", "forward", speedup_vs_eager="3.8",
                        launches_per_iter="5", graph_launches_per_iter="0"),
            _target_row("triton+cudagraphs", "64x256x14x14", "forward", speedup_vs_eager="4.2")]  # before 11-28
    lines = {l["shape"]: l for l in targets.judge(rows) if l["target"] == "forward vs eager"}
    assert lines["64x64x56x56"]["verdict"] == "met"
    assert lines["64x128x28x28"]["verdict"] == "not measured"
    assert lines["64x128x28x28"]["why"] == "replayed no CUDA graph (5 kernel launches per iteration)"
    assert lines["64x256x14x14"]["verdict"] == "not measured"
    assert lines["64x256x14x14"]["why"] == "no CUDA graph replay recorded (no graph_launches_per_iter)"


def test_cudagraph_skips_collects_inductors_reasons():
    """What Inductor counts as a graph compiled without CUDA graphs, with the reason it logs (unseen
    without TORCH_LOGS); a real CPU compile in "reduce-overhead" mode counts one and logs none."""
    import logging

    from torch._dynamo.utils import counters

    from scsa_kernels.bench.providers import CUDAGRAPH_SKIP_LOGGERS, cudagraph_skips

    with cudagraph_skips() as skips:
        logging.getLogger(CUDAGRAPH_SKIP_LOGGERS[0]).warning("skipping cudagraphs due to mutated inputs")
        counters["inductor"]["cudagraph_skips"] += 1
    assert skips == ["skipping cudagraphs due to mutated inputs"]
    assert not logging.getLogger(CUDAGRAPH_SKIP_LOGGERS[0]).handlers
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 + 1, mode="reduce-overhead", dynamic=False)
    with cudagraph_skips() as skips:
        compiled(torch.randn(8))
    assert skips == ["no reason logged"]


def test_targets_option_reads_a_csv_and_measures_nothing(tmp_path, capsys):
    path = str(tmp_path / "microbench.csv")
    writer = CsvWriter(path, MICRO_COLUMNS)
    writer.write([_target_row("triton", "64x64x56x56", "forward", speedup_vs_eager="4.5")])
    assert cli.main(["--targets", path]) == 0
    out = capsys.readouterr().out
    assert "from rows of NVIDIA H100 80GB HBM3 (2026-11-28)" in out
    assert re.search(r"forward vs eager +triton +64x64x56x56 +4.5x +>= 4x +met", out)
    assert out.rstrip().endswith(f"1 of {len(targets.RESNET50_SHAPES) * 5 + 4} met")
    writer = CsvWriter(path, MICRO_COLUMNS)  # no Triton rows
    writer.write([_target_row("eager", "64x64x56x56", "forward", median_ms="1")])
    cli.main(["--targets", path])
    assert "no Triton rows" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--targets", str(tmp_path / "missing.csv")])
    assert "--targets must name a microbench.csv" in capsys.readouterr().err


def test_unsupported_provider_gets_a_skip_row(tmp_path, monkeypatch):
    fake = install_backend(monkeypatch, "fake")
    fake.unsupported_reason = lambda x, config, training: "fake does C <= 16 only" if config.dim > 16 else None
    out = str(tmp_path)
    cli.main(["--shape", "1,32,14,14", "--mode", "forward", "--out", out, *TINY_CPU_RUN])
    rows = {r["provider"]: r for r in read_csv(os.path.join(out, "microbench.csv"))}
    assert rows["fake"]["status"] == "fake does C <= 16 only" and rows["fake"]["median_ms"] == ""
    assert rows["eager"]["status"] == "ok"


def test_backend_that_cannot_take_the_device_is_left_out(tmp_path, monkeypatch):
    fake = install_backend(monkeypatch, "fake")
    fake.unsupported_reason = lambda x, config, training: "fake takes CUDA tensors only"
    out = str(tmp_path)
    cli.main(["--shape", "1,16,14,14", "--mode", "forward", "--out", out, *TINY_CPU_RUN])
    assert {r["provider"] for r in read_csv(os.path.join(out, "microbench.csv"))} == {"eager"}


def test_crashing_provider_gets_an_error_row(tmp_path, monkeypatch):
    def crashes(x, weights, config, training):
        raise RuntimeError("kernel launch failed")

    install_backend(monkeypatch, "fake", crashes)
    out = str(tmp_path)
    cli.main(["--shape", "1,16,14,14", "--mode", "forward", "--out", out, *TINY_CPU_RUN])
    rows = {r["provider"]: r for r in read_csv(os.path.join(out, "microbench.csv"))}
    assert rows["fake"]["status"] == "error: RuntimeError: kernel launch failed" and rows["eager"]["status"] == "ok"


def test_plots_from_rows(tmp_path):
    rows = [dict(shape=s, dtype="float32", mode=m, provider=p, speedup_vs_eager=str(v), saved_bytes="1048576",
                 peak_mem_bytes="")
            for s in ("1x64x56x56", "1x512x7x7") for m in ("forward", "forward+backward")
            for p, v in (("eager", 1.0), ("cpu", 3.0))]
    paths = plot_all(rows, str(tmp_path), "microbench")
    assert [os.path.basename(p) for p in paths] == ["microbench_speedup.png", "microbench_memory.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_a_provider_keeps_its_colour_in_every_panel():
    # the GPU run of 2026-11-26: "compile-max-autotune" timed the forward only, so the forward+backward
    # panel drew triton in the colour the forward panel gave compile-max-autotune
    panels = {"bf16 forward": {"compile": {}, "compile-max-autotune": {}, "triton": {}},
              "bf16 forward+backward": {"compile": {}, "triton": {}}}
    assert provider_colours(panels) == {"compile": "C0", "compile-max-autotune": "C1", "triton": "C2"}


def test_resnet50_places_scsa_after_conv1_on_mid_channels():
    model = ResNet("reference")
    dims = [m.config.dim for m in model.modules() if isinstance(m, SCSA)]
    assert dims == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert model.blocks[0].scsa is not None and sum(p.numel() for p in ResNet(None).parameters()) == 25_557_032


def test_e2e_run_writes_csv(tmp_path, monkeypatch):
    install_backend(monkeypatch, "fake")
    monkeypatch.setattr(e2e, "MODEL_STAGES", ((16, 1, 1), (32, 1, 2)))  # a two-block network: seconds, not minutes
    out = str(tmp_path)
    assert cli.main(["--e2e", "--quick", "--e2e-image-size", "56", "--out", out, *TINY_CPU_RUN]) == 0
    rows = read_csv(os.path.join(out, "e2e.csv"))
    assert list(rows[0]) == list(E2E_COLUMNS) and all(r[c] for r in rows for c in ENVIRONMENT_COLUMNS if c not in (
        "driver", "cuda", "triton"))
    assert {(r["phase"], r["provider"]) for r in rows} == {(p, m) for p in ("train", "inference")
                                                          for m in ("plain", "reference", "fake")}
    assert all(float(r["images_per_s"]) > 0 and r["layout"] == "nchw" for r in rows)


def test_e2e_channels_last_hands_channels_last_maps_to_scsa(tmp_path, monkeypatch):
    seen = install_layout_recorder(monkeypatch)
    monkeypatch.setattr(e2e, "MODEL_STAGES", ((16, 1, 1), (32, 1, 2)))
    out = str(tmp_path)
    assert cli.main(["--e2e", "--quick", "--e2e-image-size", "56", "--layout", "channels_last", "--out", out,
                     *TINY_CPU_RUN]) == 0
    rows = read_csv(os.path.join(out, "e2e.csv"))
    assert rows and all(r["layout"] == "channels_last" and r["status"] == "ok" for r in rows)
    assert seen and all(seen)


def test_console_scripts_point_at_mains():
    import importlib

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert set(scripts) == {"scsa-bench", "scsa-check"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_gpu_script_is_valid_bash():
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run_gpu.sh")
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    commands = [l.split("#")[0] for l in open(script).read().splitlines()]
    # one interpreter: `pip` and `python` on PATH may belong to another one than the one with torch
    assert not any(re.search(r"(?<!-m )\bpip3? install", l) or re.search(r"(^|[\s(])python3? -[cm]\b", l)
                   for l in commands)
    assert any('"$PY" -m pip install' in l for l in commands)


def test_gpu_script_runs_only_the_steps_named(tmp_path):
    """run_gpu.sh with STEPS runs those steps and no other (a stub interpreter records the commands);
    TEST_ARGS and BENCH_ARGS may span lines (the script's header wraps them); a run whose bench step
    writes no row leaves no earlier microbench.csv behind to be judged as its own."""
    import shutil
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(os.path.join(root, "benchmarks", "run_gpu.sh"), tmp_path / "benchmarks")
    stub = tmp_path / "stub-python"
    stub.write_text('#!/usr/bin/env bash\ncase "$*" in *results_folder_name*) echo stub-card;; *) echo "ran: $*";; esac\n')
    stub.chmod(0o755)
    # not the caller's own settings of the script (on the GPU machine: run_gpu.sh's, with its $OUT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OUT", "BUILD", "STEPS", "TOTAL_BUDGET_S") and not k.startswith(("TEST_", "BENCH_"))
           and not k.endswith("_CAP_S")}
    env.update(PYTHON=str(stub), STEPS="profile,bench", TOTAL_BUDGET_S="200",
               BENCH_ARGS="--shape 64,64,56,56\n    --autotune-all")
    results = tmp_path / "benchmarks" / "results" / "stub-card"
    results.mkdir(parents=True)
    (results / "microbench.csv").write_text("date\n")  # an earlier run's

    def run_script():
        res = subprocess.run(["bash", str(tmp_path / "benchmarks" / "run_gpu.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr

    run_script()
    assert sorted(p.name for p in results.glob("*.log")) == ["bench.log", "profile.log"]
    assert not (results / "microbench.csv").exists()
    assert "ran: benchmarks/kernel_profile.py" in (results / "profile.log").read_text()
    assert re.search(r"ran: -m scsa_kernels.bench --time-budget \d+ --out \S+ --shape 64,64,56,56 --autotune-all$",
                     (results / "bench.log").read_text().strip())
    summary = (results / "summary.txt").read_text()
    assert "profile:" in summary and "bench:" in summary and "pytest:" not in summary and "e2e:" not in summary
    # targets: judged from the run's microbench.csv when there is one, its whole table in summary.txt
    (results / "microbench.csv").write_text("date\n")
    env["STEPS"] = "targets"
    run_script()
    assert "ran: -m scsa_kernels.bench --targets benchmarks/results/stub-card/microbench.csv" in (
        results / "targets.log").read_text()
    assert "targets: exit 0" in (results / "summary.txt").read_text()
    # pytest: TEST_MARKERS as one -m expression before the files of TEST_ARGS
    env.update(STEPS="pytest", TEST_MARKERS="not host_only", TEST_ARGS="tests/test_bench.py\n  tests/test_weights.py")
    run_script()
    assert (results / "pytest.log").read_text().strip().endswith(
        " -m not host_only tests/test_bench.py tests/test_weights.py")


def test_kernel_profile_names_the_fused_op(capsys):
    """benchmarks/kernel_profile.py (run_gpu.sh's diagnosis step) on CPU: one line per backend and mode,
    and the fused backend's time lands in its own op, not in unattributed glue."""
    if backends.unavailable_reason("cpu") is not None:
        pytest.skip("the C++ CPU backend is not built")
    from scsa_kernels.ops import eager
    kernel_profile = _load_benchmark_script("kernel_profile")
    node_methods = dict(eager._FusedSCSAFunction.__dict__)
    kernel_profile.main(["--device", "cpu", "--shape", "1", "8", "7", "7", "--reps", "2"])
    out = capsys.readouterr().out
    # the Python layers' timers: the node's forward and backward once per call, then unwrapped
    assert len(re.findall(r"^    python layers per call \(inclusive\): node\.forward [\d.]+ us x1, pack_weights "
                          r"[\d.]+ us x1, node\.backward [\d.]+ us x1, unpack_gradients [\d.]+ us x1$", out, re.M)) == 1
    assert all(eager._FusedSCSAFunction.__dict__[m] is node_methods[m] for m in ("forward", "backward"))
    summaries = re.findall(r"^1x8x7x7 float32 (forward\+backward|forward)\s+(\w+)\s+wall .* in \d+ ops", out, re.M)
    assert sorted(summaries) == sorted([(m, b) for m in ("forward", "forward+backward") for b in ("cpu", "reference")])
    assert "scsa_kernels::scsa_forward" in out and "scsa_kernels::scsa_backward" in out
    assert len(re.findall(r"^    host: forward \d+\.\d us$", out, re.M)) == 2
    assert len(re.findall(r"^    host: forward \d+\.\d us \+ backward \d+\.\d us$", out, re.M)) == 2


def _load_benchmark_script(name):
    """benchmarks/<name>.py as a module."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_kernel_profile_times_every_triton_launch(monkeypatch):
    """The launch timer wraps CompiledKernel.run (the launcher every route calls: Triton's launch,
    CompiledKernel[grid], ops.triton's direct launches) for its block only, and counts each launch
    under its kernel's name."""
    CompiledKernel = pytest.importorskip("triton.compiler.compiler").CompiledKernel

    kernel_profile = _load_benchmark_script("kernel_profile")
    monkeypatch.setattr(CompiledKernel, "run", property(lambda self: lambda *args: time.sleep(0.002) or args))
    stub = CompiledKernel.__dict__["run"]
    compiled = type("Compiled", (CompiledKernel,), {"__init__": lambda self: None, "__del__": lambda self: None})()
    compiled.name = "pool_kernel"
    with kernel_profile.timed_triton_launches() as launched:
        assert [compiled.run(1, 1, 1, 0) for _ in range(4)] == [(1, 1, 1, 0)] * 4
    assert list(launched) == ["pool_kernel"] and launched["pool_kernel"][0] == 4
    assert launched["pool_kernel"][1] >= 0.008
    assert CompiledKernel.__dict__["run"] is stub


def test_kernel_profile_calls_start_from_no_gradient():
    """kernel_profile's timed forward+backward leaves no x.grad to the next call: accumulating into it
    added an elementwise kernel over x to every profiled call (until 2026-11-28)."""
    kernel_profile = _load_benchmark_script("kernel_profile")
    module = SCSA(16, backend="reference")
    x = torch.randn(2, 16, 14, 14, requires_grad=True)
    grad_out = torch.randn_like(x)
    out, dx = kernel_profile.results(module, x, grad_out, "forward+backward")
    dx = dx.clone()  # results hands back x.grad itself, which an accumulation would change in place
    for _ in range(2):
        kernel_profile.one_call(module, x, grad_out, "forward+backward")
    torch.testing.assert_close(x.grad, dx, rtol=0, atol=0)


def test_kernel_profile_times_each_plan_variant_on_fresh_plans(monkeypatch, capsys):
    """kernel_profile's A/B of the Triton plan's choices: a variant's calls run with its ops.triton globals
    set (each a global the plan reads, set to another value), on fresh plans, and its results are compared
    with the default's (computed before); the globals and the plans made before are put back."""
    from scsa_kernels.ops import triton as ops
    kernel_profile = _load_benchmark_script("kernel_profile")
    assert {"no-row-vectors", "one-plane-per-program", "spatial-tile-512"} <= set(kernel_profile.PLAN_VARIANTS)
    monkeypatch.setattr(kernel_profile, "profiled_tables", lambda *args: state() or (
        [("pool_kernel", 1, 30.0), ("apply_gates_kernel", 1, 20.5)], []))
    monkeypatch.setattr(kernel_profile, "one_call", lambda *args: state())
    monkeypatch.setattr(kernel_profile, "results", lambda *args: state() or next(computed))
    for label, overrides in kernel_profile.PLAN_VARIANTS.items():
        defaults = {name: getattr(ops, name) for name in overrides}
        assert all(defaults[name] != value for name, value in overrides.items())
        monkeypatch.setattr(ops, "_FORWARD_PLANS", {"made before": 1})
        monkeypatch.setattr(ops, "_BACKWARD_PLANS", {"made before": 2})
        seen = []
        state = lambda: seen.append(({name: getattr(ops, name) for name in overrides}, dict(ops._FORWARD_PLANS),
                                     dict(ops._BACKWARD_PLANS)))
        computed = iter([(torch.tensor([2.0, -4.0]), torch.ones(3)), (torch.tensor([2.0, -4.002]), torch.ones(3))])
        kernel_profile.print_plan_variant(None, None, None, "forward", 2, label)
        made_before = ({"made before": 1}, {"made before": 2})
        assert seen == [(defaults, *made_before)] + [(overrides, {}, {})] * 4
        assert {name: getattr(ops, name) for name in overrides} == defaults
        assert (ops._FORWARD_PLANS, ops._BACKWARD_PLANS) == made_before
        assert (f"{label}: device 50.5 us (results 5.0e-04 off the default's): pool_kernel 30.0 us, "
                "apply_gates_kernel 20.5 us") in capsys.readouterr().out


def test_attention_routes_forces_each_route_and_restores_the_rule():
    """benchmarks/attention_routes.py (run_gpu.sh) forces the attention product route through
    ops.triton._attention_blocks, rebuilding the plans, and puts the rule back; without a GPU it
    says that it needs one."""
    pytest.importorskip("triton")
    from scsa_kernels.ops import triton as ops
    routes = _load_benchmark_script("attention_routes")
    rule = ops._attention_blocks
    try:
        for route, n, dot in (("dot", 1, True), ("rank1", 64, False), ("rule", 1, False), ("rule", 64, True)):
            ops._FORWARD_PLANS[("stale",)] = None
            routes.routed(route)
            assert ops._attention_blocks(64, 1, n, "forward").DOT is dot and not ops._FORWARD_PLANS
    finally:
        ops._attention_blocks = rule
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            routes.main([])
