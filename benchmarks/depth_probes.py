"""Probes of depth pruning on ``minilm``: which blocks to drop, and what cheap recovery buys.

Three measurements behind BENCHMARKS section 10 (issue 23), none of them a search:

* ``pairs``: the embedding cosine to the whole model when each block, and each pair of
  blocks, is skipped (its output replaced by its input), over the first 512 training items;
* ``linear``: the validation metric when blocks ``--remove`` are skipped, and when each run of
  consecutive removed blocks is replaced by one least-squares linear map of the residual
  stream (LLM-Streamline, Chen et al. 2024), fitted on the first 1,024 training items;
* ``curve``: the validation metric along the new recipe's distillation on the corpus
  (:func:`autocompress.distill.distill_on_data`, constant learning rate), every
  ``--steps / --chunks`` steps.

    python -m benchmarks.depth_probes pairs
    python -m benchmarks.depth_probes linear --remove 1,2
    python -m benchmarks.depth_probes curve --steps 600 --chunks 3 --lr 3e-4 --hidden 1

Prints its figures; nothing is written.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.corpus import CorpusTeacher
from autocompress.data import Inputs, call_model, split_batch
from autocompress.distill import block_pairs, distill_on_data
from autocompress.methods.depth import DepthPruning, skipping
from autocompress.pipeline import CompressionConfig, compress
from autocompress.training import TrainingConfig
from autocompress.workload import LoadedWorkload, load_workload


def validation(wl: LoadedWorkload, model: nn.Module) -> float:
    model.eval()
    with torch.inference_mode():
        return float(wl.task.metric(lambda x: call_model(model, x), wl.split("val")))


def training_inputs(wl: LoadedWorkload, rows: int) -> list[Inputs]:
    """The first ``rows`` training items in batches, common padding cut."""
    out: list[Inputs] = []
    seen = 0
    for batch in wl.split("train").batches():
        x, _ = split_batch(batch)
        width = int(x["attention_mask"].sum(1).max())
        out.append({k: v[:, :width] for k, v in x.items()})
        seen += len(x["input_ids"])
        if seen >= rows:
            break
    return out


def blocks_of(model: nn.Module) -> nn.ModuleList:
    return cast(nn.ModuleList, model.get_submodule("bert.encoder.layer"))


def skipped(model: nn.Module, indices: list[int]) -> contextlib.ExitStack:
    """Blocks ``indices`` of ``model`` skipped while in the returned ``with`` block."""
    stack = contextlib.ExitStack()
    for i in indices:
        stack.enter_context(skipping(blocks_of(model)[i]))
    return stack


def pairs(wl: LoadedWorkload) -> None:
    model = wl.model.eval()
    batches = training_inputs(wl, 512)
    with torch.inference_mode():
        whole = [call_model(model, b) for b in batches]

    def cosine(indices: list[int]) -> float:
        with skipped(model, indices), torch.inference_mode():
            got = [
                F.cosine_similarity(call_model(model, b), t)
                for b, t in zip(batches, whole, strict=True)
            ]
        return float(torch.cat(got).mean())

    n = len(blocks_of(model))
    print("one block skipped:", {i: round(cosine([i]), 4) for i in range(n)}, flush=True)
    ranked = sorted(((cosine(list(p)), p) for p in itertools.combinations(range(n), 2)),
                    reverse=True)  # fmt: skip
    for value, p in ranked:
        print(f"blocks {p} skipped: cosine {value:.4f}", flush=True)


def _stream(model: nn.Module, block: int, batches: list[Inputs], output: bool) -> torch.Tensor:
    """The residual stream at ``block``'s input (or output), real tokens only."""
    got: list[torch.Tensor] = []
    module = blocks_of(model)[block]
    if output:
        handle = module.register_forward_hook(
            lambda _m, _a, out: got.append((out[0] if isinstance(out, tuple) else out).clone())
        )
    else:
        handle = module.register_forward_pre_hook(
            lambda _m, args, kwargs: got.append(
                (args[0] if args else kwargs["hidden_states"]).clone()
            ),
            with_kwargs=True,
        )
    try:
        with torch.inference_mode():
            for b in batches:
                call_model(model, b)
    finally:
        handle.remove()
    return torch.cat([g[b["attention_mask"].bool()] for g, b in zip(got, batches, strict=True)])


def linear(wl: LoadedWorkload, remove: list[int]) -> None:
    model = wl.model.eval()
    batches = training_inputs(wl, 1024)
    n = len(blocks_of(model))
    runs: list[list[int]] = []
    for i in sorted(remove):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    with skipped(model, remove):
        print(f"blocks {remove} skipped: validation {validation(wl, model):.4f}", flush=True)
    targets = [
        _stream(model, r[-1] + 1, batches, False) if r[-1] + 1 < n
        else _stream(model, r[-1], batches, True)
        for r in runs
    ]  # fmt: skip
    handles: list[Any] = []
    stack = contextlib.ExitStack()
    try:
        for run, y in zip(runs, targets, strict=True):
            x = _stream(model, run[0], batches, False)  # the stream as the student has it now
            xa = torch.cat([x, torch.ones(len(x), 1)], 1).double()
            ridge = 1e-3 * float((xa**2).mean()) * len(xa)
            gram = xa.T @ xa + ridge * torch.eye(xa.shape[1], dtype=torch.double)
            w = torch.linalg.solve(gram, xa.T @ (y - x).double()).float()
            before = float(((y - x) ** 2).sum() / (y**2).sum())
            after = float(((y - x - xa.float() @ w) ** 2).sum() / (y**2).sum())
            print(f"run {run}: relative error of the stream {before:.4f} skipped, "
                  f"{after:.4f} with the linear map", flush=True)  # fmt: skip

            def replace(_m: nn.Module, args: Any, kwargs: Any, out: Any, w: Any = w) -> Any:
                h = args[0] if args else kwargs["hidden_states"]
                h = h + h @ w[:-1] + w[-1]
                return (h, *out[1:]) if isinstance(out, tuple) else h

            handles.append(blocks_of(model)[run[0]].register_forward_hook(
                replace, with_kwargs=True))  # fmt: skip
            for i in run[1:]:
                handles.append(stack.enter_context(skipping(blocks_of(model)[i])))
        print(f"blocks {remove} replaced by linear maps: validation "
              f"{validation(wl, model):.4f}", flush=True)  # fmt: skip
    finally:
        stack.close()
        for h in handles:
            if hasattr(h, "remove"):
                h.remove()


def curve(wl: LoadedWorkload, args: argparse.Namespace) -> None:
    c = compress(
        wl.model, CompressionConfig({"depth": DepthPruning(args.depth, "output")}, seed=0),
        Path("/tmp/depth_probe.acpk"), task=wl.task, train=wl.train,
        example_input=wl.example_input, distill_data=wl.distill_data,
    )  # fmt: skip
    model = c.model
    print(f"depth {args.depth:.0%}, removed {c.report['records']['depth']['removed']}: "
          f"validation {validation(wl, model):.4f}", flush=True)  # fmt: skip
    assert wl.distill_data is not None  # noqa: S101 - minilm has a corpus
    removed = c.report["records"]["depth"]["removed"]
    links = block_pairs(model, wl.model, removed) if args.hidden else []
    teacher = CorpusTeacher(wl.model, wl.distill_data)
    config = TrainingConfig(epochs=1, batch_size=16, optimizer="adamw", lr=args.lr,
                            schedule="constant")  # fmt: skip
    per = args.steps // args.chunks
    for k in range(args.chunks):
        started = time.perf_counter()
        losses = distill_on_data(model, teacher, wl.distill_data, wl.task, config, steps=per,
                                 hidden=args.hidden, pairs=links, seed=k)  # fmt: skip
        seconds = (time.perf_counter() - started) / per
        print(f"{(k + 1) * per} steps: validation {validation(wl, model):.4f}, loss "
              f"{losses[0]:.4f} -> {sum(losses[-20:]) / len(losses[-20:]):.4f}, "
              f"{seconds:.2f} s/step", flush=True)  # fmt: skip


def _indices(text: str) -> list[int]:
    return [int(i) for i in text.split(",") if i.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("probe", choices=("pairs", "linear", "curve"))
    parser.add_argument("--remove", type=_indices, default=[1, 2])
    parser.add_argument("--depth", type=float, default=0.34)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--hidden", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=Path("studies") / "baselines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    wl = load_workload("minilm", cache_dir=args.cache_dir)
    if args.probe == "pairs":
        pairs(wl)
    elif args.probe == "linear":
        linear(wl, args.remove)
    else:
        curve(wl, args)


if __name__ == "__main__":
    main()
