"""A leaking Lightning run that saves a checkpoint on vramwatch's pressure notice, then dies of OOM.

Run under the runner:
    python -m vramwatch.agenthost.runner --pressure-headroom 0.25 -- python benchmarks/agent/lightning_save.py
Each step keeps a 16 MiB tensor alive. When the runner sees the process's headroom fall under the
threshold it sends a pressure notice; `vramwatch.agent.adapters.lightning_callback` saves a checkpoint
at the next batch end; the run then runs out of memory. Afterwards the checkpoint is loaded back (raw and
through `load_from_checkpoint`) and compared with what was saved. Exit 0 when a checkpoint was written
before the OOM and loads; 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from _common import emit, start_ballast, stop_ballast

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

from vramwatch.agent.adapters import lightning_callback


class Leaky(pl.LightningModule):
    def __init__(self, leak_mib: int = 16, step_seconds: float = 0.1) -> None:  # noqa: ARG002 - saved as hparams
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(512, 512)
        self.kept: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):  # noqa: ARG002 - Lightning's signature
        loss = self.net(batch[0]).square().mean()
        self.kept.append(torch.empty(self.hparams.leak_mib << 20, dtype=torch.uint8, device=self.device))
        time.sleep(self.hparams.step_seconds)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-gib", type=float, default=3.0, help="GiB left free by its own ballast (0: no ballast)")
    p.add_argument("--leak-mib", type=int, default=16, help="MiB kept alive each step")
    p.add_argument("--step-seconds", type=float, default=0.1)
    p.add_argument("--dir", default=None, help="where checkpoints go (default: a temporary directory)")
    args = p.parse_args()
    out_dir = args.dir or tempfile.mkdtemp(prefix="vramwatch-lightning-")
    ballast = start_ballast(args.budget_gib) if args.budget_gib > 0 else None
    try:
        emit("start", pid=os.getpid(), lightning=pl.__version__, module=pl.__name__)
        model = Leaky(args.leak_mib, args.step_seconds)
        data = torch.utils.data.TensorDataset(torch.randn(1_000_000, 512))
        loader = torch.utils.data.DataLoader(data, batch_size=64)
        callback = lightning_callback(out_dir, module=pl.__name__)
        trainer = pl.Trainer(
            accelerator="gpu",
            devices=1,
            max_steps=1_000_000,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        oom = False
        try:
            trainer.fit(model, loader)
        except torch.cuda.OutOfMemoryError:
            oom = True
        emit("fit_end", oom=oom, saved=callback.saved, steps=len(model.kept))
        model.kept.clear()
        loaded = []
        for path in callback.saved:
            raw = torch.load(path, map_location="cpu", weights_only=False)
            restored = Leaky.load_from_checkpoint(path, map_location="cpu")
            same = torch.equal(restored.net.weight, raw["state_dict"]["net.weight"])
            loaded.append({"path": path, "global_step": raw["global_step"], "weights_match": same})
        emit("loaded", checkpoints=loaded)
        ok = oom and bool(loaded) and all(c["weights_match"] for c in loaded)
        return 0 if ok else 1
    finally:
        if ballast is not None:
            stop_ballast(ballast)


if __name__ == "__main__":
    raise SystemExit(main())
