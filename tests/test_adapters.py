"""The Lightning and Hugging Face adapters: a tiny IMP end to end inside each real trainer, on CPU, on real
data (MNIST-1D; for the Hugging Face BERT its 40 values quantized into 32 tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import lottery
from lottery.storage.files import load_tensors

from conftest import require


def _pruned_weights_are_zero(run, trial: int, level: int, arm: str) -> bool:
    folder = run / f"trial_{trial}" / f"level_{level:02d}"
    own = folder / arm / "mask.safetensors"  # the random control's own mask
    mask = load_tensors(own if own.exists() else folder / "mask.safetensors")
    final = load_tensors(run / f"trial_{trial}" / f"level_{level:02d}" / arm / "final.safetensors")
    return all(torch.count_nonzero(final[n][~m.bool()]) == 0 for n, m in mask.items())


def test_lightning_callback_runs_imp_end_to_end(tmp_path, mnist1d):
    pl = require("lightning.pytorch")
    from lottery.adapters import LotteryCallback

    class Classifier(pl.LightningModule):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.model(x)
            self.log("val_loss", F.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def test_step(self, batch, _):
            x, y = batch
            self.log("test_acc", (self.model(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def loader(x, y, shuffle=False):
        return DataLoader(TensorDataset(x, y), batch_size=100, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(0))

    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
    imp = lottery.IMP(model, tmp_path / "run", levels=2, arms=["imp", "reinit", "random"], rewind_iteration=5,
                      rewind_optimizer=True, training={"trainer": "lightning", "max_steps": 40}, verbose=False)
    for net in imp.networks():
        callback = LotteryCallback(net)
        trainer = pl.Trainer(max_steps=40, val_check_interval=10, callbacks=[callback], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", num_sanity_val_steps=0)
        module = Classifier(net.model)
        trainer.fit(module, loader(mnist1d.x_train, mnist1d.y_train, True), loader(mnist1d.x_val, mnist1d.y_val))
        assert net.steps == 40  # every optimizer step reached the hook
        callback.use_best()
        test = trainer.test(module, loader(mnist1d.x_test, mnist1d.y_test), verbose=False)[0]["test_acc"]
        callback.finish(test_accuracy=test)
    rows = imp.results()
    assert len(rows) == 1 + 2 * 3
    assert all(0.2 < r["early_stop_test_accuracy"] <= 1 for r in rows)  # it learned (chance is 0.1)
    assert all(r["early_stop_iteration"] % 10 == 0 for r in rows)
    assert (imp.run_dir / "trial_0" / "rewind.safetensors").exists()
    assert all(_pruned_weights_are_zero(imp.run_dir, 0, level, arm) for level in (1, 2) for arm in ("imp", "random"))
    lottery.write_report(imp.run_dir)
    assert (imp.run_dir / "report" / "curves.png").exists()  # val_acc became the val_accuracy curve


class TokenDigits(Dataset):
    """MNIST-1D as token sequences: each of the 40 values quantized into one of 32 bins (+2: [CLS], pad)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        bins = torch.bucketize(x, torch.linspace(-3, 3, 31)) + 2
        self.ids = torch.cat([torch.ones(len(x), 1, dtype=torch.long), bins], 1)
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.y[i]}


def test_hugging_face_callback_runs_imp_on_a_bert_end_to_end(tmp_path, mnist1d):
    transformers = require("transformers")
    from lottery.adapters import LotteryTrainerCallback

    config = transformers.BertConfig(vocab_size=34, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=48, num_labels=10)

    def bert() -> nn.Module:
        return transformers.BertForSequenceClassification(config)

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((torch.tensor(prediction.predictions).argmax(1)
                                   == torch.tensor(prediction.label_ids)).float().mean())}

    imp = lottery.IMP(bert, tmp_path / "run", levels=1, arms=["imp", "reinit"], verbose=False,
                      training={"trainer": "huggingface", "model": "bert-tiny", "max_steps": 30})
    assert "bert.embeddings.word_embeddings.weight" not in imp.roles  # embeddings are not pruned by default
    assert imp.roles["classifier.weight"] == "output"
    assert "bert.encoder.layer.0.attention.self.query.weight" in imp.roles
    train, val, test = (TokenDigits(x, y) for x, y in [(mnist1d.x_train, mnist1d.y_train),
                                                         (mnist1d.x_val, mnist1d.y_val), (mnist1d.x_test, mnist1d.y_test)])
    for net in imp.networks():
        callback = LotteryTrainerCallback(net)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "hf"), max_steps=30, eval_strategy="steps", eval_steps=10, save_strategy="no",
            report_to=[], use_cpu=True, per_device_train_batch_size=64, per_device_eval_batch_size=256,
            learning_rate=3e-3, weight_decay=0.01, logging_strategy="no", disable_tqdm=True, seed=net.seed % 2**31,
            dataloader_num_workers=0)
        trainer = transformers.Trainer(model=net.model, args=args, train_dataset=train, eval_dataset=val,
                                       compute_metrics=accuracy, callbacks=[callback])
        trainer.train()
        assert net.steps == 30
        callback.use_best()
        test_accuracy = trainer.evaluate(test, metric_key_prefix="test")["test_accuracy"]
        callback.finish(test_accuracy=test_accuracy)
    rows = imp.results()
    assert [(r["arm"], r["level"]) for r in rows] == [("imp", 0), ("imp", 1), ("reinit", 1)]
    assert rows[1]["percent_remaining"] < 90
    assert all(r["early_stop_iteration"] in (10, 20, 30) for r in rows)
    assert _pruned_weights_are_zero(imp.run_dir, 0, 1, "imp") and _pruned_weights_are_zero(imp.run_dir, 0, 1, "reinit")
