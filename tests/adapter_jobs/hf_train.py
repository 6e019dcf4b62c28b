"""A tiny transformers Trainer run that logs through MlfleetCallback.

The model is built from a config (1 layer, hidden 16, vocabulary 50): nothing is downloaded.
"""

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from mlfleet.agents.integrations.hf import MlfleetCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 50, (n, 8), generator=generator)
        self.labels = torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


if __name__ == "__main__":
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    args = TrainingArguments(output_dir="out", max_steps=6, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=2, eval_strategy="steps", eval_steps=3, save_strategy="no",
                             report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=RandomTokens(16, 0),
                      eval_dataset=RandomTokens(8, 1), callbacks=[MlfleetCallback(tags={"dataset": "random"})])
    trainer.train()
