"""Train chapter 16's GPT on one process or data-parallel on several (appendix A).

One process (the device ``nnbook.device()`` picks)::

    python tools/gpt_ddp.py --steps 200

Several processes on this machine, one per GPU (NCCL) or per CPU share (gloo)::

    torchrun --standalone --nproc_per_node=2 tools/gpt_ddp.py --steps 200

The model, its configuration and the batch function are the chapter's own: they are loaded
from the cells of ``notebooks/16_gpt.ipynb`` tagged ``definitions`` (tools/chapters.py), so
this script and the chapter cannot drift apart.

Every step draws one **global batch** of ``--batch-size`` windows from a generator seeded with
``--seed`` and the step number, identical on every rank. Rank r keeps its contiguous share of
the rows and splits it into ``--accum`` micro-batches. Each micro-batch's mean loss is divided
by ``accum``; gradients are all-reduced (averaged over ranks) only on the last micro-batch
(``no_sync`` on the others). The averaged gradient is then the gradient of the mean loss over
the global batch, whatever the number of processes: the update equals one process's on the
whole batch (see appendix A). Evaluation and checkpointing happen on rank 0 only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from chapters import load_chapter  # noqa: E402

import nnbook  # noqa: E402
from nnbook.text import CharVocab, shakespeare, train_val_test_split  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (windows per step)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per rank and step")
    p.add_argument("--n-ctx", type=int, default=None, help="window length (chapter default)")
    p.add_argument("--n-layer", type=int, default=None, help="blocks (chapter default)")
    p.add_argument("--d-model", type=int, default=None, help="width (chapter default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (chapter's peak)")
    p.add_argument("--seed", type=int, default=0, help="initialization and batches")
    p.add_argument("--text", type=Path, default=None,
                   help="a text file to train on (default: the Shakespeare plays)")
    p.add_argument("--eval-chars", type=int, default=20_000,
                   help="validation characters scored at the end (rank 0)")
    p.add_argument("--float64", action="store_true",
                   help="train in float64 (to compare runs beyond float32's rounding)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="where rank 0 saves the final state dict")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a collective that does not complete fails")
    return p.parse_args(argv)


def setup_distributed(timeout: float) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT in the environment): NCCL with one GPU per process, else gloo on the CPU.
    Without torchrun: a single process on ``nnbook.device()``. Returns (rank, world, device)."""
    if "RANK" not in os.environ:
        return 0, 1, nnbook.device()
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, dev = "nccl", torch.device("cuda", local_rank)
    else:
        backend, dev = "gloo", torch.device("cpu")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size(), dev


def global_batch(ids: torch.Tensor, batch_size: int, n_ctx: int, seed: int, step: int):
    """The step's global batch, (B, T) inputs and targets on the CPU, the same on every rank."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return load_chapter("16").get_batch(ids, batch_size, n_ctx, gen, "cpu")


def train(args: argparse.Namespace) -> dict:
    rank, world, dev = setup_distributed(args.timeout)
    ch = load_chapter("16")
    if args.batch_size % (world * args.accum):
        raise ValueError(f"--batch-size {args.batch_size} must split into {world} ranks x "
                         f"{args.accum} micro-batches")
    text = args.text.read_text() if args.text else shakespeare()
    vocab = CharVocab(text)
    train_ids, val_ids, _ = train_val_test_split(vocab.encode(text))
    tc = ch.TrainConfig(seed=args.seed)
    for field in ("n_ctx", "n_layer", "d_model", "lr"):
        if getattr(args, field) is not None:
            setattr(tc, field, getattr(args, field))
    model = ch.make_model(tc, vocab_size=len(vocab), device=dev)  # seeded: same on all ranks
    if args.float64:
        model = model.double()
    if world > 1:  # DDP also broadcasts rank 0's weights, so every rank starts equal
        ddp = DistributedDataParallel(model,
                                      device_ids=[dev.index] if dev.type == "cuda" else None)
    else:
        ddp = model
    # Per-rank seed for anything random inside a step (dropout, sampling); the batches come
    # from the global generator, shared by all ranks, so the shards never overlap.
    torch.manual_seed(args.seed * 1_000 + rank)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.9, 0.95),
                            weight_decay=tc.weight_decay)
    share = args.batch_size // world
    micro = share // args.accum
    start = time.perf_counter()
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / tc.warmup)
        for group in opt.param_groups:
            group["lr"] = tc.lr * warm
        x, y = global_batch(train_ids, args.batch_size, tc.n_ctx, args.seed, step)
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        for k in range(args.accum):
            last = k == args.accum - 1
            xb = x[k * micro:(k + 1) * micro].to(dev)  # (micro, T)
            yb = y[k * micro:(k + 1) * micro].to(dev)
            sync = last or world == 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                loss = F.cross_entropy(ddp(xb).flatten(0, 1), yb.flatten()) / args.accum
                loss.backward()  # all-reduce (mean over ranks) only on the last micro-batch
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0 and (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1:5d}  micro-batch loss {args.accum * loss.item():.3f}  "
                  f"{time.perf_counter() - start:.1f}s", flush=True)
    seconds = time.perf_counter() - start
    result = {"rank": rank, "world": world, "device": str(dev), "seconds": seconds}
    if rank == 0:
        losses = ch.char_losses(model, val_ids[:args.eval_chars + 1], tc.n_ctx)
        result["val_loss"] = losses.mean().item()
        print(f"{world} process(es) on {dev}: {args.steps} steps in {seconds:.1f}s; "
              f"validation loss {result['val_loss']:.3f} nats/char "
              f"({len(losses):,} characters)", flush=True)
        if args.checkpoint:
            state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
            torch.save(state, args.checkpoint)
            back = torch.load(args.checkpoint, weights_only=True)  # tensors only: safe to load
            assert all(torch.equal(back[n], t) for n, t in state.items()), "checkpoint differs"
            print(f"checkpoint: {args.checkpoint} ({len(state)} tensors)", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def main(argv: list[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
