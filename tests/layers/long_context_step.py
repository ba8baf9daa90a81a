"""One training step of a 2-layer, 256-wide encoder on one long sequence, in a process of its
own so that its peak resident memory can be read: prints {"growth_mib", "seconds"} as JSON.

    python long_context_step.py T WINDOW|full|band [--packed]

WINDOW: local attention in both layers; full: full attention; band: full attention under an
explicit (T, T) band mask of window 128 (the dense way to get a window).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from encoderkit import Encoder, EncoderConfig


def main() -> None:
    T, kind = int(sys.argv[1]), sys.argv[2]
    packed = "--packed" in sys.argv
    torch.set_num_threads(2)
    torch.manual_seed(0)
    window = int(kind) if kind.isdigit() else None
    config = EncoderConfig(
        d_model=256, n_heads=4, d_ff=1024, n_layers=2, dropout=0.0, attention_dropout=0.0,
        norm_first=True, position_encoding="rotary", window=window,
    )  # fmt: skip
    model = Encoder(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(1, T, 256)
    real = torch.ones(1, T, dtype=torch.bool)
    if packed:
        real[0, -1] = False  # one padded token: the padding-free path
    band = None
    if kind == "band":
        band = torch.ones(T, T, dtype=torch.bool).triu(-64).tril(64)[None, None]  # |i - j| <= 64
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = model(x, real, band)
    out.pow(2).mean().backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"growth_mib": (peak - before) / 1024, "seconds": seconds}))


if __name__ == "__main__":
    main()
