"""Growth during training for every architecture added after Llama: Mistral, Qwen3, Phi-3, Gemma 2 / 3 and
dense -> MoE upcycling, with Seq-VCR on and pause tokens in the data: the loss right after each growth equals
the loss before it, the optimizer holds exactly the grown parameters, and training goes on."""

from __future__ import annotations

import pytest
import torch
from test_growth_gemma import tiny_gemma
from test_growth_llama_family import tiny_model
from test_moe import tiny_qwen3
from test_seq_vcr_growth import config

from hf_growth import GrowthCallback, SeqVCRTrainer

VOCAB, SEQ = 64, 12
PAUSE = VOCAB - 1  # a pause-token id inside the vocabulary: its label is ignored (-100)


class PausedCounting(torch.utils.data.Dataset):
    """Counting sequences with a pause token in the middle, as the pause-token collator lays them out."""

    def __init__(self, n: int = 96):
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, VOCAB - 1, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % (VOCAB - 1)
        self.ids[:, SEQ // 2] = PAUSE

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = self.ids[i].clone()
        labels[labels == PAUSE] = -100
        return {"input_ids": self.ids[i], "labels": labels}


def _train_with_growth(model, plans, tmp_path):
    data = PausedCounting(8)
    batch = {"input_ids": data.ids, "labels": torch.where(data.ids == PAUSE, -100, data.ids)}
    callback = GrowthCallback(plans, check_batch=batch)
    trainer = SeqVCRTrainer(model=model, args=config(tmp_path, max(plans) + 3), train_dataset=PausedCounting())
    callback.bind(trainer)
    trainer.train()
    assert [e["step"] for e in callback.events] == sorted(plans)
    for event in callback.events:
        assert event["params_after"] > event["params_before"]
        assert abs(event["loss_after"] - event["loss_before"]) < 1e-5, event
    heads = {id(p) for head in trainer.seq_vcr_projection.values() for p in head.parameters()}
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters()} | heads  # the grown model's parameters and the heads
    assert all("ce_loss" in r for r in trainer.state.log_history if "loss" in r)  # Seq-VCR kept running
    return trainer


WIDTH_AND_DEPTH = {2: [{"mlp_width": 96}], 4: [{"hidden_size": 64}], 6: [{"num_layers": {"to": 3, "where": "top"}}]}


@pytest.mark.parametrize("arch", ["mistral", "qwen3", "phi3"])
def test_llama_family_grows_during_training(arch, tmp_path):
    _train_with_growth(tiny_model(arch), WIDTH_AND_DEPTH, tmp_path)


@pytest.mark.parametrize("version", ["gemma2", "gemma3_text"])
def test_gemma_grows_during_training(version, tmp_path):
    plans = {2: [{"mlp_width": 96}], 4: [{"hidden_size": 64}], 6: [{"num_layers": {"to": 5, "where": "top"}}]}
    _train_with_growth(tiny_gemma(version), plans, tmp_path)


@pytest.mark.parametrize("arch", ["mistral", "qwen3"])
def test_upcycling_during_training_with_seq_vcr_and_pauses(arch, tmp_path):
    model = tiny_qwen3() if arch == "qwen3" else tiny_model(arch)
    trainer = _train_with_growth(model, {3: [{"experts": {"to": 4, "top_k": 2}}]}, tmp_path)
    assert model.config.model_type == ("qwen3_moe" if arch == "qwen3" else "mixtral")
    assert trainer.state.global_step == 6
