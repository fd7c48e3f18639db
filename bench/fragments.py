"""Completion latency per ``query --fragment`` at a million stored patterns.

    python bench/fragments.py [--patterns 1000000] [--dim 256] [--assoc-dim 256] [--top-k 256]
                              [--queries 50] [--batch 64] [--device cpu] [--search auto] [--json]

The Hopfield reconstructor (default-config sizes) holds ``--patterns`` stored clip
embeddings (random unit vectors: latency does not depend on what they show). Timed, each
the median over ``--queries`` single-fragment queries, then per fragment in batches:

- ``faiss-flat``: the baseline, a plain exact top-10 search of the fragment among the stored
  vectors (``IndexFlatIP``), which is what ``query --fragment`` costs with no completion;
- ``hopfield top-k``: the query network, a search of its ``top_k`` nearest keys and the
  softmax over those (:class:`models.reconstruct.networks.HopfieldRecall`, what the query
  path uses; ``--search``: torch's ``topk`` of one matrix product on the device, the default,
  or a FAISS flat index), plus the one-off cost of computing and indexing every stored key;
- ``hopfield full``: the same update with the softmax over every stored pattern, in chunks
  (what the network did before top-k preselection), for comparison;
- ``mlp``: the MLP reconstructor, which holds no patterns.

Also printed: the memory the keys take, and how closely the top-k completion matches the
full one (cosine; with random weights the softmax is flatter than a trained one's, so this
is a lower bound).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from models.reconstruct.networks import (
    HopfieldRecall,
    HopfieldReconstructor,
    MLPReconstructor,
)

GEN_CHUNK = 250_000


def _sync(device: str) -> None:
    # CUDA kernels run asynchronously: a timer read before they finish times their launch only.
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _median_ms(fn, queries: list[torch.Tensor]) -> float:
    fn(queries[0])  # warm-up
    _sync(queries[0].device)
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        _sync(q.device)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def full_softmax(model: HopfieldReconstructor, keys: torch.Tensor, bank: torch.Tensor, fragments: torch.Tensor,
                 chunk: int = 262_144) -> torch.Tensor:
    """The whole update, streamed over the bank in chunks (log-sum-exp kept per query)."""
    q = model.queries(fragments)
    beta = model.beta
    best = torch.full((len(q), 1), -float("inf"), device=q.device)
    total = torch.zeros(len(q), 1, device=q.device)
    acc = torch.zeros(len(q), bank.shape[1], device=q.device)
    for start in range(0, len(keys), chunk):
        logits = beta * q @ keys[start:start + chunk].t()
        new_best = torch.maximum(best, logits.max(dim=1, keepdim=True).values)
        rescale = torch.exp(best - new_best)
        weights = torch.exp(logits - new_best)
        total = total * rescale + weights.sum(dim=1, keepdim=True)
        acc = acc * rescale + weights @ bank[start:start + chunk]
        best = new_best
    return acc / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patterns", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256, help="embedding width (default config: 256)")
    parser.add_argument("--assoc-dim", type=int, default=256, help="Hopfield key width (default config: 256)")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP hidden width (default config: 1024)")
    parser.add_argument("--top-k", type=int, default=256, help="models.reconstruct.recall_top_k")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="fragments per batch for the batched figures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--search", choices=("auto", "faiss", "torch"), default="auto",
                        help="where the Hopfield keys are searched (auto: torch)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = args.device

    started = time.perf_counter()
    bank = torch.empty(args.patterns, args.dim)
    generator = torch.Generator().manual_seed(1)
    for start in range(0, args.patterns, GEN_CHUNK):
        rows = bank[start:start + GEN_CHUNK]
        rows.copy_(F.normalize(torch.randn(rows.shape, generator=generator), dim=-1))
    bank = bank.to(device)
    print(f"{args.patterns:,} stored patterns of {args.dim} dims made in {time.perf_counter() - started:.1f}s",
          flush=True)

    hopfield = HopfieldReconstructor(args.dim, args.assoc_dim, beta=16.0).to(device).eval()
    with torch.no_grad():
        hopfield.set_statistics(bank[:10_000], bank[:10_000])
    mlp = MLPReconstructor(args.dim, args.hidden).to(device).eval()
    started = time.perf_counter()
    recall = HopfieldRecall(hopfield, bank, args.top_k, search=args.search)
    index_seconds = time.perf_counter() - started
    print(f"keys computed and indexed in {index_seconds:.1f}s (searched with {recall.search})", flush=True)

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(np.ascontiguousarray(bank.cpu().numpy()))
    fragments = F.normalize(torch.randn(max(args.queries, args.batch), args.dim, generator=generator), dim=-1)
    singles = [fragments[i:i + 1].to(device) for i in range(args.queries)]
    batch = fragments[:args.batch].to(device)
    with torch.no_grad():
        keys = hopfield.keys(bank)  # for the full-softmax comparison only

    rows = {
        "faiss-flat (no completion)": (lambda q: flat.search(q.cpu().numpy(), 10)),
        "hopfield top-k": recall,
        "hopfield full": (lambda q: full_softmax(hopfield, keys, bank, q)),
        "mlp": (lambda q: mlp(q)),
    }
    figures: dict = {"patterns": args.patterns, "dim": args.dim, "assoc_dim": args.assoc_dim, "top_k": args.top_k,
                     "device": device, "index_seconds": round(index_seconds, 2),
                     "key_bytes": int(recall.count * args.assoc_dim * 4), "search": recall.search, "rows": {}}
    for name, fn in rows.items():
        with torch.no_grad():
            single = _median_ms(fn, singles)
            started = time.perf_counter()
            fn(batch)
            _sync(batch.device)
            per_fragment = (time.perf_counter() - started) * 1e3 / len(batch)
        figures["rows"][name] = {"single_ms": round(single, 2), "batched_ms_per_fragment": round(per_fragment, 3)}
        print(f"{name:28} {single:9.2f} ms a query   {per_fragment:8.3f} ms a fragment in batches of {len(batch)}",
              flush=True)
    with torch.no_grad():
        agreement = F.cosine_similarity(recall(batch), full_softmax(hopfield, keys, bank, batch), dim=-1)
    figures["topk_vs_full_cosine"] = round(float(agreement.mean()), 4)
    base = figures["rows"]["faiss-flat (no completion)"]["single_ms"]
    figures["ratio_topk_to_flat"] = round(figures["rows"]["hopfield top-k"]["single_ms"] / base, 2)
    figures["machine"] = (f"{platform.machine()}, {torch.get_num_threads()} threads, python "
                          f"{platform.python_version()}, torch {torch.__version__}, faiss {faiss.__version__}")
    print(f"top-k completion / plain flat search: {figures['ratio_topk_to_flat']:.2f}x; keys take "
          f"{figures['key_bytes'] / 2**30:.2f} GiB; top-k vs full completion cosine {figures['topk_vs_full_cosine']:.4f}"
          " (random weights)")
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
