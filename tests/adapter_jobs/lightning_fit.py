"""A tiny Lightning fit that logs through MlfleetLogger: a Linear layer on random tensors, CPU, 2 epochs of 4 batches."""

import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset

from mlfleet.agents.integrations.lightning import MlfleetLogger


class TinyRegression(L.LightningModule):
    def __init__(self, lr: float = 0.1, optimizer: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = L.Trainer(max_epochs=2, logger=MlfleetLogger(tags={"dataset": "random"}), log_every_n_steps=1,
                        accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=".")
    trainer.fit(TinyRegression(optimizer={"name": "sgd", "nesterov": False}), data, data)
