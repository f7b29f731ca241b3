"""Progress output chosen by the caller: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Callable ``(kind, info)`` sink for training/evaluation progress events."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "step":
            self._step(info)
        elif kind == "epoch":
            self._clear()
            parts = [f"epoch {info['epoch']}", f"loss {info['train_loss']:.4f}",
                     f"robust train acc {info['train_robust_acc']:.2%}"]
            if "heldout_pgd_acc" in info:
                parts += [f"held-out clean {info['heldout_clean_acc']:.2%}",
                          f"PGD {info['heldout_pgd_acc']:.2%}"]
            parts += [f"{info['examples_per_s']:.0f} ex/s", f"{info['epoch_time_s']:.1f} s"]
            print(" | ".join(parts), file=self.stream, flush=True)
        elif kind in ("warning", "message"):
            self._clear()
            prefix = "warning: " if kind == "warning" else ""
            print(prefix + info["message"], file=self.stream, flush=True)
        elif kind == "attack":
            self._step(info)

    def _step(self, info: dict) -> None:
        now = time.monotonic()
        done, total = info.get("step", 0), info.get("steps", 0)
        rate = info.get("rate")
        text = (f"epoch {info.get('epoch', '-')}/{info.get('epochs', '-')} "
                f"step {done}/{total} loss {info.get('loss', float('nan')):.4f} "
                f"acc {info.get('acc', float('nan')):.2%}"
                + (f" {rate:.0f} ex/s" if rate else ""))
        if self.tty:
            width = 24
            filled = int(width * done / max(total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            self.stream.flush()
        elif now - self._last >= self.every_s or done == total:
            print(text, file=self.stream, flush=True)
            self._last = now

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def silent(kind: str, info: dict) -> None:
    """A progress sink that says nothing (library calls, tests)."""
