"""A patched model under torch.distributed on the CPU: 2 processes, gloo.

DistributedDataParallel: each process trains on half of the batch; after
every step its gradients (averaged by DDP's all-reduce) must equal one
process's on the whole batch. The batch norms run in eval mode (frozen
statistics, as when fine-tuning): in training mode each process would
normalise by its own half-batch statistics, which is what DDP does with
plain BatchNorm2d (SyncBatchNorm would be needed) and not our ops' doing.
FSDP2 (``fully_shard``) shards the same patched model's parameters over
the 2 processes and must give the same gradients too."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision_like as tv

import cnnkernels as ck

F64 = torch.float64
WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch():
    generator = torch.Generator().manual_seed(21)
    return torch.randn(4, 3, 32, 32, generator=generator, dtype=F64), torch.tensor([1, 5, 0, 9])


def reference_model():
    torch.manual_seed(22)
    return tv.randomize_batch_norms(tv.resnet18(width=4), torch.Generator().manual_seed(23)) \
        .to(F64).eval()


def single_process_gradients(steps: int) -> list[list[torch.Tensor]]:
    """Each step's gradients of torch's model on the whole batch (SGD between)."""
    model = reference_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch()
    result = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        result.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return result


def distributed_gradients(rank: int, wrap: str, steps: int) -> list[list[torch.Tensor]]:
    """Each step's gradients of the patched model wrapped by ``wrap``
    ("ddp" or "fsdp2") on this process's half of the batch."""
    model = ck.patch(reference_model(), backend="cpu")
    if wrap == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in (*model.layer1, *model.layer2, *model.layer3, *model.layer4):
            fully_shard(block)
        fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = batch()
    half = slice(rank * 2, rank * 2 + 2)
    result = []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[half]), y[half]).backward()
        # FSDP keeps each parameter's gradient sharded (a DTensor): gathered.
        result.append([p.grad.full_tensor() if hasattr(p.grad, "full_tensor")
                       else p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return result


def train_and_compare(rank: int, port: int, steps: int) -> None:
    """One process of the world; rank 0 compares with one process's
    training on the whole batch (an assertion error fails the test)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {wrap: distributed_gradients(rank, wrap, steps) for wrap in ("ddp", "fsdp2")}
    finally:
        dist.destroy_process_group()
    if rank == 0:
        expected = single_process_gradients(steps)
        names = [name for name, _ in reference_model().named_parameters()]
        for wrap, distributed in results.items():
            for step, (ours, theirs) in enumerate(zip(distributed, expected, strict=True)):
                for name, a, e in zip(names, ours, theirs, strict=True):
                    torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12,
                                               msg=f"{wrap} step {step}: gradient of {name}")


def test_patched_model_trains_data_parallel_like_one_process():
    """DDP and FSDP2 in the same 2 processes (spawning costs most of the
    time)."""
    mp.start_processes(train_and_compare, args=(free_port(), 2), nprocs=WORLD,
                       start_method="spawn")
