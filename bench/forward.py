"""Roofline of the network forward on this machine: GFLOP/s of the bundled model next to the achievable peak.

Prints, measured in one run on the same cores: (1) the peak, the best GFLOP/s of a dense matrix product
(2048^3) and of a large 3x3 convolution (128 -> 128 channels, channels-last, oneDNN), in fp32 and bf16;
(2) for each tile size, thread count and variant (the eager network contiguous / channels-last, the inference
network of ``sparseseg.model.inference`` in fp32 and bf16): input Mpx/s, GFLOP/s, percent of the fp32 (or
bf16) peak, output Mpx/s after the tile grid's halo overhead (tile / stride)^2, and the speed-up over the
eager channels-last network (the path `segment` ran before the inference network); (3) the largest
difference of each variant's output from the eager one.

    python bench/forward.py [--model MODEL.pt] [--tiles 512 768 1024] [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sparseseg.infer.predictor import Predictor
from sparseseg.model.inference import InferenceUNet

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "sparseseg" / "data" / "models" / "nuclei_he.pt"


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (the least disturbed by other work)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peaks(repeats: int) -> dict[str, float]:
    """GFLOP/s of a large matrix product and a large 3x3 convolution, fp32 and bf16, on the current threads."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        out[f"matmul {name}"] = 2 * 2048**3 / best_seconds(lambda: a @ b, repeats) / 1e9
        x = torch.randn(1, 128, 128, 128, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(128, 128, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            seconds = best_seconds(lambda: F.conv2d(x, w, padding=1), repeats)
        out[f"conv3x3 {name}"] = 2 * 128 * 128 * 9 * 128 * 128 / seconds / 1e9
    return out


def flops_per_pixel(network) -> float:
    x = torch.zeros(1, network.config.in_channels, 256, 256)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x)
    return counter.get_total_flops() / 256**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--tiles", type=int, nargs="+", default=[512, 768, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    network = Predictor.from_checkpoint(args.model, device="cpu").network
    contiguous = Predictor.from_checkpoint(args.model, device="cpu").network.to(memory_format=torch.contiguous_format)
    variants = {"eager contiguous": (lambda x: contiguous(x), "fp32"),
                "eager channels-last": (lambda x: network(x.contiguous(memory_format=torch.channels_last)), "fp32"),
                "inference fp32": (InferenceUNet(network, "fp32"), "fp32"),
                "inference bf16": (InferenceUNet(network, "bf16"), "bf16")}
    flops = flops_per_pixel(network)
    print(f"model {args.model.name}: {sum(p.numel() for p in network.parameters())} parameters, "
          f"{flops / 1e3:.1f} kFLOP per input pixel, halo {network.halo} px")
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = peaks(args.repeats)
        print(f"\n{threads} thread(s): peak GFLOP/s " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()))
        peak_of = {p: max(peak[f"matmul {p}"], peak[f"conv3x3 {p}"]) for p in ("fp32", "bf16")}
        print(f"{'tile':>5} {'variant':<20} {'in Mpx/s':>9} {'GFLOP/s':>8} {'% peak':>7} {'out Mpx/s':>10} "
              f"{'speed-up':>8} {'max |diff|':>10}")
        for tile in args.tiles:
            stride = tile - 2 * network.halo
            x = torch.rand(1, network.config.in_channels, tile, tile) * 2 - 0.5
            with torch.no_grad():
                reference = variants["eager channels-last"][0](x)
                rates, diffs = {}, {}
                for name, (run, _) in variants.items():
                    rates[name] = tile * tile / best_seconds(lambda: run(x), args.repeats) / 1e6
                    diffs[name] = float((run(x).float() - reference).abs().max())
                for name, (_, precision) in variants.items():
                    gflops, diff = rates[name] * flops / 1e3, diffs[name]
                    print(f"{tile:>5} {name:<20} {rates[name]:>9.3f} {gflops:>8.1f} {100 * gflops / peak_of[precision]:>6.0f}%"
                          f" {rates[name] * (stride / tile) ** 2:>10.3f} {rates[name] / rates['eager channels-last']:>7.2f}x"
                          f" {diff:>10.2e}")


if __name__ == "__main__":
    main()
