"""What the command-line tools share: the device to run on and tqdm progress bars."""

from __future__ import annotations


def pick_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def progress_bar(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(done: int, total_now: int):
        bar.total = total_now
        bar.n = done
        bar.refresh()

    update.close = bar.close
    return update
