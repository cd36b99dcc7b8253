"""Appendix A: tools/gpt_ddp.py under torchrun with two CPU processes (gloo) gives the same
parameters as one process on the whole batch. Runs on the loopback address with explicit
timeouts, so a host name that does not resolve cannot hang the suite."""

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chapters import load_chapter

from nnbook.text import CharVocab

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpt_ddp.py"
TINY = ["--steps", "6", "--n-layer", "1", "--d-model", "16", "--n-ctx", "16",
        "--batch-size", "8", "--eval-chars", "500", "--timeout", "60"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
                TP_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _torchrun(nproc: int, args: list[str], cwd: Path) -> str:
    torchrun = Path(sys.executable).with_name("torchrun")
    return _run([str(torchrun), "--nnodes=1", f"--nproc-per-node={nproc}",
                 "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
                 "--rdzv-conf=join_timeout=60", "--max-restarts=0", str(SCRIPT), *args], cwd)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """A small seeded text (words over a few letters), so the test needs no download."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdeor") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    path = tmp_path_factory.mktemp("ddp") / "text.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(12_000)))
    return path


def test_two_processes_with_accumulation_equal_one_process_on_the_full_batch(text, tmp_path):
    """Two gloo ranks, each with two micro-batches under no_sync, against one process on the
    global batch, in float64: the parameters agree to 1e-6 after six AdamW steps. Catches
    overlapping or missing shards, a loss not divided by the micro-batches, gradients summed
    instead of averaged over ranks, or ranks starting from different weights."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    common = [*TINY, "--text", str(text), "--float64"]
    out1 = _run([sys.executable, str(SCRIPT), *common, "--checkpoint", str(one)], tmp_path)
    out2 = _torchrun(2, [*common, "--accum", "2", "--checkpoint", str(two)], tmp_path)
    assert "1 process(es)" in out1 and "2 process(es) on cpu" in out2
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, f"largest parameter difference {diff:.2e}"
    tc = load_chapter("16").TrainConfig(n_ctx=16, n_layer=1, d_model=16)
    model = load_chapter("16").make_model(tc, vocab_size=len(CharVocab(text.read_text())),
                                          device="cpu")
    start = model.double().state_dict()  # the weights both runs started from
    change = max((a[k] - start[k]).abs().max().item() for k in a)
    assert change > 1e-3, "training must move the weights for the comparison to mean anything"


def test_batch_that_does_not_split_is_refused(text, tmp_path):
    """--batch-size must split evenly into ranks x micro-batches (else shards differ in size
    and the average is no longer the global mean)."""
    done = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--text", str(text),
                           "--accum", "3"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "must split into 1 ranks x 3 micro-batches" in done.stderr
